"""Regional identities during a run: each person's mask on every layer's token grid.

A transformer layer of SDXL sees the latent at full, half or quarter resolution; its
tokens are that grid in row-major order. For a latent of ``h x w`` the grids are
``h x w``, ``ceil(h/2) x ceil(w/2)``, ... (the U-Net's stride-2 convolutions pad by one),
so non-square and odd latents map exactly. A call's latent size is read from
``original_shape`` in ``transformer_options`` (core sets it at the top of the U-Net), so
a call on another size (area conditioning, a tiled upscale) gets its own grids.

On a grid, a person's mask value is the share of each token's area the mask covers
(area averaging; a mask smaller than the grid is first upsampled bilinearly). Overlap
policy: a normalised blend. Where masks overlap and their sum exceeds 1, each is divided
by the sum, so the people's strengths there add up to full strength and the result does
not depend on the order of the regions. Outside every mask, a token gets text attention
only. Each person's ``weight`` (and ``InfiniteIDApply``'s) multiplies after that.

Everything here is computed once per run and grid, then looked up per call.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GRID_LEVELS = 4  # full, 1/2, 1/4, 1/8 resolution (SDXL's transformers sit at 1/2 and 1/4)


@dataclass(frozen=True)
class RegionWeights:
    """Each person's token span and per-token strength on one grid: ``weights`` is
    ``[people, rows (1 or the identity rows), tokens, 1]`` in the call's dtype."""

    spans: tuple[slice, ...]
    weights: torch.Tensor


def token_grids(height: int, width: int, levels: int = GRID_LEVELS) -> dict[int, tuple[int, int]]:
    """Token count -> ``(rows, columns)`` of every resolution level of a ``height x width`` latent."""
    grids: dict[int, tuple[int, int]] = {}
    for _ in range(levels):
        grids.setdefault(height * width, (height, width))
        height, width = (height + 1) // 2, (width + 1) // 2
    return grids


def mask_on_grid(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[batch, H, W]`` mask -> ``[batch, rows * columns]``: each token's covered share."""
    rows, columns = grid
    x = mask.unsqueeze(1)
    if x.shape[-2] < rows or x.shape[-1] < columns:
        x = F.interpolate(x, size=(max(x.shape[-2], rows), max(x.shape[-1], columns)), mode="bilinear",
                          align_corners=False)
    return F.adaptive_avg_pool2d(x, (rows, columns)).flatten(1)


def region_weights(regions: Sequence, grid: tuple[int, int], weight: float, rows: int,
                   device: torch.device, dtype: torch.dtype) -> RegionWeights:
    """Normalised per-token strengths of every person on ``grid`` (see the module note)."""
    batch = max(region.mask.shape[0] for region in regions)
    if batch != 1 and batch != rows:
        raise ValueError(f"the regions' masks have {batch} rows but the latent batch has {rows}")
    masks = [mask_on_grid(region.mask, grid) for region in regions]
    stack = torch.stack([m.expand(batch, -1) for m in masks])  # [people, batch, tokens]
    stack = stack / stack.sum(dim=0, keepdim=True).clamp(min=1.0)
    strength = torch.tensor([float(region.weight) * weight for region in regions], dtype=stack.dtype)
    weights = (stack * strength.view(-1, 1, 1)).unsqueeze(-1)
    return RegionWeights(spans=tuple(region.tokens for region in regions),
                         weights=weights.to(device=device, dtype=dtype))


class RegionTable:
    """Per run: the people's strengths per (latent size, token count, device, dtype)."""

    def __init__(self, regions: Sequence, weight: float, rows: int, latent_size: tuple[int, int] | None,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.regions, self.weight, self.rows = tuple(regions), float(weight), rows
        self._found: dict[tuple, RegionWeights] = {}
        if latent_size is not None:
            for tokens in token_grids(*latent_size):
                self.lookup(tokens, latent_size, device, dtype)

    def lookup(self, tokens: int, latent_size: tuple[int, int], device: torch.device,
               dtype: torch.dtype) -> RegionWeights:
        key = (latent_size, tokens, device, dtype)
        found = self._found.get(key)
        if found is None:
            grid = token_grids(*latent_size).get(tokens)
            if grid is None:
                raise RuntimeError(
                    f"Infinite-ID regions: a cross-attention layer has {tokens} tokens, which is no resolution of the "
                    f"{latent_size[0]}x{latent_size[1]} latent; this U-Net is not SDXL-shaped")
            found = self._found[key] = region_weights(self.regions, grid, self.weight, self.rows, device, dtype)
        return found
