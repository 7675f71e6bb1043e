"""``python <pack folder> ...``: the pack's command line (see ``cli/``).

Run from anywhere as ``python path/to/pack run WORKFLOW [--demo]``. The pack folder's
name need not be a Python identifier: this file imports a ComfyUI host first, loads
the pack into it the way ComfyUI does, and hands over to ``cli.main``.
"""
import importlib.util
import sys
from pathlib import Path


def _bootstrap():
    path = Path(__file__).resolve().parent / "host" / "locate.py"
    spec = importlib.util.spec_from_file_location("infinite_id_bootstrap", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    bootstrap = _bootstrap()
    host = bootstrap.import_host()
    pack = bootstrap.load_pack()
    from infinite_id.cli import main

    sys.exit(main(sys.argv[1:], host))
