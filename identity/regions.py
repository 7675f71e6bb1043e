"""Regional identities: several people in one picture, each confined to a mask.

A regional identity is an ordinary ``Identity`` whose tokens are the people's tokens
side by side (``[n, tokens_1 + tokens_2 + ..., dim]``) plus one ``Region`` per person:
the span of that person's tokens, their mask and their weight. Why one identity and not
a new socket type: ``InfiniteIDApply``, the samplers, Save/Load Identity and the runner
take it unchanged, and its keys and values are projected once per run like any other
identity's. During sampling each person's image cross-attention is computed over their
own tokens only (a softmax per person, so one face never borrows another's features)
and added where their mask is (``model_patch/regions.py``).

Masks are ComfyUI ``MASK``s, ``[batch, height, width]`` in 0..1, of any size and aspect.
They are stored as given (after feathering) and laid over the latent when sampling
starts: stretched to the image, as core's conditioning masks are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .types import Identity, recorded

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

    def __deepcopy__(self, memo: dict) -> "Region":
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


def _adapters(identity: Identity) -> tuple[set[str], set[str]]:
    return recorded(identity.info, "adapter_format") - {"demo"}, recorded(identity.info, "adapter")


def _check_same_adapter(named: Sequence[tuple[str, Identity]]) -> None:
    first_name, first = named[0]
    dim = first.cond.shape[-1]
    formats, names = _adapters(first)
    for name, identity in named[1:]:
        if identity.cond.shape[-1] != dim:
            raise ValueError(f"{name}: its tokens are {identity.cond.shape[-1]}-d but {first_name}'s are {dim}-d: "
                             "the people were encoded with different adapters; encode all of them with the adapter "
                             "you apply")
        other_formats, other_names = _adapters(identity)
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


def regional_identity(people: Sequence[tuple[str, Identity, torch.Tensor, float]],
                      base: Identity | None = None) -> Identity:
    """One identity from ``(input name, identity, mask, weight)`` per person.

    ``base``: a regional identity to add these people to (its regions come first).
    Masks are checked (``check_mask``); an all-zero mask is allowed here (it gives that
    person weight 0) and refused by the node, where it is always a wiring mistake.
    """
    named: list[tuple[str, Identity, torch.Tensor, float]] = []
    if base is not None:
        if not base.regions:
            raise ValueError("regions: this identity has no regions; connect people to identity_1..4 instead")
        infos = base.info.get("regions") or [{}] * len(base.regions)
        for region, part_info in zip(base.regions, infos):
            part = Identity(cond=base.cond[:, region.tokens], uncond=base.uncond[:, region.tokens], info=part_info)
            named.append((f"regions ({region.name or 'an earlier person'})", part, region.mask, region.weight))
    for name, identity, mask, weight in people:
        if identity.regions:
            raise ValueError(f"{name}: already a regional identity (InfiniteID Regions); connect it to the 'regions' "
                             "input to add people to it")
        if not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"{name.replace('identity', 'weight')}: must be a finite number, not {weight!r}")
        named.append((name, identity, check_mask(mask, name.replace("identity", "mask")), float(weight)))
    if not named:
        raise ValueError("identity_1: connect at least one person")
    if len(named) > MAX_REGIONS:
        earlier = len(base.regions) if base is not None else 0
        raise ValueError(f"regions: {len(named)} people ({earlier} from the 'regions' input and {len(named) - earlier} "
                         f"connected here); a regional identity holds at most {MAX_REGIONS}. Mix people who share a "
                         "region with InfiniteID Mix first")
    _check_same_adapter([(name, identity) for name, identity, _, _ in named])
    rows = _rows([(name, identity) for name, identity, _, _ in named])
    _mask_batch([(name.replace("identity", "mask"), mask) for name, _, mask, _ in named])
    conds, unconds, regions, start = [], [], [], 0
    for name, identity, mask, weight in named:
        count = identity.cond.shape[1]
        conds.append(identity.cond.float().expand(rows, -1, -1))
        unconds.append(identity.uncond.float().expand(rows, -1, -1))
        label = name[len("regions ("):-1] if name.startswith("regions (") else name
        regions.append(Region(tokens=slice(start, start + count), mask=mask, weight=weight, name=label))
        start += count
    infos = [identity.info for _, identity, _, _ in named]
    info: dict[str, Any] = {"regions": infos, "people": len(named)}
    for key in ("adapter", "adapter_format"):
        values = {i.get(key) for i in infos if i.get(key)}
        if len(values) == 1:
            info[key] = values.pop()
    return Identity(cond=torch.cat(conds, dim=1), uncond=torch.cat(unconds, dim=1), info=info,
                    regions=tuple(regions))


def empty_masks(identity: Identity) -> list[str]:
    """Names of the regions whose mask is zero everywhere."""
    return [region.name for region in identity.regions if not bool((region.mask > 0).any())]


def mask_rows(identity: Identity) -> int:
    """The masks' batch (1: the same regions for every latent row)."""
    return max((region.mask.shape[0] for region in identity.regions), default=1)
