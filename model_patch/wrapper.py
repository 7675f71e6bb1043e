"""The ``model_function_wrapper`` that lays out both streams' rows for each U-Net call.

The Infinite-ID samplers run a latent batch of identity rows followed by text rows, all
from the same noise. ComfyUI batches conditions in chunks (cond, uncond, ...), each chunk
holding that whole batch, so every call is a sequence of chunks of identity rows then
text rows. The wrapper checks the call has that shape, works out the sigma once, and
hands the run's cached layout to the attention replacements through
``transformer_options``. After the mixing window nothing reads the text stream: only
the identity rows are computed and the text rows mirror them.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .replacements import STEP_KEY, _Replacement
from .run import RunState, StepState

RUN_KEY = "infinite_id_run"  # the RunState, set by the Infinite-ID samplers for a whole run

USE_THE_SAMPLER = (
    "This MODEL carries the Infinite-ID patch, which needs two denoising streams. Sample it with "
    "'InfiniteID Sampler' (a drop-in KSampler) or 'InfiniteID Guider' with SamplerCustomAdvanced; "
    "a plain KSampler would silently run only half of the method."
)


class UnetWrapper(_Replacement):
    """Per call: one sigma read, one layout look-up; per row block work happens in attention."""

    def __init__(self, patch: Any, previous: Callable | None) -> None:
        self.patch, self.previous = patch, previous

    def __deepcopy__(self, memo: dict) -> "UnetWrapper":
        return self

    def __call__(self, apply_model: Callable, args: dict) -> torch.Tensor:
        x, t, c, kinds = args["input"], args["timestep"], args["c"], args["cond_or_uncond"]
        run: RunState | None = c.get("transformer_options", {}).get(RUN_KEY)
        if run is None:
            raise RuntimeError(USE_THE_SAMPLER)
        expected = len(kinds) * run.rows_per_chunk
        if x.shape[0] != expected:
            raise RuntimeError(
                f"Infinite-ID expected {len(kinds)} chunk(s) of {run.rows_per_chunk} rows (identity + text stream) but "
                f"the U-Net call has {x.shape[0]} rows. Another node changed the batch inside sampling; remove it "
                "or apply it before InfiniteIDApply.")
        sigma = float(t.max())
        if run.text_needed(sigma):
            state = run.step(sigma, kinds, text_computed=True)
            return self._call(apply_model, x, t, _with_state(c, state), kinds)
        state = run.step(sigma, kinds, text_computed=False)
        rows = run.identity_row_index(tuple(kinds), x.device)
        sub_c = _with_state(_take_rows(c, rows, x.shape[0]), state)
        out_id = self._call(apply_model, x[rows], t[rows], sub_c, kinds)
        return _mirror(out_id, run.layout(tuple(kinds), text_computed=True), run.identity_rows)

    def _call(self, apply_model, x, t, c, kinds):
        if self.previous is not None:
            return self.previous(apply_model, {"input": x, "timestep": t, "c": c, "cond_or_uncond": kinds})
        return apply_model(x, t, **c)


def _with_state(c: dict, state: StepState) -> dict:
    c = dict(c)
    c["transformer_options"] = {**c.get("transformer_options", {}), STEP_KEY: state}
    return c


def _mirror(out_id: torch.Tensor, full: Any, n: int) -> torch.Tensor:
    """The full call's output from the identity rows' output: text rows repeat them."""
    out = out_id.new_empty((full.rows,) + tuple(out_id.shape[1:]))
    for c, chunk in enumerate(full.chunks):
        block = out_id[c * n:(c + 1) * n]
        out[chunk.identity] = block
        if chunk.text is not None:
            out[chunk.text] = block[:chunk.text.stop - chunk.text.start]
    return out


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
