"""The row plan of a dual-stream run: one place that turns a sampling's inputs into both streams.

A run's latent batch holds the identity rows, then the text rows, all starting from the
same latent and noise (``RowPlan``). With shared noise (a sweep: rows differ only by
identity) one text row serves every identity row. Samplers that draw noise at every
step (ancestral, SDE) get a noise sampler built by the host's own code for the identity
rows and repeated for the text stream, so the text stream follows exactly the
trajectory core ``KSampler`` would.

Every door (``InfiniteID Sampler``, ``InfiniteID Guider``, any core sampling of the
patched MODEL on hosts with keyed wrappers) calls ``plan_streams``: there is no second
copy of the row plan, the noise pairing or the split.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..host import compat
from ..identity.regional import mask_rows

NOISE_MODES = ("auto", "shared", "per row")
REQUEST_KEY = "infinite_id_request"  # a door's RunRequest, in transformer_options


@dataclass(frozen=True)
class RowPlan:
    """How a run lays out its latent batch: ``identity_rows`` identity rows, then
    ``text_rows`` text rows (as many, or one shared by all when every identity row starts
    from the same latent and noise); ``noise_rows`` is 1 when all rows share one noise."""

    identity_rows: int
    text_rows: int
    noise_rows: int

    def stack(self, identity_part: torch.Tensor) -> torch.Tensor:
        """Both streams' rows from the identity stream's rows (the text rows repeat them)."""
        return torch.cat([identity_part, identity_part[:self.text_rows]], dim=0)

    def per_step(self, single: torch.Tensor) -> torch.Tensor:
        """Every row's per-step noise from the noise drawn for ``noise_rows`` rows."""
        rows = single.expand(self.identity_rows, *single.shape[1:]) if self.noise_rows == 1 else single
        return self.stack(rows)


@dataclass
class RunRequest:
    """What a door asks of the run, left in ``transformer_options`` for the run code.

    ``batch_index``: the latent's ``batch_index`` (LatentBatchSeedBehavior), which the
    sampling call itself does not carry. After the run, ``text`` holds the text stream's
    latent (``InfiniteID Sampler`` outputs it).
    """

    node: str
    batch_noise: str = "auto"
    batch_index: Any = None
    text: torch.Tensor | None = field(default=None, repr=False)

    def __deepcopy__(self, memo: dict) -> RunRequest:
        return self  # one request per sampling, read back by the door that made it


@dataclass(frozen=True)
class Streams:
    """Both streams' inputs for the sampler, stacked as ``plan`` says."""

    plan: RowPlan
    noise: torch.Tensor
    latent: torch.Tensor
    mask: torch.Tensor | None


def rows_identical(t: torch.Tensor | None) -> bool:
    return t is None or t.shape[0] == 1 or bool((t == t[:1]).all())


def shares_noise(mode: str, identities: int, batch_index: Any, node: str) -> bool:
    """``auto``: one noise for every row when the identity holds several identities (a
    sweep or an identity batch: rows should differ only by identity) or when the latent
    asks for it (core's LatentBatchSeedBehavior ``fixed``); otherwise a noise per row, as
    core KSampler draws for a batch."""
    if mode not in NOISE_MODES:
        raise ValueError(f"{node}: batch_noise: must be one of {NOISE_MODES}, not {mode!r}")
    if mode != "auto":
        return mode == "shared"
    fixed = batch_index is not None and len(batch_index) > 1 and len(set(batch_index)) == 1
    return identities > 1 or fixed


def plan_rows(rows: int, shared_noise: bool, latent_image: torch.Tensor, noise_mask: torch.Tensor | None) -> RowPlan:
    """One text row serves every identity row when they share noise, latent and mask."""
    one_text = shared_noise and rows_identical(latent_image) and rows_identical(noise_mask)
    return RowPlan(identity_rows=rows, text_rows=1 if one_text else rows, noise_rows=1 if shared_noise else rows)


def check_rows(patch: Any, latent_rows: int | None, node: str) -> None:
    """Latent rows, identities and region masks must fit together (the message names the fix)."""
    m = patch.identity.batch
    if latent_rows is not None and m not in (1, latent_rows) and latent_rows != 1:
        raise ValueError(
            f"{node}: latent_image: the identity holds {m} identities (e.g. an interpolation sweep) but the latent "
            f"batch has {latent_rows} rows. Use a latent batch of {m} or 1 (Empty Latent Image batch_size={m} or 1), "
            "or an identity of 1.")
    masks = mask_rows(patch.identity)
    rows = max(latent_rows or 1, m)
    if masks not in (1, rows):
        raise ValueError(
            f"{node}: latent_image: the regional identity's masks have a batch of {masks} but the latent batch has "
            f"{rows} rows. Give InfiniteID Regions masks of batch 1 (the same regions for every image) or {rows} "
            "(one per image).")


