"""Data-parallel training under torchrun on the CPU (gloo), with the tiny models.

Two ranks are started by torch's own launcher (``python -m torch.distributed.run``, the
module behind ``torchrun``) running ``tests/ddp_worker.py``; the single-process runs they
are compared with run here, in the test process, through the same ``Trainer``. What is
compared is the trained state itself (``training_state.pt``: float32 mapper and
key/value weights), against a run that never saw a second process.

Tolerance of "2 ranks x batch 1 == 1 rank x batch 2": the samples, timesteps and noise
are the same; only the order of float additions differs (each rank averages its own
row and DDP averages the two gradients; one process averages both rows at once). The
logged losses agree to 1e-5 and the averaged gradients (AdamW's first moments after
the run) to 1e-3 relative per tensor (measured: 2e-4). The weights agree to 1e-5 in all
but 0.1% of their elements (measured: 85 of 1.17M on the 2024 tree, 122 on ComfyUI 0.33)
and within lr x steps everywhere:
AdamW's first updates are about lr x sign(gradient), so an element whose gradient is
at rounding level (~1e-12) can move by up to lr either way in both runs alike; no
tolerance on the weights alone can be tighter than that without hiding a real
difference elsewhere. Runs with the same number of ranks are compared bit for bit.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_fixtures import RESOLUTION, SMALL_MAPPER, write_people

PACK = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "ddp_worker.py"
STEPS = 4
LR = 1e-3


def ddp_config(**changes):
    from infinite_id.training.trainer import TrainConfig

    base = dict(steps=STEPS, batch_size=1, lr=LR, precision="fp32", resolution=RESOLUTION, save_every=0,
                preview_every=0, gradient_checkpointing=False, identity_drop=0.25, **SMALL_MAPPER)
    base.update(changes)
    return TrainConfig(**base)


def torchrun(nproc: int, *args: str, script: Path = WORKER, timeout: int = 600) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N script ARGS`` as a subprocess (one thread per rank)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               str(script), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-6000:]
    return done


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Photos of four synthetic people and their cache, built once here (the workers only read it)."""
    from infinite_id.demo.nodes import _clip_vision, _face_analysis
    from infinite_id.demo.tiny_vae import build_tiny_vae
    from infinite_id.training.cache import CacheSettings, Preprocessor, build_cache, cached_uncond_clip
    from infinite_id.training.dataset import scan_photo_folder

    root = write_people(tmp_path_factory.mktemp("people"))
    cache = tmp_path_factory.mktemp("cache")
    settings = CacheSettings(resolution=RESOLUTION, models="demo")
    pre = Preprocessor(_face_analysis(640), _clip_vision(), build_tiny_vae(0), settings)
    data = build_cache(scan_photo_folder(root), cache, pre, settings)
    uncond = cached_uncond_clip(cache, _clip_vision(), settings)
    return {"root": root, "cache": cache, "data": data, "uncond": uncond}


def run_here(prepared, output: Path, resume: bool = False, **changes):
    """A single-process run in this process: the reference the data-parallel runs must match."""
    from infinite_id.demo.tiny_clip_text import build_tiny_sdxl_clip
    from infinite_id.demo.tiny_sdxl import build_tiny_sdxl
    from infinite_id.demo.tiny_vae import build_tiny_vae
    from infinite_id.training.trainer import Trainer, TrainingModels

    models = TrainingModels(build_tiny_sdxl(0), build_tiny_vae(0), build_tiny_sdxl_clip(0), "tiny", "demo-hash")
    trainer = Trainer(models, prepared["data"], prepared["uncond"], ddp_config(**changes), output, holdout=[3])
    if resume:
        trainer.resume()
    trainer.run()
    return trainer


def workers(prepared, nproc: int, output: Path, *extra: str) -> None:
    torchrun(nproc, "--data", str(prepared["root"]), "--cache", str(prepared["cache"]), "--output", str(output),
             *extra)


def state(folder: Path) -> dict:
    return torch.load(folder / "training_state.pt", map_location="cpu", weights_only=True)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    s = state(folder)
    return {f"mapper.{k}": v for k, v in s["mapper"].items()} | {f"kv.{k}": v for k, v in s["kv"].items()}


