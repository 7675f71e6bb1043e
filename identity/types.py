"""The object that travels between nodes as ``INFINITEID_IDENTITY``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

# Identity tokens are refused beyond float16's largest number: users run SDXL in fp16,
# where such a token becomes inf in the key/value projection and the image NaN/black.
# Mapped tokens are LayerNorm outputs (|x| of a few units), so real identities are far
# below this; a token this large is a damaged file or a runaway weight, never a style.
TOKEN_LIMIT = float(torch.finfo(torch.float16).max)  # 65504


def token_problem(tokens: torch.Tensor) -> str | None:
    """Why ``tokens`` cannot be used (NaN/inf, or beyond ``TOKEN_LIMIT``), or ``None``."""
    if tokens.numel() == 0:
        return None
    if not torch.isfinite(tokens).all():
        return "NaN or infinite values"
    peak = float(tokens.detach().abs().max())
    if peak > TOKEN_LIMIT:
        return (f"values up to {peak:.3g}, beyond {TOKEN_LIMIT:g} (float16's largest number, which SDXL runs in; "
                f"real identity tokens are a few units)")
    return None


def regions_problem(identity: Identity) -> str | None:
    """Why an identity's regions do not describe its tokens (spans must tile the token axis), or ``None``."""
    regions = identity.regions
    if not regions:
        return None
    if not isinstance(regions, tuple):
        return f"expected a tuple of regions, got {type(regions).__name__}"
    start = 0
    for i, region in enumerate(regions):
        span, mask = getattr(region, "tokens", None), getattr(region, "mask", None)
        if not isinstance(span, slice) or span.start != start or not isinstance(span.stop, int) or span.stop <= start:
            return f"region {i + 1}'s token span {span} does not follow the previous one (from token {start})"
        if not isinstance(mask, torch.Tensor) or mask.dim() != 3 or 0 in mask.shape:
            return f"region {i + 1}'s mask is not a [batch, height, width] tensor"
        start = span.stop
    if start != identity.cond.shape[1]:
        return f"the regions' spans cover {start} tokens of {identity.cond.shape[1]}"
    return None


def recorded(info: Any, key: str) -> set[str]:
    """Every non-empty string value of ``key`` in ``info``; mixes, blends and batches nest their parts' info."""
    found: set[str] = set()
    if isinstance(info, dict):
        if isinstance(info.get(key), str) and info[key]:
            found.add(info[key])
        for value in info.values():
            found |= recorded(value, key)
    elif isinstance(info, list):
        for value in info:
            found |= recorded(value, key)
    return found



def recorded_adapters(identity: Identity) -> tuple[set[str], set[str]]:
    """The adapter formats (the demo's left out: it fits any) and file names an identity was made with."""
    return recorded(identity.info, "adapter_format") - {"demo"}, recorded(identity.info, "adapter")

@dataclass
class Identity:
    """Mapped identity tokens for both sides of classifier-free guidance.

    ``cond`` and ``uncond`` are ``[n, tokens, dim]``: ``n`` identities (1 for one person;
    more for an interpolation sweep, one per latent row). ``regions``: empty, or one
    ``identity.regional.Region`` per person of a regional identity. ``features`` keeps the raw
    inputs they came from (ArcFace embedding, CLIP hidden states) so identities can be
    re-mapped or blended upstream of the mappers.
    """

    cond: torch.Tensor
    uncond: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    regions: tuple = ()  # identity/regional.py: one Region per person, each with a token span and a mask

    def __post_init__(self) -> None:
        if self.cond.dim() != 3 or self.cond.shape != self.uncond.shape:
            raise ValueError(f"identity tokens must be [n, tokens, dim] for cond and uncond alike; "
                             f"got cond {tuple(self.cond.shape)} and uncond {tuple(self.uncond.shape)}")
        for side in ("cond", "uncond"):
            problem = token_problem(getattr(self, side))
            if problem:
                raise ValueError(f"identity {side} tokens contain {problem}; re-encode the reference image")
        problem = regions_problem(self)
        if problem:
            raise ValueError(f"identity regions: {problem}")

    @property
    def batch(self) -> int:
        return self.cond.shape[0]


def check_identity(identity: Any, input_name: str) -> Identity:
    """An ``INFINITEID_IDENTITY`` input checked where it enters a node (type, shape, values).

    Identities are checked when made, but the object is mutable and other packs may
    build their own, so the nodes that take one check it again, naming their input.
    """
    if not isinstance(identity, Identity):
        raise ValueError(f"{input_name}: expected an INFINITEID_IDENTITY (from InfiniteID Encode, Load Identity, "
                         f"Mix, Interpolate, Identity Batch or Regions), got {type(identity).__name__}")
    for side in ("cond", "uncond"):
        tokens = getattr(identity, side)
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
            raise ValueError(f"{input_name}: {side} tokens are not an [n, tokens, dim] tensor")
        problem = token_problem(tokens)
        if problem:
            raise ValueError(f"{input_name}: {side} tokens contain {problem}; re-encode or re-load that identity")
    if identity.cond.shape != identity.uncond.shape:
        raise ValueError(f"{input_name}: cond tokens {tuple(identity.cond.shape)} and uncond tokens "
                         f"{tuple(identity.uncond.shape)} differ in shape")
    problem = regions_problem(identity)
    if problem:
        raise ValueError(f"{input_name}: its regions are damaged: {problem}; rebuild it with InfiniteID Regions")
    return identity
