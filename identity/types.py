"""The objects that travel between nodes as ``INFINITEID_IDENTITY`` and ``INFINITEID_ADAPTER``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..adapter.kv import IdentityKV


@dataclass
class Identity:
    """Mapped identity tokens for both sides of classifier-free guidance.

    ``cond`` and ``uncond`` are ``[n, tokens, dim]``: ``n`` identities (1 for one person;
    more for an interpolation sweep, one per latent row). ``features`` keeps the raw
    inputs they came from (ArcFace embedding, CLIP hidden states) so identities can be
    re-mapped or blended upstream of the mappers.
    """

    cond: torch.Tensor
    uncond: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cond.dim() != 3 or self.cond.shape != self.uncond.shape:
            raise ValueError(f"identity tokens must be [n, tokens, dim] for cond and uncond alike; "
                             f"got cond {tuple(self.cond.shape)} and uncond {tuple(self.uncond.shape)}")
        if not torch.isfinite(self.cond).all() or not torch.isfinite(self.uncond).all():
            raise ValueError("identity tokens contain NaN or infinite values; re-encode the reference image")

    @property
    def batch(self) -> int:
        return self.cond.shape[0]


@dataclass
class Adapter:
    """An identity adapter: the per-layer image key/value projections (and, once the
    encoder lands, the mappers that make identity tokens)."""

    kv: IdentityKV
    name: str = "adapter"
    info: dict[str, Any] = field(default_factory=dict)
    _patcher: Any = None

    @property
    def token_dim(self) -> int:
        return self.kv.token_dim

    def model_patcher(self, load_device: torch.device, offload_device: torch.device):
        """The projections wrapped in ComfyUI's ``ModelPatcher``, made once and shared.

        ComfyUI then loads and offloads them with the U-Net and counts their memory,
        instead of the pack moving them behind the memory manager's back.
        """
        if self._patcher is None:
            import comfy.model_patcher

            self._patcher = comfy.model_patcher.ModelPatcher(
                self.kv, load_device=load_device, offload_device=offload_device)
        return self._patcher
