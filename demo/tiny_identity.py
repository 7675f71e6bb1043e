"""Tiny adapter weights and identity tokens: the documented programmatic API in miniature.

Until an identity comes from a photo, ``InfiniteIDApply`` can be driven directly: build
an ``Adapter`` (per-layer image key/value projections) and an ``Identity`` (cond and
uncond tokens) and pass both to ``model_patch.install.apply_patch``. These helpers do that
with seeded random values sized for a given U-Net.
"""
from __future__ import annotations

import torch

from ..adapter.kv import IdentityKV
from ..adapter.model import Adapter
from ..identity.types import Identity
from ..unet.layers import SDXL_LAYERS
from ..unet.walk import cross_attention_widths
from .tiny_sdxl import TINY_CONTEXT_DIM, init_weights_

TINY_IDENTITY_TOKENS = 4


def build_tiny_adapter(model_patcher, token_dim: int = TINY_CONTEXT_DIM, seed: int = 1) -> Adapter:
    """Seeded per-layer projections whose widths match ``model_patcher``'s U-Net."""
    widths = cross_attention_widths(model_patcher.model.diffusion_model)
    kv = IdentityKV(token_dim, [widths[key][0] for key in SDXL_LAYERS])
    init_weights_(kv, seed)
    return Adapter(kv=kv, name=f"tiny-adapter-{seed}", info={"format": "demo"})


def random_identity(seed: int = 2, n: int = 1, tokens: int = TINY_IDENTITY_TOKENS,
                    token_dim: int = TINY_CONTEXT_DIM) -> Identity:
    """Seeded cond tokens; uncond tokens are zeros, as for a zero face embedding."""
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn(n, tokens, token_dim, generator=gen)
    return Identity(cond=cond, uncond=torch.zeros_like(cond), info={"source": f"random seed {seed}"})
