"""The objects ComfyUI stores in ``model_options``: attention replacements and their stacking.

``SelfAttentionPatch`` and ``CrossAttentionPatch`` are the ``attn1``/``attn2`` replacements of one
transformer layer; all they do per call is look up the call's ``StepState`` and hand
views of ``q``, ``k``, ``v`` to ``attention/rows.py``.

Other face packs (cubiq's IPAdapter, InstantID, PuLID) stack on an existing ``attn2``
replacement by calling ``.add(callback, **kwargs)`` on it; each callback is later called
as ``callback(out, q, k, v, extra_options, **kwargs)`` and its result added to the
layer's output while ``sigma_end <= sigma <= sigma_start``. ``CrossAttentionPatch.add``
honours that protocol without the packs' own flaw: their ``add`` mutates an object that
every clone of the model shares, so the callback leaks into other branches of the graph.
Here ``add`` puts a new replacement holding the callback into the model that is being
patched (the caller's), and leaves the object other models hold unchanged.
"""
from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from typing import Any

import torch

from ..attention.rows import add_identity_attention, add_regional_identity_attention, mixed_self_attention
from ..host import compat
from ..unet.layers import LayerKey

log = logging.getLogger(__name__)

STEP_KEY = "infinite_id_step"  # the current call's StepState, in transformer_options
Stacked = tuple[Callable, dict]

_warned_shared_add = False


def attend_with(extra: dict) -> Callable:
    """The host's attention kernel with what core passes (heads, precision, options)."""
    heads, precision = extra["n_heads"], extra.get("attn_precision")

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return compat.optimized_attention(q, k, v, heads, transformer_options=extra, attn_precision=precision)

    return attend


class PatchObject:
    """Base of every object the patch stores in ``model_options`` (attention replacements,
    per-call wrappers): ComfyUI calls ``to`` and ``models`` on such objects when it moves
    or loads the model. They are shared between clones (never deep-copied) and hold no
    weights, so there is nothing to move and no model to load."""

    patch: Any

    def to(self, *args: Any, **kwargs: Any) -> PatchObject:
        """ComfyUI's ``model_patches_to``: nothing to move (keys/values are per run)."""
        return self

    def models(self) -> list:
        """No model for ComfyUI to load (see ``model_patch/run_state.py``)."""
        return []


class SelfAttentionPatch(PatchObject):
    """``attn1`` replacement: mixed (or mutual) attention for the identity rows."""

    def __init__(self, patch: Any, layer: LayerKey) -> None:
        self.patch, self.layer = patch, layer

    def __deepcopy__(self, memo: dict) -> SelfAttentionPatch:
        return self

    def __call__(self, q, k, v, extra_options):
        state = extra_options.get(STEP_KEY)
        attend = attend_with(extra_options)
        if state is None or not state.mixing:
            return attend(q, k, v)
        s = self.patch.settings
        return mixed_self_attention(q, k, v, state.layout.chunks, s.attention_mode, s.adain, attend)


