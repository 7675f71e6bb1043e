"""``python . doctor`` and the face loader on the installs users have.

The doctor runs in-process on this venv (CPU onnxruntime) with model folders from an
``extra_model_paths.yaml``, and in a subprocess with ``onnxruntime-gpu`` in front of the
CPU build (``PYTHONPATH``: the overlay ``scripts/bootstrap.sh`` installs into
``.venv/onnxruntime-gpu``): without a GPU its CUDA provider is offered but fails to load,
and both builds are installed, the clash users hit. The doctor must say so and exit 1;
the face loader must still run on the CPU and say why.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from infinite_id.adapter.native import build_native_adapter, save_native
from infinite_id.cli import doctor
from infinite_id.identity import face_analysis as fa
from infinite_id.identity.storage import FORMAT as IDENTITY_FORMAT

PACK_ROOT = Path(__file__).resolve().parent.parent
GPU_OVERLAY = Path(sys.prefix) / "onnxruntime-gpu"


def _gpu_overlay_or_skip() -> Path:
    if not (GPU_OVERLAY / "onnxruntime" / "__init__.py").is_file():
        pytest.skip(f"no onnxruntime-gpu overlay at {GPU_OVERLAY} (scripts/bootstrap.sh installs it)")
    return GPU_OVERLAY


@pytest.fixture
def model_tree(tmp_path, monkeypatch):
    """A user's model tree named only by an extra_model_paths.yaml, with adapter-folder files of each kind."""
    import folder_paths

    for name in ("infiniteid", "checkpoints", "clip_vision", "insightface"):
        if name in folder_paths.folder_names_and_paths:
            paths, exts = folder_paths.folder_names_and_paths[name]
            monkeypatch.setitem(folder_paths.folder_names_and_paths, name, (list(paths), set(exts)))
    getattr(folder_paths, "filename_list_cache", {}).clear()
    base = tmp_path / "elsewhere"
    adapters = base / "my_adapters"
    (adapters / "identities").mkdir(parents=True)
    adapter = build_native_adapter(layer_widths=[16] * 70, token_dim=64, clip_width=40, face_tokens=2,
                                   clip_tokens=3, face_hidden=32, clip_dim=64, clip_depth=2, clip_heads=4,
                                   clip_dim_head=16, ff_mult=2, seed=3)
    save_native(str(adapters / "mine.safetensors"), adapter)
    safetensors.torch.save_file({"lora_unet_down.lora_down.weight": torch.zeros(2, 2)},
                                str(adapters / "a_lora.safetensors"))
    safetensors.torch.save_file({"cond": torch.zeros(1, 2, 4), "uncond": torch.zeros(1, 2, 4)},
                                str(adapters / "identities" / "alice.safetensors"),
                                metadata={"format": IDENTITY_FORMAT})
    (base / "ckpts").mkdir()
    (base / "ckpts" / "sd_xl_base_1.0.safetensors").write_bytes(b"")
    yaml = tmp_path / "extra_model_paths.yaml"
    yaml.write_text(f"mine:\n  base_path: {base}\n  infiniteid: my_adapters\n  checkpoints: |\n    ckpts\n    more\n")
    yield yaml, base
    getattr(folder_paths, "filename_list_cache", {}).clear()


def _section(report: doctor.Report, title: str) -> str:
    return "\n".join(next(lines for name, lines in report.sections if name == title))


def test_doctor_reports_host_libraries_folders_and_workflows(model_tree):
    import onnxruntime

    yaml, base = model_tree
    report = doctor.diagnose([yaml])
    host = _section(report, "host")
    assert "ComfyUI host:" in host and f"torch {torch.__version__}" in host and "attention backend" in host
    libs = _section(report, "insightface and onnxruntime")
    assert f"'import onnxruntime' loads onnxruntime {onnxruntime.__version__}" in libs
    assert "CPUExecutionProvider: loads" in libs
    folders = _section(report, "model folders")
    assert f"read {yaml}" in folders
    assert f"infiniteid: {base / 'my_adapters'} (extra_model_paths.yaml)" in folders
    assert f"checkpoints: {base / 'ckpts'} (extra_model_paths.yaml)" in folders
    assert f"checkpoints: {base / 'more'} (extra_model_paths.yaml)  [does not exist]" in folders
    assert "mine.safetensors  -> adapter, format infinite-id (native layout)" in folders
    assert "identities/alice.safetensors  -> a saved identity" in folders
    assert "a_lora.safetensors  -> NOT LOADABLE: this file is a LoRA" in folders
    workflows = _section(report, "shipped workflows")
    assert "raw_photo: cannot run yet" in workflows
    assert "'sd_xl_base_1.0.safetensors' is missing" not in workflows  # found through the yaml
    assert "InfiniteIDAdapterLoader: 'ip-adapter-faceid-plusv2_sdxl.bin' is missing" in workflows
    # The LoRA in the adapter folder blocks; missing models alone would give 2.
    assert report.exit_code() == doctor.EXIT_BLOCKED
    assert any("a_lora.safetensors is not an adapter" in line for line in report.blocking)
    report.blocking.clear()
    assert report.exit_code() == doctor.EXIT_MODELS_MISSING


