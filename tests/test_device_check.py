"""The GPU check's dry run: scripts/device_check.py's whole path on the CPU at tiny sizes.

Device time is short (minutes per session, when a GPU is lent at all): a script that
breaks there wastes it. Here the same script installs nothing, runs its tests under two
memory managers and the three benchmark groups on the tiny model, and writes its report.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import device_bundle  # noqa: E402
import device_check  # noqa: E402


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, host_info):
    out = tmp_path_factory.mktemp("device_check")
    env = dict(os.environ, COMFYUI_PATH=str(host_info.path))
    done = subprocess.run([sys.executable, "scripts/device_check.py", "--dry-run", "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    return done, out


def test_dry_run_passes_and_reports_every_step(dry_run):
    done, out = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "device_check.json").read_text())
    assert report["dry_run"] and report["machine"]["torch"]
    assert set(report["tests"]) == {"normal", "lowvram"}
    for mode, result in report["tests"].items():
        assert result["exit"] == 0 and result["counts"].get("passed", 0) >= 3 and not result["failed"], mode
        assert result["device"].startswith("device: cpu") and f"INFINITEID_VRAM={mode}" in result["device"]
    groups = {g["group"]: [row["run"] for row in g["runs"]] for g in report["bench"]["groups"]}
    assert groups == {
        "main": ["core KSampler", "InfiniteIDSampler (full mixing)", "InfiniteIDSampler (mixing first half)",
                 "two-pass reference"],
        "sweep:3": ["core KSampler batch 3", "InfiniteIDSampler sweep of 3 (shared noise)"],
        "batch:2": ["core KSampler batch 2", "InfiniteIDSampler identity batch of 2"],
    }
    for group in report["bench"]["groups"]:
        assert group["runs"][0]["ratio"] == 1.0 and all(row["seconds"] > 0 for row in group["runs"])
    summary = (out / "device_check.md").read_text()
    assert "| normal | " in summary and "| InfiniteIDSampler sweep of 3 (shared noise) | " in summary
    assert "===== benchmark" in (out / "device_check.log").read_text()


def test_pytest_summary_is_read_with_its_failures():
    text = ("device: cuda:0 (NVIDIA H200); memory manager: INFINITEID_VRAM=novram, NO_VRAM, ModelPatcher\n"
            "FAILED tests/test_engine_dtypes.py::test_cfg_one[fp16] - AssertionError: 0.3\n"
            "ERROR tests/test_device.py::test_x - RuntimeError: device\n"
            "==== 1 failed, 40 passed, 2 skipped, 1 error in 31.20s ====\n")
    result = device_check.parse_pytest(text)
    assert result["counts"] == {"failed": 1, "passed": 40, "skipped": 2, "error": 1}
    assert result["failed"] == ["tests/test_engine_dtypes.py::test_cfg_one[fp16] - AssertionError: 0.3",
                                "tests/test_device.py::test_x - RuntimeError: device"]
    assert "NO_VRAM" in result["device"]
    assert device_check.parse_pytest("12 passed in 3.01s")["counts"] == {"passed": 12}


def test_stripped_wheel_keeps_everything_but_the_dropped_kernels(tmp_path):
    wheel = tmp_path / "lib-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("lib/__init__.py", "x = 1\n")
        z.writestr("lib/backends/cuda/_C.abi3.so", b"\0" * 1000)
        z.writestr("lib-1.0.dist-info/RECORD", "lib/__init__.py,sha256=a,6\nlib/backends/cuda/_C.abi3.so,sha256=b,1000\n")
    device_bundle.strip_wheel(wheel, ("lib/backends/cuda/_C",))
    with zipfile.ZipFile(wheel) as z:
        assert sorted(z.namelist()) == ["lib-1.0.dist-info/RECORD", "lib/__init__.py"]
        assert z.read("lib-1.0.dist-info/RECORD").decode() == "lib/__init__.py,sha256=a,6\n"
