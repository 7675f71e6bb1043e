"""The dual-stream model patch: mixed attention, cross-attention merge, AdaIN.

How the two streams share one U-Net call: the Infinite-ID samplers run a latent batch
of ``2n`` rows, the identity stream's ``n`` rows followed by the text stream's ``n``
rows, from the same noise. ComfyUI batches conditions in chunks (cond, uncond, ...),
each chunk holding all ``2n`` rows, so in every U-Net call row ``j`` of a chunk is
paired with row ``n + j`` of the same chunk: identity-cond with text-cond,
identity-uncond with text-uncond. The U-Net wrapper works out that layout once per call
and hands it to the 140 attention replacements through ``transformer_options``.

Patch objects are shared, never deep-copied: ``ModelPatcher.clone()`` deep-copies
patches on older hosts, which would duplicate the adapter weights per clone.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..host import compat
from ..adapter.model import Adapter
from ..identity.types import Identity
from ..unet.layers import SDXL_BLOCKS, SDXL_LAYERS, BlockKey, LayerKey
from ..unet.walk import cross_attention_widths
from ..attention.functional import (ADAIN_MODES, ATTENTION_MODES, identity_self_attention_inputs,
                         merge_cross_attention)

log = logging.getLogger(__name__)

RUN_KEY = "infinite_id_run"    # set by the Infinite-ID samplers for a whole run
STEP_KEY = "infinite_id_step"  # set by the wrapper for one U-Net call

USE_THE_SAMPLER = (
    "This MODEL carries the Infinite-ID patch, which needs two denoising streams. Sample it with "
    "'InfiniteID Sampler' (a drop-in KSampler) or 'InfiniteID Guider' with SamplerCustomAdvanced; "
    "a plain KSampler would silently run only half of the method."
)
# Mixed attention doubles the keys of half the rows; a little extra headroom keeps
# ComfyUI's batch splitting honest.
MEMORY_FACTOR = 1.25


@dataclass(frozen=True)
class PatchSettings:
    """The switches of ``InfiniteIDApply`` (DESIGN.md section 5)."""

    weight: float = 1.0
    attention_mode: str = "mixed"
    merge: bool = True
    adain: str = "off"
    start_percent: float = 0.0
    end_percent: float = 1.0
    mix_start_percent: float = 0.0
    mix_end_percent: float = 1.0
    blocks: frozenset = field(default_factory=lambda: frozenset(SDXL_BLOCKS))

    def __post_init__(self) -> None:
        if self.attention_mode not in ATTENTION_MODES:
            raise ValueError(f"attention_mode must be one of {ATTENTION_MODES}, not '{self.attention_mode}'")
        if self.adain not in ADAIN_MODES:
            raise ValueError(f"adain must be one of {ADAIN_MODES}, not '{self.adain}'")
        for lo, hi, what in ((self.start_percent, self.end_percent, "start_percent/end_percent"),
                             (self.mix_start_percent, self.mix_end_percent, "mix_start_percent/mix_end_percent")):
            if not (0.0 <= lo <= hi <= 1.0):
                raise ValueError(f"{what} must satisfy 0 <= start <= end <= 1; got {lo} and {hi}")
        if not torch.isfinite(torch.tensor(self.weight)):
            raise ValueError("weight must be a finite number")


@dataclass
class RunInfo:
    """What the sampler tells the patch about a run."""

    rows_per_stream: int
    model_sampling: Any


@dataclass
class StepState:
    """Row layout and switches for one U-Net call."""

    id_rows: torch.Tensor
    text_rows: torch.Tensor | None
    tokens: torch.Tensor          # identity tokens for each id row, in id_rows order
    identity_active: bool
    mixing: bool


class DualStreamPatch:
    """State shared by the wrapper and the 140 attention replacements of one Apply."""

    def __init__(self, adapter: Adapter, identity: Identity, settings: PatchSettings) -> None:
        if identity.cond.shape[-1] != adapter.token_dim:
            raise ValueError(
                f"identity tokens are {identity.cond.shape[-1]}-d but the adapter expects {adapter.token_dim}-d: "
                "encode the identity with the same adapter you apply")
        self.adapter = adapter
        self.identity = identity
        self.settings = settings

    # ------------------------------------------------------------------ per call
    def sigma_window(self, model_sampling: Any, start: float, end: float) -> tuple[float, float]:
        return float(model_sampling.percent_to_sigma(start)), float(model_sampling.percent_to_sigma(end))

    def step_state(self, x: torch.Tensor, sigma: float, cond_or_uncond: list[int], run: RunInfo,
                   text_computed: bool) -> StepState:
        s = self.settings
        n = run.rows_per_stream
        hi, lo = self.sigma_window(run.model_sampling, s.start_percent, s.end_percent)
        identity_active = lo <= sigma <= hi and s.weight != 0.0
        mix_hi, mix_lo = self.sigma_window(run.model_sampling, s.mix_start_percent, s.mix_end_percent)
        mixing = text_computed and s.attention_mode != "off" and mix_lo <= sigma <= mix_hi
        stride = 2 * n if text_computed else n
        ids, texts, tokens = [], [], []
        for chunk, kind in enumerate(cond_or_uncond):
            base = chunk * stride
            ids.append(torch.arange(base, base + n))
            if text_computed:
                texts.append(torch.arange(base + n, base + 2 * n))
            source = self.identity.uncond if kind == 1 else self.identity.cond
            tokens.append(source.expand(n, -1, -1) if source.shape[0] == 1 else source)
        device = x.device
        return StepState(
            id_rows=torch.cat(ids).to(device),
            text_rows=torch.cat(texts).to(device) if text_computed else None,
            tokens=torch.cat(tokens).to(device=device),
            identity_active=identity_active,
            mixing=mixing,
        )

    def text_stream_needed(self, sigma: float, run: RunInfo) -> bool:
        """The text stream is computed from the first step until the mixing window ends."""
        s = self.settings
        if s.attention_mode == "off":
            return False
        _, mix_lo = self.sigma_window(run.model_sampling, s.mix_start_percent, s.mix_end_percent)
        return sigma >= mix_lo

    # ------------------------------------------------------------------ attention
    def self_attention(self, q, k, v, extra: dict) -> torch.Tensor:
        state: StepState | None = extra.get(STEP_KEY)
        heads = extra["n_heads"]
        if state is None or not state.mixing:
            return compat.optimized_attention(q, k, v, heads, transformer_options=extra)
        ti, ii = state.text_rows, state.id_rows
        k_t, v_t = k[ti], v[ti]
        text_out = compat.optimized_attention(q[ti], k_t, v_t, heads, transformer_options=extra)
        keys, values = identity_self_attention_inputs(
            k[ii], v[ii], k_t, v_t, self.settings.attention_mode, self.settings.adain)
        id_out = compat.optimized_attention(q[ii], keys, values, heads, transformer_options=extra)
        out = text_out.new_empty((q.shape[0],) + tuple(text_out.shape[1:]))
        out[ti] = text_out
        out[ii] = id_out.to(out.dtype)
        return out

    def cross_attention(self, layer: LayerKey, previous: Callable | None, q, k, v, extra: dict) -> torch.Tensor:
        state: StepState | None = extra.get(STEP_KEY)
        heads = extra["n_heads"]
        if previous is not None:
            text_out = previous(q, k, v, extra)
        else:
            text_out = compat.optimized_attention(q, k, v, heads, transformer_options=extra)
        if state is None or not state.identity_active:
            return text_out
        ii = state.id_rows
        # In the model's compute dtype (the latent's dtype can differ: newer hosts keep it float32).
        k_img, v_img = self.adapter.kv.project(layer, state.tokens.to(q.dtype))
        image_out = compat.optimized_attention(q[ii], k_img, v_img, heads,
                                               transformer_options=extra)
        out = text_out.clone()
        out[ii] = merge_cross_attention(text_out[ii], image_out, self.settings.weight, self.settings.merge)
        return out

    # ------------------------------------------------------------------ U-Net wrapper
    def unet_call(self, apply_model: Callable, args: dict, previous: Callable | None) -> torch.Tensor:
        x, t, c, cond_or_uncond = args["input"], args["timestep"], args["c"], args["cond_or_uncond"]
        options = c.get("transformer_options", {})
        run: RunInfo | None = options.get(RUN_KEY)
        if run is None:
            raise RuntimeError(USE_THE_SAMPLER)
        n, chunks = run.rows_per_stream, len(cond_or_uncond)
        if x.shape[0] != chunks * 2 * n:
            raise RuntimeError(
                f"Infinite-ID expected {chunks} chunk(s) of {2 * n} rows (identity + text stream) but the "
                f"U-Net call has {x.shape[0]} rows. Another node changed the batch inside sampling; "
                "remove it or apply it before InfiniteIDApply.")
        sigma = float(t.max())
        if self.text_stream_needed(sigma, run):
            state = self.step_state(x, sigma, cond_or_uncond, run, text_computed=True)
            return self._call(apply_model, previous, x, t, _with_state(c, state), cond_or_uncond)
        # After the mixing window nothing reads the text stream: compute the identity rows
        # only and let the text rows mirror them.
        rows = torch.cat([torch.arange(k * 2 * n, k * 2 * n + n) for k in range(chunks)]).to(x.device)
        state = self.step_state(x, sigma, cond_or_uncond, run, text_computed=False)
        sub_c = _with_state(_take_rows(c, rows, x.shape[0]), state)
        out_id = self._call(apply_model, previous, x[rows], t[rows], sub_c, cond_or_uncond)
        out = out_id.new_empty((x.shape[0],) + tuple(out_id.shape[1:]))
        out[rows] = out_id
        out[rows + n] = out_id
        return out

    @staticmethod
    def _call(apply_model, previous, x, t, c, cond_or_uncond):
        if previous is not None:
            return previous(apply_model, {"input": x, "timestep": t, "c": c, "cond_or_uncond": cond_or_uncond})
        return apply_model(x, t, **c)

    # ------------------------------------------------------------------ device handling
    def to(self, device_or_dtype: Any) -> None:
        """Follow ComfyUI's ``model_patches_to`` on hosts that do not load patch models.

        ComfyUI calls this once per stored patch object (141 of them), so moving is
        skipped when the weights are already where they should be.
        """
        if compat.host_loads_patch_models():
            return
        weight = self.adapter.kv.to_k[0].weight
        if isinstance(device_or_dtype, torch.dtype):
            if weight.dtype == device_or_dtype:
                return
        elif weight.device == torch.device(device_or_dtype):
            return
        self.adapter.kv.to(device_or_dtype)


def _with_state(c: dict, state: StepState) -> dict:
    c = dict(c)
    c["transformer_options"] = {**c.get("transformer_options", {}), STEP_KEY: state}
    return c


def _take_rows(value: Any, rows: torch.Tensor, batch: int) -> Any:
    """Select ``rows`` of every per-row tensor in the conditioning (``y``, ``c_concat``,
    ControlNet residuals, ...); other values pass through unchanged."""
    if isinstance(value, torch.Tensor):
        return value[rows.to(value.device)] if value.dim() > 0 and value.shape[0] == batch else value
    if isinstance(value, dict):
        return {k: (v if k == "transformer_options" else _take_rows(v, rows, batch)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_take_rows(v, rows, batch) for v in value)
    return value


class _SharedCallable:
    """Base of the objects stored in ``model_options``: shared between clones, movable."""

    patch: DualStreamPatch

    def __deepcopy__(self, memo):
        return self  # never duplicate adapter weights per clone (older hosts deep-copy)

    def to(self, device_or_dtype):
        self.patch.to(device_or_dtype)
        return self

    def models(self):
        """Newer hosts load these ``ModelPatcher``s together with the U-Net."""
        patcher = self.patch.adapter._patcher
        return [patcher] if patcher is not None else []


class LayerPatch(_SharedCallable):
    """``attn1``/``attn2`` replacement for one transformer layer."""

    def __init__(self, patch: DualStreamPatch, layer: LayerKey, kind: str, previous: Callable | None = None):
        self.patch, self.layer, self.kind, self.previous = patch, layer, kind, previous

    def __call__(self, q, k, v, extra_options):
        if self.kind == "attn1":
            return self.patch.self_attention(q, k, v, extra_options)
        return self.patch.cross_attention(self.layer, self.previous, q, k, v, extra_options)


class UnetWrapper(_SharedCallable):
    """``model_function_wrapper`` that lays out the two streams' rows for each call."""

    def __init__(self, patch: DualStreamPatch, previous: Callable | None):
        self.patch, self.previous = patch, previous

    def __call__(self, apply_model, args):
        return self.patch.unet_call(apply_model, args, self.previous)


