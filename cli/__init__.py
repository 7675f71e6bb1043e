"""Command line: ``run`` (headless workflow runner), ``eval`` (benchmark), ``train`` (adapter training),
``doctor`` (what is wrong with this install)."""
from __future__ import annotations

import argparse
import logging
from typing import Any

from . import doctor, evaluate, run_workflow, train


def main(argv: list[str], host: Any) -> int:
    parser = argparse.ArgumentParser(prog="python <pack>", description="Infinite-ID for ComfyUI, without the server.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    run_workflow.add_parser(commands)
    evaluate.add_parser(commands)
    train.add_parser(commands)
    doctor.add_parser(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # ComfyUI 0.33 installs a root handler at WARNING while importing, which makes basicConfig a no-op.
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logging.getLogger(__name__).info(host.describe())
    return args.handler(args)
