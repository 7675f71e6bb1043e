"""Regional identities: several people in one picture, each confined to a mask.

A regional identity is an ordinary ``Identity`` whose tokens are the people's tokens
side by side (``[n, tokens_1 + tokens_2 + ..., dim]``) plus one ``Region`` per person:
the span of that person's tokens, their mask and their weight. Why one identity and not
a new socket type: ``InfiniteIDApply``, the samplers, Save/Load Identity and the runner
take it unchanged, and its keys and values are projected once per run like any other
identity's. During sampling each person's image cross-attention is computed over their
own tokens only (a softmax per person, so one face never borrows another's features)
and added where their mask is (``model_patch/region_grids.py``).

Masks are ComfyUI ``MASK``s, ``[batch, height, width]`` in 0..1, of any size and aspect.
They are stored as given (after feathering) and laid over the latent when sampling
starts: stretched to the image, as core's conditioning masks are.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .types import Identity, recorded_adapters

MAX_REGIONS = 4
"""Four people. Each region adds one image attention over its few tokens per patched
layer; the cap keeps that cost (and the node) small, not a limit of the method."""
MASK_TOLERANCE = 0.01
"""Mask values this far outside 0..1 (resampling overshoot) are clamped; further is refused."""
INVERTED_HINT = ("LoadImage's MASK output is 1 where the image is transparent, so an opaque image gives an empty "
                 "mask: connect it through InvertMask, or draw the region in the mask editor")


@dataclass(frozen=True)
class Region:
    """One person of a regional identity.

    ``tokens``: that person's span on the identity's token axis. ``mask``: float32
    ``[batch, height, width]`` in 0..1 on the CPU (batch 1: every latent row; more: one
    mask per latent row). ``weight``: that person's strength, multiplied with
    ``InfiniteIDApply``'s ``weight``.
    """

    tokens: slice
    mask: torch.Tensor
    weight: float = 1.0
    name: str = ""

    def __deepcopy__(self, memo: dict) -> Region:
        return self  # immutable by contract; the mask tensor is never written to


def check_mask(mask: Any, input_name: str) -> torch.Tensor:
    """A ComfyUI ``MASK`` as float32 ``[batch, height, width]`` in 0..1, or a message naming the input."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{input_name}: expected a MASK (e.g. from SolidMask, MaskComposite or LoadImage), "
                         f"got {type(mask).__name__}")
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    elif mask.dim() == 4 and mask.shape[1] == 1:  # [batch, 1, h, w] from some custom nodes
        mask = mask[:, 0]
    if mask.dim() != 3 or 0 in mask.shape:
        raise ValueError(f"{input_name}: expected a MASK [batch, height, width], got shape {tuple(mask.shape)}")
    if not (mask.dtype.is_floating_point or mask.dtype == torch.bool):
        raise ValueError(f"{input_name}: a {str(mask.dtype).replace('torch.', '')} mask; MASK values are floats in "
                         f"0..1")
    mask = mask.detach().to(device="cpu", dtype=torch.float32)
    if not torch.isfinite(mask).all():
        raise ValueError(f"{input_name}: the mask contains NaN or infinite values; the node that made it failed")
    low, high = float(mask.min()), float(mask.max())
    if low < -MASK_TOLERANCE or high > 1.0 + MASK_TOLERANCE:
        raise ValueError(f"{input_name}: mask values from {low:.3g} to {high:.3g}; MASK values must lie in 0..1")
    return mask.clamp(0.0, 1.0).contiguous()


