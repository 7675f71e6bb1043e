"""The image cross-attention weights: one key and one value projection per layer.

This is the whole trainable add-on inside the U-Net (docs/METHOD_NOTES.md): two linear
layers beside each of SDXL's 70 cross-attention layers. Switching them off gives the
base model back exactly.
"""
from __future__ import annotations

import torch

from ..unet.layers import SDXL_LAYERS, LayerKey


class IdentityKV(torch.nn.Module):
    """``W'k_id`` and ``W'v_id`` for every cross-attention layer, in adapter order."""

    def __init__(self, token_dim: int, layer_dims: list[int], dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        if len(layer_dims) != len(SDXL_LAYERS):
            raise ValueError(f"expected {len(SDXL_LAYERS)} layer widths, got {len(layer_dims)}")
        self.token_dim = token_dim
        self.to_k = torch.nn.ModuleList(
            torch.nn.Linear(token_dim, d, bias=False, dtype=dtype, device=device) for d in layer_dims)
        self.to_v = torch.nn.ModuleList(
            torch.nn.Linear(token_dim, d, bias=False, dtype=dtype, device=device) for d in layer_dims)
        self.layer_index: dict[LayerKey, int] = {key: i for i, key in enumerate(SDXL_LAYERS)}