@pytest.mark.parametrize("target", sorted(doctor.INSTALL_TARGETS))
def test_install_commands_end_with_exactly_one_build(target):
    commands = doctor.install_commands(target)
    assert commands[0].endswith("pip install insightface")  # 2.x brings the CPU build: before the uninstall
    assert commands[1].split("uninstall -y ")[1].split() == list(fa.ONNXRUNTIME_BUILDS)
    assert commands[2].split("pip install ")[1].split()[0] == doctor.INSTALL_TARGETS[target][0]
    assert len(commands) == 3


def test_gpu_build_alone_is_not_a_clash(monkeypatch):
    monkeypatch.setattr(fa, "installed_builds", lambda: ["onnxruntime-gpu"])
    report = doctor.Report()
    doctor._face_libraries(report, "nvidia")
    assert not any("onnxruntime builds are installed" in line for line in report.blocking)
    assert fa.onnxruntime_clash() == ""
    assert fa.auto_provider(["CUDAExecutionProvider", "CPUExecutionProvider"]) == "CUDA"
    assert fa.auto_provider(["CoreMLExecutionProvider", "CPUExecutionProvider"]) == "CoreML"
    assert fa.auto_provider(["AzureExecutionProvider", "CPUExecutionProvider"]) == "CPU"


IF073_OVERLAY = Path(sys.prefix) / "insightface-0.7.3"


def _env_with_gpu_build(insightface: str = "2.x") -> dict:
    overlay = _gpu_overlay_or_skip()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    paths = [str(overlay)]
    if insightface == "0.7.3":
        if not (IF073_OVERLAY / "insightface").is_dir():
            pytest.skip(f"no insightface 0.7.3 overlay at {IF073_OVERLAY} (scripts/bootstrap.sh installs it)")
        paths.append(str(IF073_OVERLAY))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def test_doctor_with_onnxruntime_gpu_reports_the_clash_and_the_cuda_provider():
    env = _env_with_gpu_build()
    proc = subprocess.run([sys.executable, str(PACK_ROOT), "doctor", "--platform", "nvidia"], env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout
    print(out[-3000:])
    assert proc.returncode == doctor.EXIT_BLOCKED, proc.stderr[-3000:]
    assert "onnxruntime builds installed: onnxruntime " in out and "onnxruntime-gpu " in out
    assert "'import onnxruntime' loads onnxruntime-gpu" in out and str(GPU_OVERLAY) in out
    assert "CUDAExecutionProvider: offered but fails to load" in out
    assert "provider 'auto' asks for: CUDA" in out
    assert "BLOCKING" in out and "2 onnxruntime builds are installed (onnxruntime, onnxruntime-gpu)" in out
    assert "-m pip uninstall -y onnxruntime onnxruntime-gpu" in out and "-m pip install onnxruntime-gpu" in out


_FACE_SCRIPT = r"""
import json, logging, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import importlib.util
spec = importlib.util.spec_from_file_location("infinite_id_bootstrap", sys.argv[1] + "/host/locate.py")
boot = importlib.util.module_from_spec(spec); sys.modules[spec.name] = boot; spec.loader.exec_module(boot)
boot.import_host(); boot.load_pack()
records = []
logging.getLogger().setLevel(logging.INFO)  # after the host's own logging set-up
logging.getLogger().addHandler(type("H", (logging.Handler,), {"emit": lambda self, r: records.append(r.getMessage())})())
from infinite_id.demo import tiny_insightface as tiny
from infinite_id.identity import face_analysis as fa
tiny.write_tiny_antelopev2(sys.argv[2])
app = fa.load_face_analysis("antelopev2", "auto", 640, roots=[sys.argv[2]])
photo = np.full((512, 512, 3), 128, np.uint8)
tiny.draw_face(photo, 7, 6, identity=3)
faces = app.get(photo[:, :, ::-1])
import onnxruntime
import insightface
print(json.dumps({"module": onnxruntime.__file__, "running": fa.running_providers(app), "faces": len(faces),
                  "insightface": insightface.__version__, "log": records}))
"""


@pytest.mark.parametrize("insightface", ["2.x", "0.7.3"])
def test_face_loader_survives_onnxruntime_gpu_without_cuda(tmp_path, insightface):
    env = _env_with_gpu_build(insightface)
    proc = subprocess.run([sys.executable, "-c", _FACE_SCRIPT, str(PACK_ROOT), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["module"].startswith(str(GPU_OVERLAY))
    assert result["insightface"].startswith("0.7") == (insightface == "0.7.3")
    assert result["running"] == ["CPUExecutionProvider"] and result["faces"] == 1
    log = "\n".join(result["log"])
    assert "provider auto: CUDA" in log
    assert "several onnxruntime builds are installed (onnxruntime, onnxruntime-gpu)" in log
    assert "requested provider auto (CUDAExecutionProvider) failed to load" in log and "running on CPUExecutionProvider instead" in log