def feather(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Soften a mask's edges with a Gaussian blur of about ``pixels`` (of the mask's own size)."""
    if pixels <= 0:
        return mask
    from torchvision.transforms.functional import gaussian_blur

    sigma = pixels / 2.0
    size = 2 * math.ceil(2 * sigma) + 1
    limit = 2 * (min(mask.shape[-2:]) - 1) + 1  # reflection padding needs a kernel inside the image
    size = max(1, min(size, limit if limit % 2 else limit - 1))
    return gaussian_blur(mask.unsqueeze(1), [size, size], [sigma, sigma])[:, 0].clamp(0.0, 1.0).contiguous()


def _check_same_adapter(named: Sequence[tuple[str, Identity]]) -> None:
    first_name, first = named[0]
    dim = first.cond.shape[-1]
    formats, names = recorded_adapters(first)
    for name, identity in named[1:]:
        if identity.cond.shape[-1] != dim:
            raise ValueError(f"{name}: its tokens are {identity.cond.shape[-1]}-d but {first_name}'s are {dim}-d: "
                             "the people were encoded with different adapters; encode all of them with the adapter "
                             "you apply")
        other_formats, other_names = recorded_adapters(identity)
        if formats and other_formats and formats != other_formats or names and other_names and names != other_names:
            raise ValueError(f"{name}: encoded with adapter '{', '.join(sorted(other_names | other_formats))}' but "
                             f"{first_name} with '{', '.join(sorted(names | formats))}'; one InfiniteIDApply uses one "
                             "adapter: encode every person with the adapter you apply")


def _rows(named: Sequence[tuple[str, Identity]]) -> int:
    batches = {identity.batch for _, identity in named if identity.batch > 1}
    if len(batches) > 1:
        sizes = ", ".join(f"{name}: {identity.batch}" for name, identity in named)
        raise ValueError(f"the people hold different numbers of identities ({sizes}); a sweep in one region "
                         "combines only with single identities in the others")
    return batches.pop() if batches else 1


def _mask_batch(masks: Sequence[tuple[str, torch.Tensor]]) -> int:
    batches = {mask.shape[0] for _, mask in masks if mask.shape[0] > 1}
    if len(batches) > 1:
        sizes = ", ".join(f"{name}: {mask.shape[0]}" for name, mask in masks)
        raise ValueError(f"the masks' batches do not match ({sizes}); give every mask the same batch (one mask per "
                         "latent row), or a batch of 1 (the same region for every row)")
    return batches.pop() if batches else 1


@dataclass(frozen=True)
class _Person:
    label: str      # how messages name this person (an input, or "regions (identity_1)")
    name: str       # the input the person was connected to, kept in the Region
    identity: Identity
    mask: torch.Tensor
    weight: float


def _earlier_people(base: Identity) -> list[_Person]:
    """The people of a regional identity, as they were given (masks already checked and feathered)."""
    if not base.regions:
        raise ValueError("regions: this identity has no regions; connect people to identity_1..4 instead")
    infos = base.info.get("regions") or [{}] * len(base.regions)
    return [_Person(label=f"regions ({region.name or 'an earlier person'})", name=region.name,
                    identity=Identity(cond=base.cond[:, region.tokens], uncond=base.uncond[:, region.tokens],
                                      info=part_info),
                    mask=region.mask, weight=region.weight)
            for region, part_info in zip(base.regions, infos)]


def regional_identity(people: Sequence[tuple[str, Identity, torch.Tensor, float]], base: Identity | None = None,
                      feather_pixels: int = 0, allow_empty: bool = True) -> Identity:
    """One identity from ``(input name, identity, mask, weight)`` per person.

    ``base``: a regional identity to add these people to (its regions come first, as
    they are). The new masks are checked (``check_mask``) and feathered by
    ``feather_pixels``. An all-zero mask gives that person weight 0; the node passes
    ``allow_empty=False``, because there it is always a wiring mistake.
    """
    named = _earlier_people(base) if base is not None else []
    for name, identity, mask, weight in people:
        mask_name = name.replace("identity", "mask")
        if identity.regions:
            raise ValueError(f"{name}: already a regional identity (InfiniteID Regions); connect it to the 'regions' "
                             "input to add people to it")
        if not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"{name.replace('identity', 'weight')}: must be a finite number, not {weight!r}")
        mask = check_mask(mask, mask_name)
        if not allow_empty and not bool((mask > 0).any()):
            raise ValueError(f"{mask_name}: the mask is zero everywhere, so {name} would not appear. {INVERTED_HINT}")
        named.append(_Person(label=name, name=name, identity=identity, mask=feather(mask, feather_pixels),
                             weight=float(weight)))
    if not named:
        raise ValueError("identity_1: connect at least one person")
    if len(named) > MAX_REGIONS:
        earlier = len(base.regions) if base is not None else 0
        raise ValueError(f"regions: {len(named)} people ({earlier} from the 'regions' input and {len(named) - earlier} "
                         f"connected here); a regional identity holds at most {MAX_REGIONS}. Mix people who share a "
                         "region with InfiniteID Mix first")
    _check_same_adapter([(p.label, p.identity) for p in named])
    rows = _rows([(p.label, p.identity) for p in named])
    _mask_batch([(p.label.replace("identity", "mask"), p.mask) for p in named])
    conds, unconds, regions, start = [], [], [], 0
    for p in named:
        count = p.identity.cond.shape[1]
        conds.append(p.identity.cond.float().expand(rows, -1, -1))
        unconds.append(p.identity.uncond.float().expand(rows, -1, -1))
        regions.append(Region(tokens=slice(start, start + count), mask=p.mask, weight=p.weight, name=p.name))
        start += count
    infos = [p.identity.info for p in named]
    info: dict[str, Any] = {"regions": infos, "people": len(named)}
    for key in ("adapter", "adapter_format"):
        values = {i.get(key) for i in infos if i.get(key)}
        if len(values) == 1:
            info[key] = values.pop()
    return Identity(cond=torch.cat(conds, dim=1), uncond=torch.cat(unconds, dim=1), info=info,
                    regions=tuple(regions))


def mask_rows(identity: Identity) -> int:
    """The masks' batch (1: the same regions for every latent row)."""
    return max((region.mask.shape[0] for region in identity.regions), default=1)
