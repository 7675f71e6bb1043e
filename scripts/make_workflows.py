"""Regenerate the UI-format workflows from ``workflows/api/*.json`` (see ``cli/shipped.py``).

    .venv/bin/python scripts/make_workflows.py          # write workflows/*.json, example_workflows/*.json
    .venv/bin/python scripts/make_workflows.py --check  # exit 1 when a committed file is stale

Widget order comes from the nodes' INPUT_TYPES, so the host's nodes and this pack are
loaded first (the same host resolution as the tests).
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("make_workflows")


def _load_pack() -> None:
    spec = importlib.util.spec_from_file_location("infinite_id_bootstrap", ROOT / "host" / "locate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.import_host()  # logs which host it found
    module.load_pack()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _load_pack()
    from infinite_id.cli.shipped import render_all, same_workflow

    stale = []
    for path, text in render_all().items():
        if path.is_file() and same_workflow(path.read_text(), text):
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            log.info("wrote %s", path.relative_to(ROOT))
    if args.check and stale:
        log.error("stale (run scripts/make_workflows.py): %s", ", ".join(str(p.relative_to(ROOT)) for p in stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
