"""The per-call wrapper that lays out both streams' rows for each U-Net call.

On hosts with keyed wrappers it is an ``APPLY_MODEL`` wrapper (``ApplyModelWrapper``),
chained with other packs' wrappers; on older hosts it takes the single
``model_function_wrapper`` slot (``UnetWrapper``), chaining the one found there.

The Infinite-ID samplers run a latent batch of identity rows followed by text rows, all
from the same noise. ComfyUI batches conditions in chunks (cond, uncond, ...), each chunk
holding that whole batch, so every call is a sequence of chunks of identity rows then
text rows. The wrapper checks the call has that shape, works out the sigma once, and
hands the run's cached layout to the attention replacements through
``transformer_options``. After the mixing window nothing reads the text stream: only
the identity rows are computed and the text rows mirror them.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .replacements import STEP_KEY, PatchObject
from .run_state import RunState, StepState

RUN_KEY = "infinite_id_run"  # the RunState, set by the Infinite-ID samplers for a whole run

APPLY_KEY = "infinite_id"  # the key of the pack's keyed wrappers (OUTER_SAMPLE, APPLY_MODEL)

USE_THE_SAMPLER = (
    "This MODEL carries the Infinite-ID patch, which needs two denoising streams, and this ComfyUI has no keyed "
    "sampling wrappers (comfy.patcher_extension) to run them in a plain KSampler. Update ComfyUI (December 2024 or "
    "later) to sample it with any sampler, or sample it with 'InfiniteID Sampler' (a drop-in KSampler); "
    "a plain KSampler here would silently run only half of the method."
)

OUTSIDE_SAMPLING = (
    "This MODEL carries the Infinite-ID patch, and its U-Net was called outside a ComfyUI sampling (not through "
    "CFGGuider.sample, where Infinite-ID sets up its two streams). Sample it with a core sampler node, a guider, "
    "comfy.sample, or 'InfiniteID Sampler'; code that calls the model directly needs the unpatched MODEL."
)


def lay_out_call(call: Callable, x: torch.Tensor, t: torch.Tensor, c: dict, kinds: list,
                 missing_run: str) -> torch.Tensor:
    """Per call: one sigma read, one layout look-up; per row block work happens in attention.

    ``call(x, t, c)`` runs the model (or the next wrapper) on the rows given.
    """
    run: RunState | None = c.get("transformer_options", {}).get(RUN_KEY)
    if run is None:
        raise RuntimeError(missing_run)
    kinds = run.kinds(kinds, c["transformer_options"].get("uuids"))
    expected = len(kinds) * run.rows_per_chunk
    if x.shape[0] != expected:
        raise RuntimeError(
            f"Infinite-ID expected {len(kinds)} chunk(s) of {run.rows_per_chunk} rows (identity + text stream) but "
            f"the U-Net call has {x.shape[0]} rows. Another node changed the batch inside sampling; remove it "
            "or apply it before InfiniteIDApply.")
    sigma = float(t.max())
    if run.text_needed(sigma):
        state = run.step_state(sigma, kinds, text_computed=True)
        return call(x, t, _with_state(c, state))
    state = run.step_state(sigma, kinds, text_computed=False)
    rows = run.identity_row_index(tuple(kinds), x.device)
    sub_c = _with_state(_take_rows(c, rows, x.shape[0]), state)
    out_id = call(x[rows], t[rows], sub_c)
    return _mirror(out_id, run.layout(tuple(kinds), text_computed=True), run.identity_rows)


class ApplyModelWrapper(PatchObject):
    """Keyed ``APPLY_MODEL`` wrapper (hosts with ``comfy.patcher_extension``)."""

    def __init__(self, patch: Any) -> None:
        self.patch = patch

    def __deepcopy__(self, memo: dict) -> ApplyModelWrapper:
        return self

    def __call__(self, executor: Callable, x: torch.Tensor, t: torch.Tensor, c_concat: Any = None,
                 c_crossattn: Any = None, control: Any = None, transformer_options: dict | None = None,
                 **kwargs: Any) -> torch.Tensor:
        c = dict(kwargs, c_concat=c_concat, c_crossattn=c_crossattn, control=control,
                 transformer_options=transformer_options or {})
        kinds = c["transformer_options"].get("cond_or_uncond") or [0]

        def call(x_, t_, c_):
            rest = {k: v for k, v in c_.items()
                    if k not in ("c_concat", "c_crossattn", "control", "transformer_options")}
            return executor(x_, t_, c_["c_concat"], c_["c_crossattn"], c_["control"], c_["transformer_options"],
                            **rest)

        return lay_out_call(call, x, t, c, kinds, OUTSIDE_SAMPLING)


class UnetWrapper(PatchObject):
    """The ``model_function_wrapper`` of hosts without keyed wrappers (chains the one it replaced)."""

    def __init__(self, patch: Any, previous: Callable | None) -> None:
        self.patch, self.previous = patch, previous

    def __deepcopy__(self, memo: dict) -> UnetWrapper:
        return self

    def __call__(self, apply_model: Callable, args: dict) -> torch.Tensor:
        x, t, c, kinds = args["input"], args["timestep"], args["c"], args["cond_or_uncond"]
        return lay_out_call(lambda x_, t_, c_: self._call(apply_model, x_, t_, c_, kinds), x, t, c, kinds,
                            USE_THE_SAMPLER)

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
