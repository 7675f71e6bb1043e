"""A ``GUIDER`` that runs both Infinite-ID streams inside ``SamplerCustomAdvanced``.

Only hosts newer than March 2024 have guiders; ``make_guider`` says so plainly on older
ones.
"""
from __future__ import annotations

from typing import Any

from ..host import compat
from .dual_stream import check_model, double, paired_sampler, prepare_run

_guider_class = None


def _define_guider_class():
    import comfy.samplers

    class InfiniteIDCFGGuider(comfy.samplers.CFGGuider):
        """CFG for both streams; returns the identity stream, keeps the text stream in
        ``last_text_latent``."""

        def __init__(self, model_patcher: Any) -> None:
            super().__init__(model_patcher)
            self.patched_model = model_patcher
            self.last_text_latent = None

        def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                   disable_pbar=False, seed=None, **kwargs):
            n = latent_image.shape[0]
            check_model(self.patched_model, n, "InfiniteIDGuider")
            self.model_patcher = prepare_run(self.patched_model, n)
            self.model_options = self.model_patcher.model_options
            if denoise_mask is not None and denoise_mask.shape[0] == n:
                denoise_mask = double(denoise_mask)
            samples = super().sample(double(noise), double(latent_image), paired_sampler(sampler, n), sigmas,
                                     denoise_mask, callback, disable_pbar, seed, **kwargs)
            self.last_text_latent = samples[n:]
            return samples[:n]

    return InfiniteIDCFGGuider


def make_guider(model: Any, positive: list, negative: list, cfg: float) -> Any:
    global _guider_class
    if not compat.has_guider():
        raise ValueError("this ComfyUI is too old for GUIDER objects (SamplerCustomAdvanced). Update ComfyUI, or use "
                         "'InfiniteID Sampler' instead.")
    if _guider_class is None:
        _guider_class = _define_guider_class()
    guider = _guider_class(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider
