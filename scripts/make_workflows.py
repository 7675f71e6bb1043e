"""Regenerate the UI-format workflows from ``workflows/api/*.json`` (see ``workflow_io/shipped.py``)
and the subgraph blueprints ``subgraphs/*.json`` from ``workflows/blueprints/*.json`` (``workflow_io/blueprints.py``).

    .venv/bin/python scripts/make_workflows.py                # write example_workflows/*.json
    .venv/bin/python scripts/make_workflows.py --thumbnails   # also example_workflows/*.jpg (demo runs)
    .venv/bin/python scripts/make_workflows.py --check        # exit 1 when a committed file is stale

Widget order comes from the nodes' INPUT_TYPES, so the host's nodes and this pack are
loaded first (the same host resolution as the tests). A thumbnail is the images one run
of the workflow saves on the demo models (``python . run X --demo``), tiled; its JPEG
comment records a hash of the API file, so ``--check`` (and a test) finds a thumbnail
older than its workflow. ``--thumbnails`` remakes only stale ones (``--force``: all).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("make_workflows")
THUMBNAIL_TILE = 192   # px per image; a card shows ~256 px, a grid of 2x2 stays readable
THUMBNAIL_MAX_COLUMNS = 4
COMMENT_PREFIX = "infinite-id thumbnail api="


def _load_pack() -> None:
    spec = importlib.util.spec_from_file_location("infinite_id_bootstrap", ROOT / "host" / "locate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.import_host()  # logs which host it found
    module.load_pack()


def thumbnail_digest(path: Path) -> str | None:
    """The API-file hash a thumbnail was made from (``None``: missing or not ours)."""
    from PIL import Image

    if not path.is_file():
        return None
    with Image.open(path) as image:
        comment = image.info.get("comment", b"")
    text = comment.decode("utf-8", "replace") if isinstance(comment, bytes) else str(comment)
    return text[len(COMMENT_PREFIX):] if text.startswith(COMMENT_PREFIX) else None


def tile(paths: list[Path]):
    """The saved images in a square grid (the template browser's cards are square), each
    ``THUMBNAIL_TILE`` px, centred on a dark square."""
    from PIL import Image

    columns = min(math.ceil(math.sqrt(len(paths))), THUMBNAIL_MAX_COLUMNS)
    rows = math.ceil(len(paths) / columns)
    side = max(columns, rows) * THUMBNAIL_TILE
    sheet = Image.new("RGB", (side, side), (24, 24, 24))
    left, top = (side - columns * THUMBNAIL_TILE) // 2, (side - rows * THUMBNAIL_TILE) // 2
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            small = image.convert("RGB").resize((THUMBNAIL_TILE, THUMBNAIL_TILE), Image.Resampling.LANCZOS)
        sheet.paste(small, (left + (i % columns) * THUMBNAIL_TILE, top + (i // columns) * THUMBNAIL_TILE))
    return sheet


def make_thumbnail(name: str) -> Path:
    """Run workflow ``name`` on the demo models (the runner's own ``run --demo``) and tile what it saves."""
    from infinite_id.cli import run as run_cli
    from infinite_id.workflow_io.shipped import api_digest, api_path, thumbnail_path, ui_path

    import folder_paths

    saved = folder_paths.get_input_directory(), folder_paths.get_output_directory()
    parser = argparse.ArgumentParser()
    run_cli.add_parser(parser.add_subparsers())
    with tempfile.TemporaryDirectory(prefix=f"infiniteid-thumb-{name}-") as out:
        try:
            code = run_cli.run_command(parser.parse_args(["run", str(ui_path(name)), "--demo", "--output", out]))
        finally:
            folder_paths.set_input_directory(saved[0])
            folder_paths.set_output_directory(saved[1])
        if code != 0:
            raise RuntimeError(f"{name}: the demo run failed (exit {code})")
        # SaveImage order in the API file, then the batch index the file name carries.
        prefixes = [node["inputs"]["filename_prefix"] for _, node in
                    sorted(json.loads(api_path(name).read_text()).items(), key=lambda kv: int(kv[0]))
                    if node["class_type"] == "SaveImage"]
        pngs = sorted(Path(out).rglob("*.png"))
        ordered = [p for prefix in prefixes for p in pngs
                   if p.relative_to(out).as_posix().rsplit("_", 2)[0] == prefix]
        sheet = tile(ordered or pngs)
    target = thumbnail_path(name)
    sheet.save(target, "JPEG", quality=85, optimize=True, comment=f"{COMMENT_PREFIX}{api_digest(name)}")
    log.info("wrote %s (%d images from a demo run)", target.relative_to(ROOT), len(ordered or pngs))
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--thumbnails", action="store_true", help="also (re)make stale thumbnails from demo runs")
    parser.add_argument("--force", action="store_true", help="with --thumbnails: remake every thumbnail")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _load_pack()
    from infinite_id.workflow_io.blueprints import render_all_blueprints
    from infinite_id.workflow_io.shipped import SHIPPED, api_digest, render_all, same_workflow, thumbnail_path

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
        if thumbnail_digest(thumbnail_path(name)) == api_digest(name) and not args.force:
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