class CrossAttentionPatch(PatchObject):
    """``attn2`` replacement: text attention (or the replacement it chains), plus the
    identity's image attention on identity rows, plus callbacks other packs stacked."""

    def __init__(self, patch: Any, layer: LayerKey, previous: Callable | None = None,
                 stacked: tuple[Stacked, ...] = ()) -> None:
        self.patch, self.layer, self.previous, self.stacked = patch, layer, previous, stacked
        self._kwargs = tuple(kwargs for _, kwargs in stacked)
        self._device_kwargs: dict[torch.device, tuple[dict, ...]] = {}

    def __deepcopy__(self, memo: dict) -> CrossAttentionPatch:
        # Older hosts deep-copy model_options on clone: give the clone its own stack.
        return CrossAttentionPatch(self.patch, self.layer, self.previous, self.stacked)

    def __call__(self, q, k, v, extra_options):
        attend = attend_with(extra_options)
        out = self.previous(q, k, v, extra_options) if self.previous is not None else attend(q, k, v)
        state = extra_options.get(STEP_KEY)
        if state is not None and state.identity_active:
            keys_values = state.run.keys_values(self.layer, q.device, q.dtype)
            s = self.patch.settings
            regions = state.run.region_weights(q.shape[1], extra_options, q.device, q.dtype)
            if regions is None:
                out = add_identity_attention(out, q, state.layout.chunks, keys_values, s.weight, s.merge, attend)
            else:
                out = add_regional_identity_attention(out, q, state.layout.chunks, keys_values, regions.spans,
                                                      regions.weights, s.merge, attend)
        if self.stacked:
            out = self._run_stacked(out, q, k, v, extra_options, state)
        return out if out.dtype == q.dtype else out.to(q.dtype)

    # ------------------------------------------------------------------ other packs' callbacks
    def _run_stacked(self, out, q, k, v, extra_options, state):
        sigma = state.sigma if state is not None else _sigma_of(extra_options)
        for (callback, _), kwargs in zip(self.stacked, self._kwargs_for(q.device)):
            if kwargs.get("sigma_end", -math.inf) <= sigma <= kwargs.get("sigma_start", math.inf):
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out

    def _kwargs_for(self, device: torch.device) -> tuple[dict, ...]:
        return self._device_kwargs.get(device, self._kwargs)

    def to(self, device: Any = None, *args: Any, **kwargs: Any) -> CrossAttentionPatch:
        """Give stacked callbacks their tensors on ``device`` (ComfyUI's multi-GPU clones call this)."""
        if not self.stacked or not isinstance(device, torch.device) or device.type == "cpu":
            return self
        if device not in self._device_kwargs:
            self._device_kwargs[device] = tuple(_kwargs_on(kw, device) for _, kw in self.stacked)
        return self

    def add(self, callback: Callable, **kwargs: Any) -> None:
        """The cubiq packs' stacking call; see the module docstring."""
        global _warned_shared_add
        fork = CrossAttentionPatch(self.patch, self.layer, self.previous, self.stacked + ((callback, kwargs),))
        if _replace_in_caller(self, fork, sys._getframe(1)):
            return
        if not _warned_shared_add:
            log.warning("Infinite-ID: a node stacked on the cross-attention of a patched MODEL in a way that could "
                        "not be isolated; its callback also applies to other uses of the same InfiniteIDApply output")
            _warned_shared_add = True
        self.stacked, self._kwargs = fork.stacked, fork._kwargs
        self._device_kwargs.clear()


def _sigma_of(extra_options: dict) -> float:
    sigmas = extra_options.get("sigmas")
    return float(sigmas.max()) if isinstance(sigmas, torch.Tensor) else math.inf


def _kwargs_on(kwargs: dict, device: torch.device) -> dict:
    moved = dict(kwargs)
    for name, value in kwargs.items():
        if isinstance(value, torch.Tensor):
            moved[name] = value.to(device)
        elif hasattr(value, "create_multigpu_clone"):
            value.create_multigpu_clone(device)
    return moved


def _attn2_tables(value: Any) -> list[dict]:
    """``patches_replace["attn2"]`` dicts reachable from a ModelPatcher or a transformer_options dict."""
    options = getattr(value, "model_options", None)
    if isinstance(options, dict):
        value = options.get("transformer_options")
    if not isinstance(value, dict):
        return []
    table = value.get("patches_replace", {}).get("attn2") if isinstance(value.get("patches_replace"), dict) else None
    return [table] if isinstance(table, dict) else []


def _replace_in_caller(old: CrossAttentionPatch, new: CrossAttentionPatch, frame: Any) -> bool:
    """Put ``new`` where ``old`` sits in the models and option dicts of the calling function.

    Only the immediate caller is searched: it is the function that patches the new model
    (``set_model_patch_replace(model, ...)`` in the cubiq packs); the model it started
    from lives further up and must keep ``old``.
    """
    replaced = False
    for value in list(frame.f_locals.values()):
        for table in _attn2_tables(value):
            for key, obj in list(table.items()):
                if obj is old:
                    table[key] = new
                    replaced = replaced or hasattr(value, "model_options")
    return replaced
