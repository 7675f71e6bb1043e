"""A small stand-in for the cubiq face packs' cross-attention stacking protocol.

Written from the protocol, not from their code: a pack stores one callable per layer in
``patches_replace["attn2"][key]``; when something already sits there it calls
``.add(callback, **kwargs)`` on it instead. Every callback is called as
``callback(out, q, k, v, extra_options, **kwargs)`` and its result is added to the
layer's output while ``sigma_end <= sigma <= sigma_start``. Like the real packs, the
stand-in clones the model, copies the option dicts one level at a time, and assigns
the new transformer options only when it created a new entry.
"""
from __future__ import annotations

import torch

from infinite_id.unet.layers import SDXL_LAYERS


def _own_attention(q, k, v, heads):
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(q, k, v, heads)


class StandInReplace:
    def __init__(self, callback, **kwargs):
        self.callbacks, self.kwargs = [callback], [kwargs]

    def add(self, callback, **kwargs):
        self.callbacks.append(callback)
        self.kwargs.append(kwargs)

    def __call__(self, q, k, v, extra_options):
        out = _own_attention(q, k, v, extra_options["n_heads"])
        sigma = float(extra_options["sigmas"].max()) if "sigmas" in extra_options else 1e9
        for callback, kwargs in zip(self.callbacks, self.kwargs):
            if kwargs["sigma_end"] <= sigma <= kwargs["sigma_start"]:
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out


def image_attention(out, q, k, v, extra_options, tokens=None, weight=1.0, sigma_start=0.0, sigma_end=0.0):
    """The stand-in's contribution: attention of ``q`` to its own fixed tokens, scaled."""
    width = q.shape[-1]
    keys = tokens[..., :width].to(q.dtype).expand(q.shape[0], -1, -1)
    return _own_attention(q, keys, keys.flip(-1), extra_options["n_heads"]) * weight


def _set_replace(model, kwargs, key):
    to = model.model_options["transformer_options"].copy()
    to["patches_replace"] = dict(to.get("patches_replace", {}))
    to["patches_replace"]["attn2"] = dict(to["patches_replace"].get("attn2", {}))
    if key not in to["patches_replace"]["attn2"]:
        to["patches_replace"]["attn2"][key] = StandInReplace(image_attention, **kwargs)
        model.model_options["transformer_options"] = to
    else:
        to["patches_replace"]["attn2"][key].add(image_attention, **kwargs)


def apply_stand_in(model, weight: float = 1.0, start_percent: float = 0.0, end_percent: float = 1.0, seed: int = 11):
    """What a cubiq-style node's ``apply`` does: a patched clone of ``model``."""
    work = model.clone()
    work.model_options.setdefault("transformer_options", {})
    sampling = work.get_model_object("model_sampling") if hasattr(work, "get_model_object") else work.model.model_sampling
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(1, 3, 512, generator=gen)
    kwargs = {"tokens": tokens, "weight": weight,
              "sigma_start": float(sampling.percent_to_sigma(start_percent)),
              "sigma_end": float(sampling.percent_to_sigma(end_percent))}
    for key in SDXL_LAYERS:
        _set_replace(work, kwargs, key)
    return work
