"""Checkpoint and resume files of a training run.

- ``<name>-<step>.safetensors`` and ``<name>.safetensors`` (the latest): the adapter in the
  native format (``adapter/native.py``), which ``InfiniteID Adapter Loader`` reads, with
  training metadata added (base model hash, steps, data size, settings).
- ``training_state.pt``: what a resume needs beyond the weights: the trainable tensors
  in full precision, the optimizer and loss-scaler state, the step, the random
  generator's state and the settings. Read with ``torch.load(weights_only=True)``: the
  file holds tensors, numbers and strings only, never code.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch

from ..adapter.native import save_native
from ..identity.types import Adapter

log = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
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