def losses(folder: Path) -> list[tuple[int, float]]:
    with open(folder / "loss.csv", newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def assert_weights(a: Path, b: Path, exact: bool = False) -> None:
    """The trained states of two run folders agree (bit for bit, or within the module docstring's tolerance)."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    if exact:
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
        return
    diffs = torch.cat([(wa[k] - wb[k]).abs().flatten() for k in wa])
    assert float((diffs > 1e-5).float().mean()) < 1e-3, int((diffs > 1e-5).sum())
    assert float(diffs.max()) <= LR * STEPS
    moments_a, moments_b = state(a)["optimizer"]["state"], state(b)["optimizer"]["state"]
    assert moments_a.keys() == moments_b.keys()
    for i in moments_a:
        m_a, m_b = moments_a[i]["exp_avg"], moments_b[i]["exp_avg"]
        assert float((m_a - m_b).norm()) <= 1e-3 * float(m_b.norm()) + 1e-12, i


@pytest.fixture(scope="module")
def two_rank_run(prepared, tmp_path_factory):
    """2 ranks x batch 1, ``STEPS`` steps, each rank given its own output folder."""
    out = tmp_path_factory.mktemp("ddp")
    workers(prepared, 2, out, "--per-rank-output")
    return out


def test_two_ranks_batch_one_equal_one_process_batch_two(prepared, two_rank_run, tmp_path):
    single = tmp_path / "single"
    run_here(prepared, single, batch_size=2)
    ddp = two_rank_run / "rank0"
    assert_weights(ddp, single)
    # The weights really moved (so the comparison could fail), and the logged loss is the global batch's.
    start = {k: v for k, v in run_here(prepared, tmp_path / "zero", steps=1, lr=0.0, batch_size=2).adapter.kv
             .state_dict().items()}
    assert any(not torch.allclose(weights(ddp)[f"kv.{k}"], v, atol=1e-4) for k, v in start.items())
    got, want = losses(ddp), losses(single)
    assert [s for s, _ in got] == list(range(1, STEPS + 1))
    assert all(abs(a - b) <= 1e-5 * max(1.0, abs(b)) for (_, a), (_, b) in zip(got, want))
    meta = state(ddp)
    assert meta["processes"] == 2 and meta["global_batch"] == 2


def test_only_rank_zero_writes(two_rank_run):
    assert (two_rank_run / "rank0" / "loss.csv").is_file()
    assert (two_rank_run / "rank0" / "infinite-id.safetensors").is_file()
    assert not (two_rank_run / "rank1").exists()  # rank 1 never even created its output folder


def test_resume_after_stop_reproduces_the_run_with_two_and_with_one_process(prepared, two_rank_run, tmp_path):
    stopped = tmp_path / "stopped"
    workers(prepared, 2, stopped, "--steps", "2")
    assert state(stopped)["step"] == 2
    again = tmp_path / "again"
    shutil.copytree(stopped, again)
    # Same number of processes: the interrupted run continues bit for bit.
    workers(prepared, 2, again, "--resume")
    reference = two_rank_run / "rank0"
    assert_weights(again, reference, exact=True)
    assert losses(again) == losses(reference)
    # One process with twice the batch continues the same run (same global batch, same samples).
    trainer = run_here(prepared, stopped, resume=True, batch_size=2)
    assert trainer.step == STEPS
    assert_weights(stopped, reference)
    assert [s for s, _ in losses(stopped)] == list(range(1, STEPS + 1))


def test_two_processes_building_one_cache_leave_it_complete(prepared, tmp_path):
    """Two independent processes fill one empty cache at the same time: every entry whole, no .tmp left."""
    from infinite_id.training.cache import CacheSettings, build_cache
    from infinite_id.training.dataset import scan_photo_folder

    cache = tmp_path / "cache"
    script = tmp_path / "fill.py"
    script.write_text(CACHE_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(PACK), str(prepared["root"]), str(cache)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert not [p.name for p in cache.iterdir() if p.name.endswith(".tmp")]
    settings = CacheSettings(resolution=RESOLUTION, models="demo")
    data = build_cache(scan_photo_folder(prepared["root"]), cache, None, settings)  # no model: all cached
    assert len(data.photos) == len(prepared["data"].photos)
    from safetensors.torch import load_file

    for photo, expected in zip(data.photos, prepared["data"].photos):
        assert photo.source == expected.source
        got, want = load_file(str(photo.path)), load_file(str(expected.path))  # every file reads whole
        assert got.keys() == want.keys()
        torch.testing.assert_close(got["face_embedding"], want["face_embedding"])
        torch.testing.assert_close(got["clip_hidden"].float(), want["clip_hidden"].float(), atol=1e-3, rtol=1e-3)
        # The VAE samples its posterior (as ComfyUI's VAEEncode does): same shape, another draw.
        assert got["latent"].shape == want["latent"].shape and torch.isfinite(got["latent"]).all()


CACHE_SCRIPT = '''
import importlib.util, sys
from pathlib import Path
pack, root, cache = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
spec = importlib.util.spec_from_file_location("infinite_id_bootstrap", pack / "host" / "locate.py")
boot = importlib.util.module_from_spec(spec); sys.modules[spec.name] = boot; spec.loader.exec_module(boot)
boot.import_host(); boot.load_pack()
from infinite_id.demo.nodes import _clip_vision, _face_analysis
from infinite_id.demo.tiny_vae import build_tiny_vae
from infinite_id.training.cache import CacheSettings, Preprocessor, build_cache
from infinite_id.training.dataset import scan_photo_folder
settings = CacheSettings(resolution=64, models="demo")
pre = Preprocessor(_face_analysis(640), _clip_vision(), build_tiny_vae(0), settings)
build_cache(scan_photo_folder(root), cache, pre, settings)
'''
