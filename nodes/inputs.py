"""Check a node's inputs against its own ``INPUT_TYPES`` before its code runs.

Why one layer here: the executor hands a node whatever arrived, and neither host checks
it fully. Sockets carry any object another pack (or an API client) put under the type
name, and the 2024 tree passes a FLOAT or INT widget's text through unchanged; the node's
code would then fail with an ``AttributeError`` or ``TypeError`` traceback deep inside.
This checks each input's Python type (and that numbers are finite) and raises the
pack's user-facing error naming the node and the input. Checks of *values* (shapes,
ranges, tokens, pixels) stay with the code that knows them (``identity/``, ``adapter/``).

Use: ``@checked_inputs(NODE)`` on the node's ``FUNCTION`` method.
"""
from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch

from ..host.errors import InfiniteIDError


def _is_model(value: Any) -> bool:
    return hasattr(value, "model") and hasattr(value, "clone")


def _is_conditioning(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(
        isinstance(c, (list, tuple)) and len(c) >= 2 and isinstance(c[0], torch.Tensor) for c in value)


def _is_image(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return len(value) > 0 and all(isinstance(v, torch.Tensor) for v in value)
    return isinstance(value, torch.Tensor)


def _is_adapter(value: Any) -> bool:
    from ..adapter.model import Adapter

    return isinstance(value, Adapter)


def _is_identity(value: Any) -> bool:
    from ..identity.types import Identity

    return isinstance(value, Identity)


def _is_face_analysis(value: Any) -> bool:
    models = getattr(value, "models", None)
    return getattr(value, "det_model", None) is not None and isinstance(models, dict) and "recognition" in models


# socket type -> (test, what is wrong when it fails; the message adds the type received)
SOCKETS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "MODEL": (_is_model, "expected a MODEL (from a checkpoint or model loader)"),
    "CONDITIONING": (_is_conditioning, "expected a CONDITIONING (from CLIP Text Encode)"),
    "LATENT": (lambda v: isinstance(v, dict) and isinstance(v.get("samples"), torch.Tensor),
               "expected a LATENT (a dict with a 'samples' tensor, e.g. from Empty Latent Image)"),
    "IMAGE": (_is_image, "expected an IMAGE tensor [batch, height, width, channels]"),
    "MASK": (lambda v: isinstance(v, torch.Tensor), "expected a MASK tensor [batch, height, width]"),
    "INFINITEID_ADAPTER": (_is_adapter, "expected an INFINITEID_ADAPTER (from 'InfiniteID Adapter Loader')"),
    "INFINITEID_IDENTITY": (_is_identity, "expected an INFINITEID_IDENTITY (from InfiniteID Encode, Load Identity, "
                                          "Mix or Interpolate)"),
    "FACEANALYSIS": (_is_face_analysis, "this object has no insightface detector and recognition (ArcFace) model; "
                                        "connect 'InfiniteID Face Analysis Loader' (or another pack's FACEANALYSIS "
                                        "loader)"),
    "CLIP_VISION": (lambda v: hasattr(v, "encode_image"), "expected a CLIP_VISION model (core 'Load CLIP Vision')"),
}


def _widget_problem(kind: str, value: Any, options: dict) -> str | None:
    if kind in ("INT", "FLOAT"):
        if kind == "INT" and (isinstance(value, bool) or not isinstance(value, int)):
            return "expected a whole number"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "expected a number"
        if not math.isfinite(value):
            return "must be a finite number (not NaN or infinity)"
        # The hosts do not all enforce the declared range (the 2024 tree lets 2**64 through).
        low, high = options.get("min"), options.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            return f"must lie from {low} to {high}"
    elif kind == "BOOLEAN":
        if not isinstance(value, bool):
            return "expected true or false"
    elif kind in ("STRING", "COMBO"):
        if not isinstance(value, str):
            return "expected text"
    return None


def input_problem(spec: tuple, value: Any) -> str | None:
    """Why ``value`` does not fit the ``INPUT_TYPES`` entry ``spec``, or ``None``."""
    kind = spec[0]
    if isinstance(kind, (list, tuple)):
        kind = "COMBO"
    kind = str.__str__(kind) if isinstance(kind, str) else str(kind)
    if kind in SOCKETS:
        test, problem = SOCKETS[kind]
        return None if test(value) else f"{problem}, got {type(value).__name__}"
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    problem = _widget_problem(kind, value, options)
    return f"{problem}, got {value!r:.60}" if problem else None


def check_inputs(node: str, node_class: Any, values: dict[str, Any]) -> None:
    types = node_class.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, spec in (types.get(section) or {}).items():
            if name not in values or (section == "optional" and values[name] is None):
                continue
            problem = input_problem(tuple(spec), values[name])
            if problem:
                raise InfiniteIDError(f"{node}: {name}: {problem}")


def checked_inputs(node: str) -> Callable:
    """Decorator for a node's ``FUNCTION``: run :func:`check_inputs` first."""

    def wrap(func: Callable) -> Callable:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def run(self, *args, **kwargs):
            bound = signature.bind(self, *args, **kwargs)
            values = {k: v for k, v in bound.arguments.items() if k != "self"}
            values.update(values.pop(next((p.name for p in signature.parameters.values()
                                           if p.kind is p.VAR_KEYWORD), ""), {}) or {})
            check_inputs(node, type(self), values)
            return func(self, *args, **kwargs)

        return run

    return wrap
