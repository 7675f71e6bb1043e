"""Run both Infinite-ID streams through one ComfyUI sampling loop.

The latent batch holds the identity rows, then the text rows, all starting from the noise
core ``KSampler`` draws for the original latent and seed (``RowPlan``). With shared noise
(a sweep: rows differ only by identity) one text row serves every identity row. Samplers that draw
noise at every step (ancestral, SDE) get a noise sampler built by the host's own code
for the original batch and repeated for the second stream, so the text stream follows
exactly the trajectory core ``KSampler`` would.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..host import compat
from ..identity.regions import mask_rows
from ..model_patch.install import DualStreamPatch, check_before_sampling, find_patch
from ..model_patch.run import RunState
from ..model_patch.wrapper import RUN_KEY

log = logging.getLogger(__name__)

@dataclass
class StreamLatents:
    identity: dict
    text: dict


def check_model(model: Any, latent_rows: int | None, node: str) -> DualStreamPatch:
    """Refuse what would fail deep inside sampling, with a message naming the node's input."""
    patch = check_before_sampling(model, node)
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
    return patch


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


def prepare_run(model: Any, identity_rows: int, text_rows: int | None = None,
                latent_size: tuple[int, int] | None = None) -> Any:
    """A clone of the patched model carrying this run's ``RunState`` (identity keys/values
    projected once, windows, layouts and region masks cached). ``latent_size``: the
    latent's height and width, so a regional identity's masks are laid out up front."""
    run_model = model.clone()
    options = run_model.model_options.setdefault("transformer_options", {})
    options[RUN_KEY] = RunState(find_patch(model), compat.model_sampling(model), identity_rows,
                                text_rows or identity_rows, device=model.load_device,
                                dtype=compat.unet_compute_dtype(model), latent_size=latent_size)
    return run_model


NOISE_MODES = ("auto", "shared", "per row")


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


def paired_sampler(sampler: Any, plan: RowPlan) -> Any:
    """Wrap a ComfyUI ``KSAMPLER`` so per-step noise is drawn as core would draw it for
    ``plan.noise_rows`` rows alone and given to both streams."""
    import comfy.samplers

    function = sampler.sampler_function
    kind = compat.noise_sampler_kind(function)
    if kind is None:
        return sampler
    gpu_tree = getattr(function, "__name__", "").endswith("_gpu")

    def sample_both_streams(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        if options.get("noise_sampler") is None:
            seed = (extra_args or {}).get("seed")
            single = compat.host_noise_sampler(kind, x[:plan.noise_rows], sigmas, seed, gpu_tree)
            options["noise_sampler"] = lambda sigma, sigma_next: plan.per_step(single(sigma, sigma_next))
        return function(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **options)

    sample_both_streams.__name__ = getattr(function, "__name__", "sampler")
    return comfy.samplers.KSAMPLER(sample_both_streams, extra_options=sampler.extra_options,
                                   inpaint_options=sampler.inpaint_options)


def sample_dual_stream(model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                       positive: list, negative: list, latent: dict, denoise: float = 1.0,
                       node: str = "InfiniteIDSampler", batch_noise: str = "auto") -> StreamLatents:
    """Core ``KSampler`` semantics for both streams; returns identity and text latents.

    With shared noise, every identity row starts from the noise core KSampler draws for
    row 0 alone, so each row equals sampling its identity alone with that seed; the text
    stream is then one row.
    """
    import comfy.samplers
    import comfy.utils
    import latent_preview

    check_latent(latent["samples"], node)
    latent_image = compat.fix_empty_latent_channels(model, latent["samples"])
    patch = check_model(model, latent_image.shape[0], node)
    if latent_image.shape[0] == 1 and patch.identity.batch > 1:  # a sweep from a one-row latent
        latent_image = latent_image.expand(patch.identity.batch, -1, -1, -1)
    n = latent_image.shape[0]
    batch_index = latent.get("batch_index")
    shared = shares_noise(batch_noise, patch.identity.batch, batch_index, node)
    noise_mask = latent.get("noise_mask")
    if noise_mask is not None and noise_mask.shape[0] not in (1, n):
        raise ValueError(f"{node}: latent_image: the noise mask has {noise_mask.shape[0]} rows for {n} latents")
    plan = plan_rows(n, shared, latent_image, noise_mask)
    if shared:
        first = list(batch_index[:1]) if batch_index is not None else None
        noise = compat.prepare_noise(latent_image[:1], seed, first).expand(n, -1, -1, -1)
    else:
        noise = compat.prepare_noise(latent_image, seed, batch_index)
    if noise_mask is not None and noise_mask.shape[0] == n:
        noise_mask = plan.stack(noise_mask)

    run_model = prepare_run(model, n, plan.text_rows, tuple(latent_image.shape[-2:]))
    sigmas = compat.compute_sigmas(run_model, steps, sampler_name, scheduler, denoise)
    sampler = paired_sampler(comfy.samplers.sampler_object(sampler_name), plan)
    x0_output: dict = {}
    callback = latent_preview.prepare_callback(run_model, sigmas.shape[-1] - 1, x0_output)
    samples = compat.sample_custom(
        run_model, plan.stack(noise), cfg, sampler, sigmas, positive, negative, plan.stack(latent_image),
        noise_mask=noise_mask, callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    check_result(samples[:n], node)
    return split_streams(latent, samples, n)


def split_streams(latent: dict, samples: torch.Tensor, n: int) -> StreamLatents:
    identity, text = latent.copy(), latent.copy()
    identity["samples"], text["samples"] = samples[:n], samples[n:]
    return StreamLatents(identity=identity, text=text)
