"""A ``GUIDER`` that runs both Infinite-ID streams inside ``SamplerCustomAdvanced``.

Only hosts newer than March 2024 have guiders; ``make_guider`` says so plainly on older
ones.
"""
from __future__ import annotations

from typing import Any

from ..host import compat
from .dual_stream import (check_latent, check_model, check_result, paired_sampler, plan_rows, prepare_run,
                          rows_identical, shares_noise)

NODE = "InfiniteIDGuider"

_guider_class = None


def _define_guider_class():
    import comfy.samplers

    class InfiniteIDCFGGuider(comfy.samplers.CFGGuider):
        """CFG for both streams; returns the identity stream (SamplerCustomAdvanced has one
        LATENT output; the text stream's image comes from InfiniteID Sampler)."""

        def __init__(self, model_patcher: Any, batch_noise: str = "auto") -> None:
            super().__init__(model_patcher)
            self.patched_model = model_patcher
            self.batch_noise = batch_noise

        def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                   disable_pbar=False, seed=None, **kwargs):
            check_latent(latent_image, NODE)
            patch = check_model(self.patched_model, latent_image.shape[0], NODE)
            if latent_image.shape[0] == 1 and patch.identity.batch > 1:  # a sweep from a one-row latent
                latent_image = latent_image.expand(patch.identity.batch, -1, -1, -1)
                noise = noise[:1].expand_as(latent_image)
            n = latent_image.shape[0]
            # The NOISE input drew the rows; "auto" shares when it drew one noise for all
            # (LatentBatchSeedBehavior fixed) or when the identity holds several identities.
            shared = shares_noise(self.batch_noise, patch.identity.batch, None, NODE) or (
                self.batch_noise == "auto" and n > 1 and rows_identical(noise))
            if shared:
                noise = noise[:1].expand_as(latent_image)
            plan = plan_rows(n, shared, latent_image, denoise_mask)
            self.model_patcher = prepare_run(self.patched_model, n, plan.text_rows,
                                            tuple(latent_image.shape[-2:]))
            self.model_options = self.model_patcher.model_options
            if denoise_mask is not None and denoise_mask.shape[0] == n:
                denoise_mask = plan.stack(denoise_mask)
            samples = super().sample(plan.stack(noise), plan.stack(latent_image), paired_sampler(sampler, plan),
                                     sigmas, denoise_mask, callback, disable_pbar, seed, **kwargs)
            check_result(samples[:n], NODE)
            return samples[:n]

    return InfiniteIDCFGGuider


def make_guider(model: Any, positive: list, negative: list, cfg: float, batch_noise: str = "auto") -> Any:
    global _guider_class
    if not compat.has_guider():
        raise ValueError("this ComfyUI is too old for GUIDER objects (SamplerCustomAdvanced). Update ComfyUI, or use "
                         "'InfiniteID Sampler' instead.")
    if _guider_class is None:
        _guider_class = _define_guider_class()
    guider = _guider_class(model, batch_noise)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider
