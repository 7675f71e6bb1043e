"""A tiny CLIP vision encoder: a real ``comfy.clip_vision.ClipVisionModel`` with a small ViT.

Why: the Infinite-ID encoder reads CLIP vision features of the reference face through
the object core ``CLIPVisionLoader`` returns. Tests and ``--demo`` need that exact class,
so ComfyUI's own preprocessing (resize, centre crop, normalisation), model management
and ``encode_image`` output fields are the ones exercised, on CPU and without the 2.5 GB
CLIP-ViT-H file. The config is the host's ``clip_vision_config_h.json`` with only the
sizes replaced: 224 px images in 32 px patches (7 x 7 = 49 patches + 1 class token = 50
tokens), hidden 32, 4 layers, projection 32. Weights come from a seeded generator,
because ComfyUI's ops leave them uninitialised.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import TYPE_CHECKING, Any

from ..host.compat import eager_weights
from .tiny_sdxl import init_weights_

if TYPE_CHECKING:  # pragma: no cover
    import comfy.clip_vision

log = logging.getLogger(__name__)

_TINY_VISION = {
    "image_size": 224,
    "patch_size": 32,
    "hidden_size": 32,
    "intermediate_size": 128,
    "num_attention_heads": 2,
    "num_hidden_layers": 4,
    "projection_dim": 32,
}


def tiny_clip_vision_config() -> dict[str, Any]:
    """The host's ViT-H config with tiny sizes (needs the host on sys.path)."""
    import comfy.clip_vision

    comfy_dir = os.path.dirname(os.path.realpath(comfy.clip_vision.__file__))
    with open(os.path.join(comfy_dir, "clip_vision_config_h.json")) as f:
        config = json.load(f)
    config.update(_TINY_VISION)
    return config


def tiny_clip_vision_tokens(config: dict[str, Any]) -> int:
    """Sequence length of the hidden states: patches plus the class token."""
    return (config["image_size"] // config["patch_size"]) ** 2 + 1


def build_tiny_clip_vision(seed: int = 0) -> comfy.clip_vision.ClipVisionModel:
    """Return a real ``comfy.clip_vision.ClipVisionModel`` with a tiny, seeded ViT."""
    import comfy.clip_vision

    config = tiny_clip_vision_config()
    with tempfile.TemporaryDirectory(prefix="tiny_clip_vision_") as tmp:
        # A path, not a dict: the 2024 ClipVisionModel only opens a file (current takes both).
        path = os.path.join(tmp, "clip_vision_config_tiny.json")
        with open(path, "w") as f:
            json.dump(config, f)
        with eager_weights():
            clip_vision = comfy.clip_vision.ClipVisionModel(path)
    init_weights_(clip_vision.model, seed)
    log.debug("tiny CLIP vision built (seed %d, dtype %s)", seed, clip_vision.dtype)
    return clip_vision
