"""What is fixed for one sampling run, worked out once when sampling starts.

The identity never changes during a run, so its image keys and values are projected
once, for every patched layer and both guidance sides, from the float32 tokens, and
cast once to the U-Net's compute dtype on the device sampling runs on (``RunState``).
Sigma windows and each call pattern's row layout are computed once too. During sampling
the attention replacements only look these up: no projection, no host-to-device copy of
tokens, no index construction. A call on another device (ComfyUI's multi-GPU path runs
condition chunks on several GPUs) gets its own copy of the keys and values, made once
per device.

Why the adapter's projection weights need no ``ModelPatcher``: they are read once per
run, one layer at a time, on the load device, and only the small per-run keys/values stay
there (for SDXL in fp16 about 2.7 MB per identity of 4 tokens, 11 MB of 16). ComfyUI's memory manager (dynamic VRAM
included) therefore never has to place them, and no non-dynamic model is added to its
load set.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ..attention.rows import ChunkRows
from ..unet.layers import LayerKey
from .region_grids import RegionTable, RegionWeights

log = logging.getLogger(__name__)

KeysValues = tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # [kind] -> (k, v)


@dataclass(frozen=True)
class CallLayout:
    """Row layout of one U-Net call pattern (which chunks, text stream computed or not)."""

    chunks: tuple[ChunkRows, ...]
    rows: int


@dataclass
class StepState:
    """What the attention replacements need to know about the current U-Net call."""

    run: RunState
    layout: CallLayout
    sigma: float
    identity_active: bool
    mixing: bool


def project_identity(adapter_kv: Any, cond: torch.Tensor, uncond: torch.Tensor, layers: Iterable[LayerKey],
                     device: torch.device, dtype: torch.dtype) -> dict[LayerKey, KeysValues]:
    """Image keys/values of every identity row for ``layers``, cond and uncond.

    Projected in float32 (float64 when tokens or weights are float64) on ``device`` and
    rounded once to ``dtype``: an fp16 adapter under a bf16 U-Net then costs one
    rounding instead of two.
    """
    precision = torch.float32
    weight_dtype = adapter_kv.to_k[0].weight.dtype
    if torch.float64 in (cond.dtype, weight_dtype):
        precision = torch.float64
    tokens = torch.stack([cond, uncond]).to(device=device, dtype=precision)  # [2, m, tokens, dim]
    table: dict[LayerKey, KeysValues] = {}
    with torch.no_grad():
        for layer in layers:
            i = adapter_kv.layer_index[layer]
            w_k = adapter_kv.to_k[i].weight.to(device=device, dtype=precision)
            w_v = adapter_kv.to_v[i].weight.to(device=device, dtype=precision)
            k = torch.matmul(tokens, w_k.t()).to(dtype)
            v = torch.matmul(tokens, w_v.t()).to(dtype)
            table[layer] = ((k[0], v[0]), (k[1], v[1]))
    return table


class RunState:
    """Everything the patch needs for one run of the Infinite-ID samplers.

    ``identity_rows``: latent rows of the identity stream (``n``); ``text_rows``: rows of
    the text stream, ``n`` (one per identity row) or 1 (shared by all identity rows).
    ``uuid_kinds``: condition uuid -> 0 (positive: the identity's cond tokens) or 1
    (a negative-side prompt: uncond tokens), for guiders whose chunk order is not
    (positive, negative), such as core DualCFGGuider's (negative, middle, positive).
    ``constant_batch``: keep computing the text rows after the mixing window, so every
    U-Net call has the same batch (other packs' per-call wrappers, such as core
    EasyCache's step cache, keep state per row and would break on a batch that shrinks).
    """

    def __init__(self, patch: Any, model_sampling: Any, identity_rows: int, text_rows: int,
                 device: torch.device, dtype: torch.dtype, latent_size: tuple[int, int] | None = None,
                 constant_batch: bool = False, uuid_kinds: dict | None = None) -> None:
        if text_rows not in (identity_rows, 1):
            raise ValueError(f"text_rows must be {identity_rows} or 1, not {text_rows}")
        self.patch = patch
        self.identity_rows = identity_rows
        self.text_rows = text_rows
        s = patch.settings

        def window(start: float, end: float) -> tuple[float, float]:
            return float(model_sampling.percent_to_sigma(start)), float(model_sampling.percent_to_sigma(end))

        self.identity_hi, self.identity_lo = window(s.start_percent, s.end_percent)
        self.mix_hi, self.mix_lo = window(s.mix_start_percent, s.mix_end_percent)
        self.text_stream = s.attention_mode != "off"
        self.constant_batch = constant_batch
        self.uuid_kinds = uuid_kinds or {}
        self.identity_on = s.weight != 0.0
        self._tables: dict[tuple[torch.device, torch.dtype], dict[LayerKey, KeysValues]] = {}
        self._primary = (torch.device(device), dtype)
        if self.identity_on:
            self._tables[self._primary] = project_identity(
                patch.adapter.kv, patch.identity.cond, patch.identity.uncond, patch.layers, self._primary[0], dtype)
        self.latent_size = latent_size
        self.regions: RegionTable | None = None
        if self.identity_on and patch.identity.regions:
            self.regions = RegionTable(patch.identity.regions, s.weight, identity_rows, latent_size,
                                       self._primary[0], dtype)
        self._layouts: dict[tuple[tuple[int, ...], bool], CallLayout] = {}
        self._identity_row_index: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}

    def __deepcopy__(self, memo: dict) -> RunState:
        return self  # model_options are deep-copied on older hosts: one run, one state

    # ------------------------------------------------------------------ per call (look-ups only)
    @property
    def rows_per_chunk(self) -> int:
        """Rows of one chunk in the sampler's batch (text rows are there even when mirrored)."""
        return self.identity_rows + self.text_rows

    def kinds(self, cond_or_uncond: list, uuids: list | None) -> list:
        """Each chunk's side (0 positive, 1 negative): by its condition's uuid where known."""
        if not self.uuid_kinds or not uuids or len(uuids) != len(cond_or_uncond):
            return cond_or_uncond
        return [self.uuid_kinds.get(u, min(int(k), 1)) for u, k in zip(uuids, cond_or_uncond)]

    def text_needed(self, sigma: float) -> bool:
        """The text stream is computed from the first step until the mixing window ends."""
        return self.text_stream and (self.constant_batch or sigma >= self.mix_lo)

    def step_state(self, sigma: float, cond_or_uncond: list[int], text_computed: bool) -> StepState:
        """The state of one U-Net call at ``sigma`` (built per call; nothing in the run changes)."""
        layout = self.layout(tuple(cond_or_uncond), text_computed)
        return StepState(
            run=self, layout=layout, sigma=sigma,
            identity_active=self.identity_on and self.identity_lo <= sigma <= self.identity_hi,
            mixing=text_computed and self.mix_lo <= sigma <= self.mix_hi)

    def layout(self, kinds: tuple[int, ...], text_computed: bool) -> CallLayout:
        found = self._layouts.get((kinds, text_computed))
        if found is None:
            n, t = self.identity_rows, (self.text_rows if text_computed else 0)
            stride = n + t
            chunks = tuple(ChunkRows(kind, slice(c * stride, c * stride + n),
                                     slice(c * stride + n, c * stride + n + t) if t else None)
                           for c, kind in enumerate(kinds))
            found = self._layouts[(kinds, text_computed)] = CallLayout(chunks=chunks, rows=stride * len(kinds))
        return found

    def identity_row_index(self, kinds: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Rows of the identity stream in a full call (used when the text stream is skipped)."""
        found = self._identity_row_index.get((kinds, device))
        if found is None:
            full = self.layout(kinds, text_computed=True)
            found = torch.cat([torch.arange(c.identity.start, c.identity.stop) for c in full.chunks]).to(device)
            self._identity_row_index[(kinds, device)] = found
        return found

    def region_weights(self, tokens: int, extra_options: dict, device: torch.device,
                       dtype: torch.dtype) -> RegionWeights | None:
        """The people's per-token strengths for a layer of ``tokens`` tokens (``None``: no regions)."""
        if self.regions is None:
            return None
        shape = extra_options.get("original_shape")
        size = (int(shape[-2]), int(shape[-1])) if shape else self.latent_size
        if size is None:
            raise RuntimeError("Infinite-ID regions: the latent size of this U-Net call is unknown")
        return self.regions.lookup(tokens, size, device, dtype)

    def keys_values(self, layer: LayerKey, device: torch.device, dtype: torch.dtype) -> KeysValues:
        """The identity's image keys/values for ``layer`` where the call runs."""
        table = self._tables.get((device, dtype))
        if table is None:
            table = self._copy_for(device, dtype)
        return table[layer]

    def _copy_for(self, device: torch.device, dtype: torch.dtype) -> dict[LayerKey, KeysValues]:
        """Once per run and device/dtype other than the load device's (multi-GPU, an unexpected dtype)."""
        log.debug("Infinite-ID: identity keys/values for %s %s", device, dtype)
        primary = self._tables[self._primary]
        if dtype == self._primary[1]:
            table = {layer: tuple((k.to(device), v.to(device)) for k, v in kv) for layer, kv in primary.items()}
        else:  # round from float32 again rather than re-round a rounded value
            p = self.patch
            table = project_identity(p.adapter.kv, p.identity.cond, p.identity.uncond, p.layers, device, dtype)
        self._tables[(device, dtype)] = table
        return table
