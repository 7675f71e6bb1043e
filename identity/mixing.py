"""Identity mixing and interpolation (docs/IDENTITY.md).

Both work on the mapped identity tokens ``c_id`` (``Identity.cond``/``uncond``), not on
raw ArcFace/CLIP features re-mapped through an adapter. Why:

- ``c_id`` *is* the paper's identity embedding: the encoder's output, concatenated from
  the CLIP and face mappers. Mixing "stacks the identity embeddings" and interpolation
  "blends the identity embeddings"; on tokens that is literally what happens.
- The adapter's key/value projections are linear, so blending tokens blends the keys and
  values the U-Net attends to: the sweep is smooth, ``t = 0`` is exactly identity A and
  ``t = 1`` exactly identity B.
- No adapter input is needed, and identities without features (loaded files, mixes,
  interpolations of interpolations) blend the same way.
Raw features are kept under ``a.``/``b.`` (or ``1.``, ``2.``...) prefixes for reference.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

from .types import Identity, check_identity, token_problem

log = logging.getLogger(__name__)


def _prefixed(prefix: str, identity: Identity) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{key}": value for key, value in identity.features.items()}


def _common_batch(identities: Sequence[Identity], names: Sequence[str]) -> int:
    """Identities of batch 1 broadcast to the others' batch; two different batches > 1 do not."""
    batches = {identity.batch for identity in identities if identity.batch > 1}
    if len(batches) > 1:
        sizes = ", ".join(f"{name}: {identity.batch}" for name, identity in zip(names, identities))
        raise ValueError(f"identities hold different numbers of rows ({sizes}); only batches of 1 combine with "
                         f"a sweep")
    return batches.pop() if batches else 1


def refuse_regional(identities: Sequence[Identity], names: Sequence[str]) -> None:
    """Regions say where each person goes; blending or stacking them would lose that."""
    for identity, name in zip(identities, names):
        if identity.regions:
            raise ValueError(f"{name}: a regional identity (InfiniteID Regions) cannot be mixed or blended; mix or "
                             "interpolate the people first, then give the result its region")


def _check_token_dims(identities: Sequence[Identity], names: Sequence[str]) -> None:
    dims = {identity.cond.shape[-1] for identity in identities}
    if len(dims) > 1:
        sizes = ", ".join(f"{name}: {identity.cond.shape[-1]}" for name, identity in zip(names, identities))
        raise ValueError(f"identity tokens have different widths ({sizes}); encode all identities with the same "
                         f"adapter")


def parse_weights(text: str, count: int) -> list[float]:
    """``"1, 0.5"`` -> one weight per identity; empty means all 1."""
    text = (text or "").strip()
    if not text:
        return [1.0] * count
    try:
        weights = [float(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError as exc:
        raise ValueError(f"weights: '{text}' is not a comma-separated list of numbers") from exc
    if len(weights) != count:
        raise ValueError(f"weights: {len(weights)} weight(s) given for {count} connected identities; give one per "
                         f"identity, in socket order")
    if not all(torch.isfinite(torch.tensor(w)) for w in weights):
        raise ValueError(f"weights: '{text}' contains a non-finite number")
    return weights


def mix(identities: Sequence[Identity], weights: Sequence[float] | None = None,
        names: Sequence[str] | None = None) -> Identity:
    """Stack identities along the token axis (identity mixing).

    A weight moves that identity's cond tokens towards its own uncond (neutral) tokens:
    ``uncond + w * (cond - uncond)``. ``w = 1`` keeps the identity, ``w = 0`` leaves a
    neutral slot (what the negative side sees), values in between fade the person out
    and values above 1 push further. Why not scale tokens by ``w``: zero-scaled tokens
    still take attention mass (their keys are 0, not absent) and would dim the others;
    the neutral tokens are what the model already treats as "no identity".
    """
    names = list(names or [f"identity_{i + 1}" for i in range(len(identities))])
    if len(identities) < 1:
        raise ValueError("connect at least one identity")
    weights = list(weights) if weights is not None else [1.0] * len(identities)
    if len(weights) != len(identities) or len(names) != len(identities):
        # zip() below would drop the identities past the shorter list without a word
        raise ValueError(f"{len(identities)} identities with {len(weights)} weight(s) and {len(names)} name(s); give "
                         "one weight and one name per identity")
    for identity, name in zip(identities, names):
        check_identity(identity, name)
    refuse_regional(identities, names)
    _check_token_dims(identities, names)
    batch = _common_batch(identities, names)
    conds, unconds, features = [], [], {}
    for i, (identity, weight) in enumerate(zip(identities, weights)):
        cond = identity.uncond + weight * (identity.cond - identity.uncond)
        conds.append(cond.expand(batch, -1, -1))
        unconds.append(identity.uncond.expand(batch, -1, -1))
        features.update(_prefixed(str(i + 1), identity))
    problem = token_problem(torch.cat(conds, dim=1))
    if problem:
        raise ValueError(f"weights: {weights} push the mixed tokens to {problem}; use weights near 0..1")
    info = {"mix": [identity.info for identity in identities], "weights": weights,
            "tokens": [identity.cond.shape[1] for identity in identities]}
    log.info("InfiniteIDMix: %d identities, %s tokens in all, weights %s", len(identities),
             sum(info["tokens"]), weights)
    return Identity(cond=torch.cat(conds, dim=1).contiguous(), uncond=torch.cat(unconds, dim=1).contiguous(),
                    features=features, info=info)


def sweep_values(steps: int) -> list[float]:
    """``steps`` values of t from 0 to 1 inclusive (1 step: just 0)."""
    if steps < 1:
        raise ValueError(f"steps: {steps} is less than 1")
    return [i / (steps - 1) for i in range(steps)] if steps > 1 else [0.0]


def interpolate(a: Identity, b: Identity, t: float | Sequence[float]) -> Identity:
    """Linear blend ``(1 - t) * a + t * b`` of cond and uncond tokens.

    A list of ``t`` gives one row per value (a sweep for a latent batch of that size);
    then ``a`` and ``b`` must be single identities.
    """
    names = ("identity_a", "identity_b")
    check_identity(a, names[0])
    check_identity(b, names[1])
    refuse_regional((a, b), names)
    _check_token_dims((a, b), names)
    if a.cond.shape[1] != b.cond.shape[1]:
        raise ValueError(f"identity_a has {a.cond.shape[1]} tokens and identity_b {b.cond.shape[1]}; blend "
                         f"identities of the same kind (e.g. two single identities, or two mixes of as many people)")
    ts = [float(t)] if isinstance(t, (int, float)) else [float(v) for v in t]
    if not all(math.isfinite(v) for v in ts):
        raise ValueError(f"t: {t} is not a finite number; use a value from 0 to 1")
    if len(ts) > 1 and (a.batch > 1 or b.batch > 1):
        raise ValueError(f"a sweep needs single identities; identity_a holds {a.batch} and identity_b {b.batch}")
    _common_batch((a, b), names)
    # torch.lerp is exact at both ends: t = 0 gives A and t = 1 gives B bit for bit.
    weights = torch.tensor(ts, dtype=a.cond.dtype).view(-1, 1, 1)
    cond = torch.lerp(a.cond, b.cond.to(a.cond.dtype), weights)
    uncond = torch.lerp(a.uncond, b.uncond.to(a.uncond.dtype), weights)
    features = {**_prefixed("a", a), **_prefixed("b", b)}
    info = {"interpolate": {"a": a.info, "b": b.info}, "t": ts}
    return Identity(cond=cond.contiguous(), uncond=uncond.contiguous(), features=features, info=info)
