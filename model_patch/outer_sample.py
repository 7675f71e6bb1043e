"""The dual-stream run on hosts with keyed wrappers: an ``OUTER_SAMPLE`` wrapper.

``CFGGuider.outer_sample(noise, latent_image, sampler, sigmas, denoise_mask, callback,
disable_pbar, seed, ...)`` is the one call every sampling goes through: core KSampler and
KSamplerAdvanced, SamplerCustom(Advanced) with any CFGGuider subclass, ``comfy.sample``
in other packs, and the pack's own two nodes. ``InfiniteIDApply`` chains ``OuterSample``
there (``model_patch/install.py``), so the patched MODEL itself turns each sampling into
both streams:

- the noise, latent and mask it is given are stacked for both streams with the one row
  plan (``model_patch/streams.py``); a pass that starts from an image latent (denoise < 1,
  ``start_at_step`` > 0, an inpaint mask) starts both streams from that latent;
- the sampler is paired, so ancestral and SDE samplers give both streams the same
  per-step noise;
- the run's ``RunState`` goes into this sampling's model options only (a clone, put
  back afterwards), where the per-call ``APPLY_MODEL`` wrapper finds it;
- the identity rows are returned; the text rows go to the door's ``RunRequest``, if any.

What cannot follow the contract is refused before any model call, naming what to change.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from ..host import compat
from .install import check_before_sampling
from .run_state import RunState
from .streams import REQUEST_KEY, RunRequest, check_latent, check_result, paired_sampler, plan_streams
from .wrapper import APPLY_KEY, RUN_KEY

log = logging.getLogger(__name__)

SAMPLING = "sampling with the Infinite-ID MODEL"  # the node named in messages when no door asked


class OuterSample:
    """Keyed ``OUTER_SAMPLE`` wrapper: one sampling becomes the dual-stream run (per run, not per call)."""

    def __init__(self, patch: Any) -> None:
        self.patch = patch

    def __deepcopy__(self, memo: dict) -> OuterSample:
        return self

    def to(self, *args: Any, **kwargs: Any) -> OuterSample:
        """ComfyUI casts wrappers to the load device: nothing here lives on a device."""
        return self

    def __call__(self, executor: Any, noise: torch.Tensor, latent_image: torch.Tensor, sampler: Any,
                 sigmas: torch.Tensor, denoise_mask: torch.Tensor | None = None, callback: Callable | None = None,
                 disable_pbar: bool = False, seed: int | None = None, **kwargs: Any) -> torch.Tensor:
        guider = executor.class_obj
        options = guider.model_options
        extra = options.get("transformer_options", {})
        if extra.get(RUN_KEY) is not None:  # already inside a run of this MODEL
            return executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
                            **kwargs)
        request: RunRequest = extra.get(REQUEST_KEY) or RunRequest(node=SAMPLING)
        node = request.node
        model = guider.model_patcher
        patch = check_before_sampling(model, node)
        shapes = kwargs.get("latent_shapes")
        if getattr(latent_image, "is_nested", False) or (shapes is not None and len(shapes) > 1):
            raise ValueError(f"{node}: latent_image: a nested (multi-part) latent; Infinite-ID samples SDXL image "
                             "latents. Sample this model with the unpatched MODEL.")
        check_latent(latent_image, node)
        streams = plan_streams(patch, noise, latent_image, denoise_mask, request)
        plan = streams.plan
        paired = paired_sampler(sampler, plan, node)
        others = compat.other_model_call_wrappers(options, APPLY_KEY)
        if others and patch.settings.attention_mode != "off":
            log.info("Infinite-ID: other per-call wrappers (%s) present: the text stream is computed to the last "
                     "step, so every model call has the same batch", ", ".join(others))
        run = RunState(patch, compat.model_sampling(model), plan.identity_rows, plan.text_rows,
                       device=model.load_device, dtype=compat.unet_compute_dtype(model),
                       latent_size=tuple(latent_image.shape[-2:]), constant_batch=bool(others),
                       uuid_kinds=condition_sides(guider))
        if shapes is not None:
            kwargs["latent_shapes"] = [streams.latent.shape]
        guider.model_options = compat.clone_model_options(options)
        guider.model_options.setdefault("transformer_options", {})[RUN_KEY] = run
        try:
            samples = executor(streams.noise, streams.latent, paired, sigmas, streams.mask,
                               identity_rows_only(callback, plan.identity_rows), disable_pbar, seed, **kwargs)
        finally:
            guider.model_options = options
        n = plan.identity_rows
        check_result(samples[:n], node)
        request.text = samples[n:]
        return samples[:n]


def condition_sides(guider: Any) -> dict:
    """uuid -> 0 for the positive prompt's conditions, 1 for every other (negative-side) prompt."""
    sides = {}
    for name, conds in (getattr(guider, "conds", None) or {}).items():
        for cond in conds or []:
            if isinstance(cond, dict) and "uuid" in cond:
                sides[cond["uuid"]] = 0 if name == "positive" and cond.get("prompt_type") != "negative" else 1
    return sides


def identity_rows_only(callback: Callable | None, n: int) -> Callable | None:
    """Previews and ``SamplerCustom``'s denoised output see the identity stream only."""
    if callback is None:
        return None

    def identity_callback(step, x0, x, total_steps):
        return callback(step, x0[:n], x[:n], total_steps)

    return identity_callback