def check_latent(latent_image: torch.Tensor, node: str) -> None:
    """An SDXL image latent: ``[rows >= 1, channels, height, width]``, finite."""
    if latent_image.dim() != 4:
        raise ValueError(f"{node}: latent_image: expected an image latent [batch, channels, height, width], got a "
                         f"{latent_image.dim()}-D latent {tuple(latent_image.shape)}. Infinite-ID samples SDXL "
                         "images; use Empty Latent Image or VAE Encode.")
    if latent_image.shape[0] == 0:
        raise ValueError(f"{node}: latent_image: the latent batch is empty (0 rows); use a batch size of at least 1")
    if not torch.isfinite(latent_image).all():
        raise ValueError(f"{node}: latent_image contains NaN or infinite values")


def check_result(samples: torch.Tensor, node: str) -> None:
    """Say so when sampling produced NaN/inf, instead of handing a black image downstream."""
    if not torch.isfinite(samples).all():
        raise ValueError(
            f"{node}: sampling produced NaN or infinite values. Lower 'weight' on InfiniteID Apply (and cfg), check "
            "the adapter file, and if the model runs in float16 try bfloat16 or float32 (--bf16-unet or "
            "--fp32-unet): float16 overflows more easily.")


def plan_streams(patch: Any, noise: torch.Tensor, latent: torch.Tensor, mask: torch.Tensor | None,
                 request: RunRequest) -> Streams:
    """Stack a sampling's noise, latent and mask for both streams.

    ``noise`` is what the sampling was given: core KSampler's draw for the latent and
    seed (zeros with ``add_noise`` off). A one-row latent with a sweep identity becomes a
    row per identity. Shared noise (``batch_noise``; ``auto`` also shares when the
    sampling drew one noise for every row) gives every row the noise of row 0.
    """
    node = request.node
    check_rows(patch, latent.shape[0], node)
    if noise.shape != latent.shape:
        raise ValueError(f"{node}: the sampling's noise {tuple(noise.shape)} does not match its latent "
                         f"{tuple(latent.shape)}; Infinite-ID pairs both streams row by row. Give the sampler a "
                         "noise drawn for the latent it samples (core RandomNoise / KSampler's seed).")
    if latent.shape[0] == 1 and patch.identity.batch > 1:  # a sweep from a one-row latent
        latent = latent.expand(patch.identity.batch, -1, -1, -1)
        noise = noise[:1].expand_as(latent)
    n = latent.shape[0]
    shared = shares_noise(request.batch_noise, patch.identity.batch, request.batch_index, node) or (
        request.batch_noise == "auto" and n > 1 and rows_identical(noise))
    if shared:
        noise = noise[:1].expand_as(latent)
    if mask is not None and mask.shape[0] not in (1, n):
        raise ValueError(f"{node}: latent_image: the noise mask has {mask.shape[0]} rows for {n} latents")
    plan = plan_rows(n, shared, latent, mask)
    if mask is not None and mask.shape[0] == n:
        mask = plan.stack(mask)
    return Streams(plan=plan, noise=plan.stack(noise), latent=plan.stack(latent), mask=mask)


def paired_sampler(sampler: Any, plan: RowPlan, node: str) -> Any:
    """Wrap a ComfyUI ``KSAMPLER`` so per-step noise is drawn as core would draw it for
    ``plan.noise_rows`` rows alone and given to both streams.

    Inpaint re-noising drawn for the whole batch (``inpaint_options`` ``random``: ddim)
    is paired the same way. A sampler that is not a ``KSAMPLER``, or that brings its own
    noise sampler, may draw
    per-step noise Infinite-ID cannot pair: it is refused before sampling.
    """
    import comfy.samplers

    if not compat.is_ksampler(sampler):
        raise ValueError(
            f"{node}: sampler: {type(sampler).__name__} is not a ComfyUI KSAMPLER, so Infinite-ID cannot give both "
            "streams the same per-step noise. Use a core sampler (KSamplerSelect, or KSampler's sampler_name).")
    function = sampler.sampler_function
    kind = compat.noise_sampler_kind(function)
    # Samplers such as ddim re-noise an inpaint mask's kept area with their own draw for
    # the whole batch: the text rows take the identity rows' draw instead.
    random_inpaint = bool(sampler.inpaint_options.get("random"))
    if kind is None and not random_inpaint:
        return sampler
    if kind is not None and sampler.extra_options.get("noise_sampler") is not None:
        raise ValueError(
            f"{node}: sampler: it brings its own per-step noise sampler, which would draw different noise for the "
            "identity and the text stream. Use the sampler without a custom noise sampler.")
    gpu_tree = getattr(function, "__name__", "").endswith("_gpu")

    def sample_both_streams(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        inpaint_noise = getattr(model, "noise", None)
        if random_inpaint and inpaint_noise is not None and inpaint_noise.shape[0] == x.shape[0]:
            model.noise = plan.stack(inpaint_noise[:plan.identity_rows])
        if kind is not None and options.get("noise_sampler") is None:
            seed = (extra_args or {}).get("seed")
            single = compat.host_noise_sampler(kind, x[:plan.noise_rows], sigmas, seed, gpu_tree)
            options["noise_sampler"] = lambda sigma, sigma_next: plan.per_step(single(sigma, sigma_next))
        return function(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **options)

    sample_both_streams.__name__ = getattr(function, "__name__", "sampler")
    return comfy.samplers.KSAMPLER(sample_both_streams, extra_options=sampler.extra_options,
                                   inpaint_options=sampler.inpaint_options)
