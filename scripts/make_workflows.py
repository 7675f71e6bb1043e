"""Regenerate the UI-format workflows from ``workflows/api/*.json`` (see ``workflow_io/shipped.py``)
and the subgraph blueprints ``subgraphs/*.json`` from ``workflows/blueprints/*.json`` (``workflow_io/blueprints.py``).

    .venv/bin/python scripts/make_workflows.py                # write example_workflows/*.json
    .venv/bin/python scripts/make_workflows.py --thumbnails   # also example_workflows/*.jpg (schematics)
    .venv/bin/python scripts/make_workflows.py --check        # exit 1 when a committed file is stale

Widget order comes from the nodes' INPUT_TYPES, so the host's nodes and this pack are
loaded first (the same host resolution as the tests). A thumbnail is a labelled
schematic of what the workflow does (``thumbnail_art.py``: no weights exist yet, and the
demo models' outputs are noise); its JPEG comment records a hash of the API file and of
the drawing code, so ``--check`` (and a test) finds a thumbnail older than either.
``--thumbnails`` remakes only stale ones (``--force``: all).
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("make_workflows")
THUMBNAIL_TILE = 192   # the smallest side a card image may have (a card shows ~256 px)
COMMENT_PREFIX = "infinite-id thumbnail api="

sys.path.insert(0, str(Path(__file__).resolve().parent))
import thumbnail_art  # noqa: E402  (beside this script)


def _load_pack() -> None:
    spec = importlib.util.spec_from_file_location("infinite_id_bootstrap", ROOT / "host" / "locate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.import_host()  # logs which host it found
    module.load_pack()


def thumbnail_digest(path: Path) -> str | None:
    """What a thumbnail was made from, as recorded in its JPEG comment (``None``: missing or not ours)."""
    from PIL import Image

    if not path.is_file():
        return None
    with Image.open(path) as image:
        comment = image.info.get("comment", b"")
    text = comment.decode("utf-8", "replace") if isinstance(comment, bytes) else str(comment)
    return text[len(COMMENT_PREFIX):] if text.startswith(COMMENT_PREFIX) else None


def expected_digest(name: str) -> str:
    """The API file's hash and the drawing code's: a change to either makes the thumbnail stale."""
    from infinite_id.workflow_io.shipped import api_digest

    return f"{api_digest(name)} drawing={thumbnail_art.drawing_digest()}"


def make_thumbnail(name: str) -> Path:
    """Draw workflow ``name``'s labelled schematic (``scripts/thumbnail_art.py``) as its card image."""
    from infinite_id.workflow_io.shipped import thumbnail_path

    target = thumbnail_path(name)
    thumbnail_art.draw_thumbnail(name).save(target, "JPEG", quality=90, optimize=True,
                                            comment=f"{COMMENT_PREFIX}{expected_digest(name)}")
    log.info("wrote %s", target.relative_to(ROOT))
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--thumbnails", action="store_true", help="also (re)draw stale thumbnails")
    parser.add_argument("--force", action="store_true", help="with --thumbnails: remake every thumbnail")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _load_pack()
    from infinite_id.workflow_io.blueprints import render_all_blueprints
    from infinite_id.workflow_io.shipped import SHIPPED, render_all, same_workflow, thumbnail_path

    stale = []
    for path, text in {**render_all(), **render_all_blueprints()}.items():
        if path.is_file() and same_workflow(path.read_text(), text):
            continue
        if args.check:
            stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        log.info("wrote %s", path.relative_to(ROOT))
    for name in SHIPPED:
        if thumbnail_digest(thumbnail_path(name)) == expected_digest(name) and not args.force:
            continue
        if args.thumbnails and not args.check:
            make_thumbnail(name)
        else:
            stale.append(thumbnail_path(name))
    if stale:
        log.error("stale (run scripts/make_workflows.py%s): %s",
                  " --thumbnails" if any(p.suffix == ".jpg" for p in stale) else "",
                  ", ".join(str(p.relative_to(ROOT)) for p in stale))
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