def find_patch(model) -> DualStreamPatch | None:
    """The Infinite-ID patch a ``ModelPatcher`` carries, if any."""
    wrapper = model.model_options.get("model_function_wrapper")
    while wrapper is not None:
        if isinstance(wrapper, UnetWrapper):
            return wrapper.patch
        wrapper = getattr(wrapper, "previous", None)
    return None


def apply_patch(model, adapter: Adapter, identity: Identity, settings: PatchSettings):
    """Return a clone of ``model`` (a ``ModelPatcher``) with the dual-stream patch installed."""
    if find_patch(model) is not None:
        raise ValueError("this MODEL already carries an Infinite-ID patch. To use several people, combine "
                         "their identities with 'InfiniteID Mix' and apply once.")
    widths = cross_attention_widths(model.model.diffusion_model)
    missing = [key for key in SDXL_LAYERS if key not in widths]
    if missing:
        raise ValueError(f"this MODEL is not SDXL-shaped: {len(missing)} of SDXL's 70 cross-attention layers are "
                         f"missing (first: {missing[0]}). Infinite-ID adapters are for SDXL models.")
    wrong = [key for i, key in enumerate(SDXL_LAYERS) if widths[key][0] != adapter.kv.to_k[i].out_features]
    if wrong:
        key = wrong[0]
        raise ValueError(f"adapter and MODEL do not match: layer {key} is {widths[key][0]} wide in the MODEL but "
                         f"{adapter.kv.to_k[SDXL_LAYERS.index(key)].out_features} in the adapter '{adapter.name}'.")
    patched = model.clone()
    options = patched.model_options.setdefault("transformer_options", {})
    existing = options.get("patches_replace", {})
    clash = [key for key in SDXL_LAYERS if key[:2] in settings.blocks and key in existing.get("attn1", {})]
    if clash:
        raise ValueError(f"another node already replaces self-attention on {len(clash)} layers (first: {clash[0]}); "
                         "Infinite-ID's mixed attention cannot share them. Apply that node after sampling with a "
                         "separate model, or remove it.")
    patch = DualStreamPatch(adapter, identity, settings)
    adapter.model_patcher(model.load_device, model.offload_device)
    previous_attn2 = existing.get("attn2", {})
    for key in SDXL_LAYERS:
        if key[:2] not in settings.blocks:
            continue
        patched.set_model_attn1_replace(LayerPatch(patch, key, "attn1"), *key)
        patched.set_model_attn2_replace(LayerPatch(patch, key, "attn2", previous_attn2.get(key)), *key)
    patched.set_model_unet_function_wrapper(UnetWrapper(patch, patched.model_options.get("model_function_wrapper")))
    compat.scale_memory_estimate(patched, MEMORY_FACTOR)
    return patched
