"""Build ``.device/``: what the GPU check (scripts/device_check.py) needs beyond the pack.

    .venv/bin/python scripts/device_bundle.py            # then: device run, carry [".device"]

The GPU machine has Python 3.12, torch with CUDA and many common packages, but no
network, no ComfyUI and not all of ComfyUI's requirements. This folder carries them:

- ``comfyui/``: the current ComfyUI tree (``$INFINITEID_CURRENT_COMFYUI``, default
  ``/work/comfyui_current``), trimmed to what imports need: its Python files and small
  data files, without tests, API nodes, blueprints and tokenizer data;
- ``wheels/``: Python 3.12 manylinux wheels of the host's requirements the machine lacks
  (``MISSING_ON_DEVICE``, read off the machine's package list), at the versions this
  venv has. comfy-kitchen is repacked without its prebuilt CUDA/ROCm kernels (235 MB):
  ComfyUI then uses the library's eager/triton backends, which only matters for
  checkpoints stored in its quantized formats, not for fp8 weights with manual cast.

Everything must stay under the device tool's 64 MiB per call, the pack included.
"""
from __future__ import annotations

import argparse
import importlib.metadata as metadata
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Imported by the host and the GPU tests, absent from the GPU machine's image (its package list).
MISSING_ON_DEVICE = ("av", "comfy-aimdo", "comfy-kitchen", "pydantic", "pydantic-core", "pydantic-settings",
                     "annotated-types", "typing-inspection", "python-dotenv", "torchsde", "trampoline")
SKIP_TOP = {"tests", "tests-unit", "comfy_api_nodes", "blueprints", "script_examples", "output", "input", "models",
            "user", "alembic_db"}
SKIP_ANYWHERE = {".git", ".github", "__pycache__"}
MAX_FILE = 256 * 1024  # data files above this are tokenizers, vocabularies and pictures
KEEP_DATA = ("comfy/sd1_tokenizer",)  # SDXL's CLIP tokenizer: the demo CLIP tokenizes with it
KITCHEN_DROP = ("comfy_kitchen/backends/cuda/_C", "comfy_kitchen/backends/hip/_C")
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux_2_12_x86_64", "manylinux1_x86_64"]
LIMIT = 64 * 2**20


def copy_tree(source: Path, target: Path) -> int:
    """Copy the host's Python files and small data files; return the bytes copied."""
    total = 0
    for folder, dirs, files in os.walk(source):
        top = Path(folder) == source
        dirs[:] = sorted(d for d in dirs if d not in SKIP_ANYWHERE and not (top and d in SKIP_TOP))
        for name in files:
            path = Path(folder) / name
            relative = path.relative_to(source).as_posix()
            if path.suffix != ".py" and path.stat().st_size > MAX_FILE and not relative.startswith(KEEP_DATA):
                continue
            out = target / path.relative_to(source)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, out)
            total += path.stat().st_size
    return total


def download_wheels(target: Path) -> None:
    pins = [f"{name}=={metadata.version(name)}" for name in MISSING_ON_DEVICE]
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", *platforms,
                    "-d", str(target), *pins], check=True)
    for wheel in target.glob("comfy_kitchen-*.whl"):
        strip_wheel(wheel, KITCHEN_DROP)


def strip_wheel(wheel: Path, drop: tuple[str, ...]) -> None:
    """Rewrite ``wheel`` without the members whose names start with ``drop`` (and their RECORD lines)."""
    with tempfile.TemporaryDirectory() as tmp:
        slim = Path(tmp) / wheel.name
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
            for item in src.infolist():
                if item.filename.startswith(drop):
                    continue
                data = src.read(item)
                if item.filename.endswith(".dist-info/RECORD"):
                    data = b"\n".join(line for line in data.split(b"\n")
                                       if not any(line.startswith(d.encode()) for d in drop))
                dst.writestr(item, data)
        shutil.move(slim, wheel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".device")
    parser.add_argument("--comfyui", type=Path,
                        default=Path(os.environ.get("INFINITEID_CURRENT_COMFYUI", "/work/comfyui_current")))
    args = parser.parse_args()
    if not (args.comfyui / "comfy" / "model_patcher.py").is_file():
        raise SystemExit(f"{args.comfyui} is no ComfyUI tree: set INFINITEID_CURRENT_COMFYUI or pass --comfyui.")
    shutil.rmtree(args.out, ignore_errors=True)
    copied = copy_tree(args.comfyui, args.out / "comfyui")
    download_wheels(args.out / "wheels")
    wheels = sum(p.stat().st_size for p in (args.out / "wheels").iterdir())
    pack = sum(int(line.split()[0]) for line in subprocess.run(
        "git ls-files -z | xargs -0 du -b", shell=True, cwd=ROOT, capture_output=True, text=True,
        check=True).stdout.splitlines() if line)
    total = copied + wheels + pack
    print(f"{args.out}: ComfyUI tree {copied / 2**20:.1f} MiB, wheels {wheels / 2**20:.1f} MiB; with the pack "
          f"{total / 2**20:.1f} MiB of the 64 MiB a device call carries")
    if total > LIMIT:
        raise SystemExit("over the device tool's limit: trim the tree or the wheels")


if __name__ == "__main__":
    main()
