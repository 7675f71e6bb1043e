"""Start training from another adapter's weights instead of from random ones.

Why: FaceID-Plus-v2 SDXL's 70 image key/value projections have exactly the native
shape (``[width, 2048]``), and its ArcFace MLP has the native face mapper's shape with
the default sizes, so a run can start from weights that already attend to faces.
Its CLIP branch (a resampler fed by the face tokens) is copied only where the native
CLIP mapper was given the same sizes (``--mapper-dim 2048 --mapper-heads 32``); the
native mapper's learned queries are always new. A native adapter copies everything
whose shape matches (continuing from an earlier run with other settings).
"""
from __future__ import annotations

import torch

from ..adapter.faceid_plus import FaceIDPlusProjection
from ..adapter.model import Adapter

# FaceID-Plus projection names -> native mapper names.
_FACEID_TO_NATIVE = {"proj.0.": "face_mapper.net.0.", "proj.2.": "face_mapper.net.2.", "norm.": "face_mapper.norm.",
                     "perceiver_resampler.": "clip_mapper.resampler."}


def _native_name(name: str) -> str | None:
    for old, new in _FACEID_TO_NATIVE.items():
        if name.startswith(old):
            return new + name[len(old):]
    return None


@torch.no_grad()
def warm_start(adapter: Adapter, source: Adapter) -> list[str]:
    """Copy ``source``'s weights into ``adapter`` in place; returns what was copied."""
    if len(source.kv.to_k) != len(adapter.kv.to_k):
        raise ValueError(f"init: '{source.name}' has {len(source.kv.to_k)} layers, the model has "
                         f"{len(adapter.kv.to_k)}")
    for i, (k, v) in enumerate(zip(source.kv.to_k, source.kv.to_v)):
        if k.weight.shape != adapter.kv.to_k[i].weight.shape:
            raise ValueError(f"init: '{source.name}' key/value projection {i} is {tuple(k.weight.shape)}, this model "
                             f"needs {tuple(adapter.kv.to_k[i].weight.shape)}; it was made for another base model")
        adapter.kv.to_k[i].weight.copy_(k.weight.float())
        adapter.kv.to_v[i].weight.copy_(v.weight.float())
    copied = ["image key/value projections (70 layers)"]
    if source.mapper is None:
        return copied
    target = adapter.mapper.state_dict()
    faceid = isinstance(source.mapper, FaceIDPlusProjection)
    taken: list[str] = []
    for name, tensor in source.mapper.state_dict().items():
        native = _native_name(name) if faceid else name
        if native in target and target[native].shape == tensor.shape:
            target[native].copy_(tensor.float())
            taken.append(native)
    if any(n.startswith("face_mapper.") for n in taken):
        copied.append("face mapper")
    if any(n.startswith("clip_mapper.") for n in taken):
        copied.append(f"CLIP mapper ({sum(n.startswith('clip_mapper.') for n in taken)} tensors)")
    return copied
