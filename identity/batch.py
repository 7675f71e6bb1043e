"""Identity batches: several people as one ``INFINITEID_IDENTITY`` of n rows (row i = person i).

Why a batch and not a mix: a mix stacks tokens along the token axis (one person carrying
features of several); a batch stacks along the row axis, and the sampler gives row i of
the latent to row i of the identity. With shared noise (``batch_noise`` ``auto``) every
row then equals sampling that person alone with the same seed, in one sampling call:
the evaluation uses this to make all identities of one prompt together.

Rows must be interchangeable for one Apply node, so the parts must have the same token
shape ``[tokens, dim]`` and come from the same adapter (the one Apply is given). Parts
that are batches themselves (an Interpolate sweep, another Identity Batch) add all
their rows, in order: that is what lets batches be chained like core's ImageBatch.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from .types import Identity, check_identity, recorded_adapters

log = logging.getLogger(__name__)


def _check_same_kind(identities: Sequence[Identity], names: Sequence[str]) -> None:
    """Same token shape and same adapter as the first part, or a message naming the input that differs."""
    first, first_name = identities[0], names[0]
    shape = tuple(first.cond.shape[1:])
    formats, adapters = recorded_adapters(first)
    for identity, name in zip(identities[1:], names[1:]):
        other = tuple(identity.cond.shape[1:])
        if other != shape:
            raise ValueError(
                f"{name}: its tokens are {other[0]} x {other[1]} but {first_name}'s are {shape[0]} x {shape[1]}; "
                f"the rows of one batch must have the same token shape: batch single identities encoded with "
                f"the same adapter (a mix of k people has k times the tokens: batch mixes of as many people)")
        their_formats, their_adapters = recorded_adapters(identity)
        if formats and their_formats and formats != their_formats:
            raise ValueError(
                f"{name}: it was encoded with a {'/'.join(sorted(their_formats))} adapter but {first_name} with a "
                f"{'/'.join(sorted(formats))} adapter; one Apply node uses one adapter, so re-encode both with "
                f"the adapter you apply")
        if adapters and their_adapters and adapters != their_adapters:
            raise ValueError(
                f"{name}: it was encoded with adapter '{', '.join(sorted(their_adapters))}' but {first_name} with "
                f"'{', '.join(sorted(adapters))}'; one Apply node uses one adapter, so re-encode both with the "
                f"adapter you apply (if the two files are the same weights, encode with one of them)")


def batch(identities: Sequence[Identity], names: Sequence[str] | None = None) -> Identity:
    """Join identities along the row axis: the result's rows are the parts' rows, in order."""
    names = list(names or [f"identity_{i + 1}" for i in range(len(identities))])
    if len(identities) < 1:
        raise ValueError("connect at least one identity")
    for identity, name in zip(identities, names):
        check_identity(identity, name)
        if identity.regions:
            raise ValueError(f"{name}: a regional identity (InfiniteID Regions) cannot be batched: its regions would be "
                             "lost. Batch the people first and give the batch to one region of InfiniteID Regions")
    _check_same_kind(identities, names)
    first = identities[0]
    dtype = first.cond.dtype
    for identity in identities[1:]:
        dtype = torch.promote_types(dtype, identity.cond.dtype)
    device = first.cond.device
    cond = torch.cat([i.cond.to(device=device, dtype=dtype) for i in identities], dim=0)
    uncond = torch.cat([i.uncond.to(device=device, dtype=dtype) for i in identities], dim=0)
    features = {f"{n + 1}.{key}": value for n, identity in enumerate(identities)
                for key, value in identity.features.items()}
    rows = [identity.batch for identity in identities]
    info = {"batch": [identity.info for identity in identities], "rows": rows}
    log.info("InfiniteIDIdentityBatch: %d identities in %d rows (%d x %d tokens each)", len(identities), sum(rows),
             cond.shape[1], cond.shape[2])
    return Identity(cond=cond.contiguous(), uncond=uncond.contiguous(), features=features, info=info)
