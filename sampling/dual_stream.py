"""``InfiniteID Sampler``'s door: core ``KSampler`` semantics for both streams.

On hosts with keyed wrappers the door only asks: it samples the patched MODEL through
``comfy.sample`` like core ``KSampler``, with a ``RunRequest`` (``batch_noise``, the
latent's ``batch_index``) in the model options, and the MODEL's own ``OUTER_SAMPLE``
wrapper runs both streams (``model_patch/outer_sample.py``) and hands back the text latent. Older
hosts have no such wrapper: there this module stacks the streams itself, with the same
row plan (``model_patch/streams.py``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..host import compat
from ..model_patch.install import DualStreamPatch, check_before_sampling, find_patch
from ..model_patch.run_state import RunState
from ..model_patch.streams import (
    NOISE_MODES,
    REQUEST_KEY,
    RunRequest,
    check_latent,
    check_result,
    check_rows,
    paired_sampler,
    plan_streams,
    shares_noise,
)
from ..model_patch.wrapper import RUN_KEY

__all__ = ["NOISE_MODES", "RunRequest", "StreamLatents", "check_model", "prepare_run", "sample_dual_stream",
           "with_request"]

log = logging.getLogger(__name__)


@dataclass
class StreamLatents:
    identity: dict
    text: dict


def check_model(model: Any, latent_rows: int | None, node: str) -> DualStreamPatch:
    """Refuse what would fail deep inside sampling, with a message naming the node's input."""
    patch = check_before_sampling(model, node)
    check_rows(patch, latent_rows, node)
    return patch


def with_request(model: Any, request: RunRequest) -> Any:
    """A clone of the patched model that carries a door's request to the run code."""
    asked = model.clone()
    asked.model_options.setdefault("transformer_options", {})[REQUEST_KEY] = request
    return asked


def prepare_run(model: Any, identity_rows: int, text_rows: int | None = None,
                latent_size: tuple[int, int] | None = None) -> Any:
    """Hosts without keyed wrappers: a clone of the patched model carrying this run's
    ``RunState`` (identity keys/values projected once, windows, layouts and region masks
    cached). ``latent_size``: the latent's height and width, so a regional identity's
    masks are laid out up front."""
    run_model = model.clone()
    options = run_model.model_options.setdefault("transformer_options", {})
    options[RUN_KEY] = RunState(find_patch(model), compat.model_sampling(model), identity_rows,
                                text_rows or identity_rows, device=model.load_device,
                                dtype=compat.unet_compute_dtype(model), latent_size=latent_size)
    return run_model


def door_noise(latent_image: torch.Tensor, seed: int, batch_index: Any, shared: bool) -> torch.Tensor:
    """The noise core KSampler draws; with shared noise, row 0's draw alone for every row."""
    if shared:
        first = list(batch_index[:1]) if batch_index is not None else None
        return compat.prepare_noise(latent_image[:1], seed, first).expand_as(latent_image)
    return compat.prepare_noise(latent_image, seed, batch_index)


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
    if latent_image.shape[0] == 1 and patch.identity.batch > 1:  # a sweep from a one-row latent: a row each
        latent_image = latent_image.expand(patch.identity.batch, -1, -1, -1)
    batch_index = latent.get("batch_index")
    request = RunRequest(node=node, batch_noise=batch_noise, batch_index=batch_index)
    noise = door_noise(latent_image, seed, batch_index,
                       shares_noise(batch_noise, patch.identity.batch, batch_index, node))
    noise_mask = latent.get("noise_mask")
    sampler = comfy.samplers.sampler_object(sampler_name)
    if compat.has_keyed_wrappers():
        run_model = with_request(model, request)
    else:
        streams = plan_streams(patch, noise, latent_image, noise_mask, request)
        plan = streams.plan
        run_model = prepare_run(model, plan.identity_rows, plan.text_rows, tuple(latent_image.shape[-2:]))
        noise, latent_image, noise_mask = streams.noise, streams.latent, streams.mask
        sampler = paired_sampler(sampler, plan, node)
    sigmas = compat.compute_sigmas(run_model, steps, sampler_name, scheduler, denoise)
    x0_output: dict = {}
    callback = latent_preview.prepare_callback(run_model, sigmas.shape[-1] - 1, x0_output)
    samples = compat.sample_custom(
        run_model, noise, cfg, sampler, sigmas, positive, negative, latent_image, noise_mask=noise_mask,
        callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    if compat.has_keyed_wrappers():
        identity, text = samples, request.text.to(samples.device)
    else:
        n = plan.identity_rows
        check_result(samples[:n], node)
        identity, text = samples[:n], samples[n:]
    return split_streams(latent, identity, text)


def split_streams(latent: dict, identity_samples: torch.Tensor, text_samples: torch.Tensor) -> StreamLatents:
    identity, text = latent.copy(), latent.copy()
    identity["samples"], text["samples"] = identity_samples, text_samples
    return StreamLatents(identity=identity, text=text)
