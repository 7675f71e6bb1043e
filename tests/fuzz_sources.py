"""Test-only nodes that put arbitrary Python values on a typed socket, and a sink for any type.

Why: bad *values* of socket types (a NaN image, a uint8 image, a string where a MODEL
belongs, an identity of 1e30) cannot be written into an API prompt; a source node
returns a value registered under a key, so it travels through the host's real
executor exactly as another node's output would. Used by the robustness and fuzz tests.
"""
from __future__ import annotations

import itertools
from typing import Any

SOCKET_TYPES = ("MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "MASK", "INT", "INFINITEID_IDENTITY",
                "INFINITEID_ADAPTER", "FACEANALYSIS", "CLIP_VISION", "GUIDER", "FLOAT", "STRING")
SINK = "InfiniteIDTestSink"
_values: dict[str, Any] = {}
_counter = itertools.count()
received: dict[str, dict[str, Any]] = {}


def source_type(kind: str) -> str:
    return f"InfiniteIDTestSource_{kind}"


def _make_source(kind: str) -> type:
    def give(self, key: str):
        return (_values[key],)

    return type(source_type(kind), (), {
        "CATEGORY": "InfiniteID/testing", "RETURN_TYPES": (kind,), "FUNCTION": "give", "give": give,
        "INPUT_TYPES": classmethod(lambda cls: {"required": {"key": ("STRING", {"default": ""})}}),
    })


class InfiniteIDTestSink:
    """Output node taking any socket type; stores what arrives under ``label``."""

    CATEGORY = "InfiniteID/testing"
    RETURN_TYPES = ()
    FUNCTION = "take"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"label": ("STRING", {"default": "out"})},
                "optional": {kind.lower(): (kind,) for kind in SOCKET_TYPES}}

    def take(self, label: str, **values):
        received[label] = values
        return {}


def register() -> None:
    import nodes

    for kind in SOCKET_TYPES:
        nodes.NODE_CLASS_MAPPINGS.setdefault(source_type(kind), _make_source(kind))
    nodes.NODE_CLASS_MAPPINGS.setdefault(SINK, InfiniteIDTestSink)


def source(kind: str, value: Any) -> dict:
    """An API node entry whose single output is ``value`` (as socket type ``kind``)."""
    register()
    key = f"v{next(_counter)}"
    _values[key] = value
    return {"class_type": source_type(kind), "inputs": {"key": key}}


def sink(label: str, **links: Any) -> dict:
    """An API node entry receiving ``links`` (input name = socket type in lower case)."""
    register()
    return {"class_type": SINK, "inputs": {"label": label, **links}}
