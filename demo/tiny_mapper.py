"""A tiny identity mapper: the ``Adapter.mapper`` interface in miniature.

Why: ``InfiniteIDEncode`` must be tested end to end (insightface -> ArcFace + CLIP
vision -> mappers -> tokens -> patched U-Net) without real adapter weights. This mapper
has the paper's shape (docs/ADAPTER_FORMAT.md): a CLIP mapper and a face mapper whose
tokens are concatenated along the token axis, CLIP tokens first. It is deliberately
simple so a test can recompute its output by hand: the CLIP mapper reads the mean of
the hidden states over the sequence, the face mapper is a two-layer MLP.
"""
from __future__ import annotations

import torch

from ..adapter.model import Adapter
from .tiny_identity import build_tiny_adapter
from .tiny_sdxl import TINY_CONTEXT_DIM, init_weights_

TINY_CLIP_WIDTH = 32  # demo/tiny_clip_vision.py's hidden size
TINY_FACE_DIM = 512  # ArcFace
TINY_CLIP_TOKENS = 2
TINY_FACE_TOKENS = 2


class TinyIdentityMapper(torch.nn.Module):
    """``mapper(face_embeds [n, 512], clip_hidden [n, seq, width]) -> [n, tokens, dim]``."""

    def __init__(self, clip_width: int = TINY_CLIP_WIDTH, token_dim: int = TINY_CONTEXT_DIM,
                 clip_tokens: int = TINY_CLIP_TOKENS, face_tokens: int = TINY_FACE_TOKENS,
                 face_dim: int = TINY_FACE_DIM) -> None:
        super().__init__()
        self.clip_tokens, self.face_tokens, self.token_dim = clip_tokens, face_tokens, token_dim
        self.clip_proj = torch.nn.Linear(clip_width, clip_tokens * token_dim)
        self.face_mlp = torch.nn.Sequential(
            torch.nn.Linear(face_dim, 2 * token_dim), torch.nn.GELU(),
            torch.nn.Linear(2 * token_dim, face_tokens * token_dim))

    @property
    def num_tokens(self) -> int:
        return self.clip_tokens + self.face_tokens

    def forward(self, face_embeds: torch.Tensor, clip_hidden: torch.Tensor) -> torch.Tensor:
        n = face_embeds.shape[0]
        clip = self.clip_proj(clip_hidden.mean(dim=1)).view(n, self.clip_tokens, self.token_dim)
        face = self.face_mlp(face_embeds).view(n, self.face_tokens, self.token_dim)
        return torch.cat([clip, face], dim=1)


def build_tiny_mapper(seed: int = 3, clip_width: int = TINY_CLIP_WIDTH,
                      token_dim: int = TINY_CONTEXT_DIM) -> TinyIdentityMapper:
    """Seeded weights (ComfyUI-style modules are not used here, but keep one init path)."""
    mapper = TinyIdentityMapper(clip_width=clip_width, token_dim=token_dim)
    # Gain 4: ArcFace inputs are unit vectors, so a plain fan-in init gives tokens too
    # close to the uncond tokens for tests to tell identities apart.
    init_weights_(mapper, seed, gain=4.0)
    return mapper.eval()


def build_tiny_encoder_adapter(model_patcher, seed: int = 1, mapper_seed: int = 3) -> Adapter:
    """The tiny adapter's key/value projections plus the tiny mapper and a full ``info``."""
    adapter = build_tiny_adapter(model_patcher, token_dim=TINY_CONTEXT_DIM, seed=seed)
    mapper = build_tiny_mapper(mapper_seed)
    adapter.mapper = mapper
    adapter.info.update({
        "format": "demo", "clip_layer": "penultimate", "clip_width": TINY_CLIP_WIDTH,
        "face_embedding": "normalized", "num_tokens": mapper.num_tokens, "token_dim": TINY_CONTEXT_DIM,
        "base_model": "sdxl",
    })
    return adapter
