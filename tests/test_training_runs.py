"""A training run's files survive and are never replaced silently.

- ``loss.csv`` is appended and flushed row by row: a ``train`` killed with SIGKILL (no
  handler, no ``finally``) keeps every row it had written;
- ``train`` into an ``--output`` that holds a run stops unless ``--resume`` continues it
  or ``--overwrite`` starts it again, and ``--overwrite`` leaves none of the old run's
  checkpoints behind;
- ``train`` under ``torchrun`` with two processes (the command itself, ``--demo``), then
  resumed with one process.
"""
from __future__ import annotations

import csv
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from training_fixtures import write_people

PACK = Path(__file__).resolve().parent.parent


def rows(folder: Path) -> list[list[str]]:
    with open(folder / "loss.csv", newline="") as f:
        return list(csv.reader(f))


def argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--demo", "--data", str(data), "--output", str(out), "--preview-every", "0", "--precision",
            "fp32", *extra]


def test_sigkill_keeps_the_loss_rows_written_before(tmp_path):
    data = write_people(tmp_path / "data", people=3, photos=2)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(PACK), *argv(data, out, "--steps", "100000", "--save-every", "0")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        seen: list[list[str]] = []
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "loss.csv").is_file():
                seen = rows(out)
                if len(seen) >= 4:  # the header and three steps
                    break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert len(seen) >= 4, "training did not reach step 3 in time"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    after = rows(out)
    assert after[0] == ["step", "loss", "lr", "seconds", "images_per_second"]
    assert after[:len(seen)] == seen  # every row seen before the kill is still there, unchanged
    assert [int(r[0]) for r in after[1:]] == list(range(1, len(after)))
    assert all(len(r) == 5 and float(r[1]) > 0 for r in after[1:])


def test_existing_run_is_refused_without_resume_or_overwrite(tmp_path, host_info, caplog):
    from infinite_id.cli import main

    data = write_people(tmp_path / "data", people=3, photos=2)
    out = tmp_path / "run"
    assert main(argv(data, out, "--steps", "3", "--save-every", "1"), host_info) == 0
    old = sorted(p.name for p in out.glob("*.safetensors"))
    assert old == ["infinite-id-000001.safetensors", "infinite-id-000002.safetensors",
                   "infinite-id-000003.safetensors", "infinite-id.safetensors"]
    history = rows(out)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(argv(data, out, "--steps", "1"), host_info) == 2
    message = caplog.text
    assert f"output: '{out}' already holds a training run at step 3" in message
    for words in ("--resume", "--overwrite", "another --output"):
        assert words in message
    assert rows(out) == history and sorted(p.name for p in out.glob("*.safetensors")) == old  # untouched
    with caplog.at_level(logging.ERROR):
        assert main(argv(data, out, "--steps", "1", "--resume", "--overwrite"), host_info) == 2
    assert "give one" in caplog.text
    # --overwrite starts again: the old run's later checkpoints do not stay beside the new ones.
    assert main(argv(data, out, "--steps", "1", "--overwrite"), host_info) == 0
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["infinite-id-000001.safetensors",
                                                                  "infinite-id.safetensors"]
    assert [r[0] for r in rows(out)] == ["step", "1"]
    assert (out / "cache").is_dir() and any((out / "cache").iterdir())  # the cache is kept


def test_train_command_under_torchrun_then_resumed_with_one_process(tmp_path, host_info, caplog):
    from infinite_id.cli import main

    data = write_people(tmp_path / "data", people=3, photos=2)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(PACK),
               *argv(data, out, "--steps", "2", "--save-every", "1", "--batch-size", "1")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    assert "global batch 2 = 1 per process x 2 process(es) x 1 accumulated" in log
    assert "data-parallel run: 2 processes (gloo)" in log
    assert log.count("trained adapter:") == 1  # rank 0 logs; the other rank only reports errors
    assert [r[0] for r in rows(out)] == ["step", "1", "2"]
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["infinite-id-000001.safetensors",
                                                                  "infinite-id-000002.safetensors",
                                                                  "infinite-id.safetensors"]
    assert not list((out / "cache").glob("*.tmp"))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(argv(data, out, "--steps", "3", "--batch-size", "2", "--resume"), host_info) == 0
    assert "resumed at step 2 of 3 (1 process(es), was 2)" in caplog.text and "0 newly processed" in caplog.text
    assert "global batch changes" not in caplog.text
    assert [r[0] for r in rows(out)] == ["step", "1", "2", "3"]
