"""Checkpoint and resume files of a training run.

- ``<name>-<step>.safetensors`` and ``<name>.safetensors`` (the latest): the adapter in the
  native format (``adapter/native.py``), which ``InfiniteID Adapter Loader`` reads, with
  training metadata added (base model hash, steps, data size, settings).
- ``training_state.pt``: what a resume needs beyond the weights: the trainable tensors
  in full precision, the optimizer and loss-scaler state, the step, the random
  generator's state and the settings. Read with ``torch.load(weights_only=True)``: the
  file holds tensors, numbers and strings only, never code.

A run folder that already holds a run is never reused silently (``prepare_output``):
``--resume`` continues it, ``--overwrite`` deletes that run's files first (so no old
checkpoint is left beside the new ones), anything else stops with a message.
"""
from __future__ import annotations

import copy
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ..adapter.model import Adapter
from ..adapter.native import save_native

log = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
LOSS_LOG = "loss.csv"
PREVIEWS = "previews"
SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def adapter_copy(adapter: Adapter, dtype: torch.dtype | None = None, device: str = "cpu") -> Adapter:
    """A detached copy (for saving and previews: the trained modules keep training)."""
    kv = copy.deepcopy(adapter.kv).to(device).requires_grad_(False).eval()
    mapper = copy.deepcopy(adapter.mapper).to(device).requires_grad_(False).eval()
    if dtype is not None:
        kv, mapper = kv.to(dtype), mapper.to(dtype)
    return Adapter(kv=kv, mapper=mapper, name=adapter.name, info=dict(adapter.info))


def save_adapter(adapter: Adapter, path: Path, metadata: dict[str, str], dtype: str) -> None:
    """The adapter in the native format, weights in ``dtype``, with ``metadata`` added."""
    save_native(str(path), adapter_copy(adapter, SAVE_DTYPES[dtype]), extra_metadata=metadata)


def save_state(folder: Path, state: dict[str, Any]) -> Path:
    path = folder / STATE_FILE
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"resume: no {STATE_FILE} in '{folder}'; start without --resume, or point --output "
                                "at the folder of the run to continue")
    return torch.load(path, map_location="cpu", weights_only=True)


def run_files(folder: Path, name: str) -> list[Path]:
    """The files (and the previews folder) a training run named ``name`` leaves in ``folder``."""
    if not folder.is_dir():
        return []
    pattern = re.compile(re.escape(name) + r"(-\d+)?\.safetensors")
    found = [p for p in sorted(folder.iterdir()) if p.name in (STATE_FILE, LOSS_LOG, PREVIEWS)
             or (p.is_file() and pattern.fullmatch(p.name))]
    return found


def prepare_output(folder: Path, name: str, resume: bool, overwrite: bool, is_main: bool = True) -> None:
    """Refuse to start over an existing run unless told how (``resume`` or ``overwrite``).

    ``overwrite`` deletes the old run's checkpoints, state, ``loss.csv`` and previews (not
    the preprocessing cache, which stays valid). Only the main rank deletes; every rank
    runs the checks, on the same files, and so reaches the same decision.
    """
    if resume and overwrite:
        raise ValueError("output: --resume continues the run in --output and --overwrite deletes it; give one")
    if resume:
        if not (folder / STATE_FILE).is_file():
            raise FileNotFoundError(f"resume: no {STATE_FILE} in '{folder}'; start without --resume, or point "
                                    "--output at the folder of the run to continue")
        return
    found = run_files(folder, name)
    if not found:
        return
    if not overwrite:
        step = ""
        if (folder / STATE_FILE).is_file():
            try:
                step = f" at step {int(load_state(folder)['step'])}"
            except Exception:  # noqa: BLE001 - the description only; the refusal stands either way
                step = ""
        raise FileExistsError(
            f"output: '{folder}' already holds a training run{step} ({', '.join(p.name for p in found[:4])}"
            f"{', ...' if len(found) > 4 else ''}). Continue it with --resume, start it again with --overwrite "
            "(deletes those files; the cache is kept), or choose another --output")
    if is_main:
        for path in found:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        log.info("output: --overwrite deleted %d file(s) of the previous run in %s", len(found), folder)
