"""``InfiniteID Guider``'s door: a ``GUIDER`` for ``SamplerCustomAdvanced``.

On hosts with keyed wrappers it is core's own ``CFGGuider`` on the patched MODEL with
the guider's ``batch_noise`` as a ``RunRequest``: the MODEL's ``OUTER_SAMPLE`` wrapper
runs both streams, as for any other sampling. Hosts with guiders but no keyed wrappers
(April to November 2024) get a ``CFGGuider`` subclass that stacks the streams with the
same row plan. The March-2024 tree has no guiders: ``make_guider`` says so plainly.
"""
from __future__ import annotations

from typing import Any

from ..host import compat
from ..model_patch.streams import RunRequest, check_latent, check_result, paired_sampler, plan_streams, shares_noise
from .dual_stream import check_model, prepare_run, with_request

NODE = "InfiniteIDGuider"

_guider_class = None


def _define_guider_class():
    import comfy.samplers

    class InfiniteIDCFGGuider(comfy.samplers.CFGGuider):
        """CFG for both streams on hosts without keyed wrappers; returns the identity stream
        (SamplerCustomAdvanced has one LATENT output)."""

        def __init__(self, model_patcher: Any, batch_noise: str = "auto") -> None:
            super().__init__(model_patcher)
            self.patched_model = model_patcher
            self.request = RunRequest(node=NODE, batch_noise=batch_noise)

        def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                   disable_pbar=False, seed=None, **kwargs):
            check_latent(latent_image, NODE)
            patch = check_model(self.patched_model, latent_image.shape[0], NODE)
            streams = plan_streams(patch, noise, latent_image, denoise_mask, self.request)
            plan = streams.plan
            self.model_patcher = prepare_run(self.patched_model, plan.identity_rows, plan.text_rows,
                                             tuple(latent_image.shape[-2:]))
            self.model_options = self.model_patcher.model_options
            samples = super().sample(streams.noise, streams.latent, paired_sampler(sampler, plan, NODE), sigmas,
                                     streams.mask, callback, disable_pbar, seed, **kwargs)
            n = plan.identity_rows
            check_result(samples[:n], NODE)
            return samples[:n]

    return InfiniteIDCFGGuider


def make_guider(model: Any, positive: list, negative: list, cfg: float, batch_noise: str = "auto") -> Any:
    global _guider_class
    if not compat.has_guider():
        raise ValueError("this ComfyUI is too old for GUIDER objects (SamplerCustomAdvanced). Update ComfyUI, or use "
                         "'InfiniteID Sampler' instead.")
    import comfy.samplers

    shares_noise(batch_noise, 1, None, NODE)  # refuse an unknown batch_noise now, not at sampling
    if compat.has_keyed_wrappers():
        guider = comfy.samplers.CFGGuider(with_request(model, RunRequest(node=NODE, batch_noise=batch_noise)))
    else:
        if _guider_class is None:
            _guider_class = _define_guider_class()
        guider = _guider_class(model, batch_noise)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider
