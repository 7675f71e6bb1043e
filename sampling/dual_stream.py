"""Run both Infinite-ID streams through one ComfyUI sampling loop.

The latent batch is doubled (identity rows, then text rows) and both halves start from
the noise core ``KSampler`` draws for the original latent and seed. Samplers that draw
noise at every step (ancestral, SDE) get a noise sampler built by the host's own code
for the original batch and repeated for the second stream, so the text stream follows
exactly the trajectory core ``KSampler`` would.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..model_patch.install import RUN_KEY, RunInfo, find_patch
from ..host import compat

log = logging.getLogger(__name__)

NOT_PATCHED = ("the MODEL has no Infinite-ID patch: connect it through 'InfiniteID Apply' (which takes the "
               "adapter and the identity) before this sampler")


@dataclass
class StreamLatents:
    identity: dict
    text: dict


def check_model(model: Any, latent_rows: int | None, node: str) -> None:
    """Refuse what would fail deep inside sampling, with a message naming the node's input."""
    patch = find_patch(model)
    if patch is None:
        raise ValueError(f"{node}: model: {NOT_PATCHED}")
    m = patch.identity.batch
    if latent_rows is not None and m not in (1, latent_rows):
        raise ValueError(
            f"{node}: latent_image: the identity holds {m} identities (e.g. an interpolation sweep) but the latent "
            f"batch has {latent_rows} rows. Use a latent batch of {m} (Empty Latent Image batch_size={m}) or an "
            "identity of 1.")


def prepare_run(model: Any, rows_per_stream: int) -> Any:
    """A clone of the patched model that tells the patch how many rows each stream has."""
    run_model = model.clone()
    options = run_model.model_options.setdefault("transformer_options", {})
    options[RUN_KEY] = RunInfo(rows_per_stream=rows_per_stream, model_sampling=compat.model_sampling(model))
    return run_model


def paired_sampler(sampler: Any, rows_per_stream: int) -> Any:
    """Wrap a ComfyUI ``KSAMPLER`` so per-step noise is the same for both streams and
    equal to what the sampler would draw for ``rows_per_stream`` rows alone."""
    import comfy.samplers

    function = sampler.sampler_function
    kind = compat.noise_sampler_kind(function)
    if kind is None:
        return sampler
    gpu_tree = getattr(function, "__name__", "").endswith("_gpu")

    def sample_both_streams(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        if options.get("noise_sampler") is None:
            seed = (extra_args or {}).get("seed")
            single = compat.host_noise_sampler(kind, x[:rows_per_stream], sigmas, seed, gpu_tree)
            options["noise_sampler"] = lambda sigma, sigma_next: single(sigma, sigma_next).repeat(2, 1, 1, 1)
        return function(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **options)

    sample_both_streams.__name__ = getattr(function, "__name__", "sampler")
    return comfy.samplers.KSAMPLER(sample_both_streams, extra_options=sampler.extra_options,
                                   inpaint_options=sampler.inpaint_options)


def double(t: torch.Tensor | None) -> torch.Tensor | None:
    """Both streams' rows: the original batch twice."""
    return None if t is None else torch.cat([t, t], dim=0)


def sample_dual_stream(model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                       positive: list, negative: list, latent: dict, denoise: float = 1.0,
                       node: str = "InfiniteIDSampler") -> StreamLatents:
    """Core ``KSampler`` semantics for both streams; returns identity and text latents."""
    import comfy.samplers
    import comfy.utils
    import latent_preview

    latent_image = compat.fix_empty_latent_channels(model, latent["samples"])
    if not torch.isfinite(latent_image).all():
        raise ValueError(f"{node}: latent_image contains NaN or infinite values")
    n = latent_image.shape[0]
    check_model(model, n, node)
    noise = compat.prepare_noise(latent_image, seed, latent.get("batch_index"))
    noise_mask = latent.get("noise_mask")
    if noise_mask is not None and noise_mask.shape[0] not in (1, n):
        raise ValueError(f"{node}: latent_image: the noise mask has {noise_mask.shape[0]} rows for {n} latents")
    if noise_mask is not None and noise_mask.shape[0] == n:
        noise_mask = double(noise_mask)

    run_model = prepare_run(model, n)
    sigmas = compat.compute_sigmas(run_model, steps, sampler_name, scheduler, denoise)
    sampler = paired_sampler(comfy.samplers.sampler_object(sampler_name), n)
    x0_output: dict = {}
    callback = latent_preview.prepare_callback(run_model, sigmas.shape[-1] - 1, x0_output)
    samples = compat.sample_custom(
        run_model, double(noise), cfg, sampler, sigmas, positive, negative, double(latent_image),
        noise_mask=noise_mask, callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    return split_streams(latent, samples, n)


def split_streams(latent: dict, samples: torch.Tensor, n: int) -> StreamLatents:
    identity, text = latent.copy(), latent.copy()
    identity["samples"], text["samples"] = samples[:n], samples[n:]
    return StreamLatents(identity=identity, text=text)
