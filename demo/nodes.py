"""Loader nodes that return tiny built-in models instead of reading files.

They are not part of the pack's public node list: the headless runner's ``--demo``
swaps them in for the real loaders so a whole workflow can be watched working without
weights, and the tests use them the same way.
"""
from __future__ import annotations

import functools

from .tiny_clip_text import build_tiny_sdxl_clip
from .tiny_clip_vision import build_tiny_clip_vision
from .tiny_identity import random_identity
from .tiny_insightface import DETECTOR_FILE, RECOGNIZER_FILE, write_tiny_antelopev2
from .tiny_mapper import build_tiny_encoder_adapter
from .tiny_sdxl import build_tiny_sdxl
from .tiny_vae import build_tiny_vae


@functools.cache
def _checkpoint(seed: int):
    return build_tiny_sdxl(seed), build_tiny_sdxl_clip(seed), build_tiny_vae(seed)


class InfiniteIDDemoCheckpoint:
    """Stands in for ``CheckpointLoaderSimple``: a tiny SDXL-shaped MODEL, CLIP and VAE."""

    CATEGORY = "InfiniteID/demo"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}, "optional": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
                                             "ckpt_name": ("STRING", {"default": ""})}}

    def load(self, seed=0, ckpt_name=""):
        return _checkpoint(seed)


class InfiniteIDDemoCLIPVision:
    """Stands in for ``CLIPVisionLoader``."""

    CATEGORY = "InfiniteID/demo"
    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}, "optional": {"clip_name": ("STRING", {"default": ""})}}

    def load(self, clip_name=""):
        return (_clip_vision(),)


@functools.lru_cache(maxsize=1)
def _clip_vision():
    return build_tiny_clip_vision(0)


class InfiniteIDDemoAdapter:
    """A tiny adapter sized for the demo checkpoint."""

    CATEGORY = "InfiniteID/demo"
    RETURN_TYPES = ("INFINITEID_ADAPTER",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}, "optional": {"seed": ("INT", {"default": 1, "min": 0, "max": 2**31 - 1}),
                                             "adapter_name": ("STRING", {"default": ""})}}

    def load(self, seed=1, adapter_name=""):
        return (_adapter(seed),)


@functools.cache
def _adapter(seed: int):
    return build_tiny_encoder_adapter(_checkpoint(0)[0], seed=seed)


class InfiniteIDDemoIdentity:
    """Random identity tokens for the tiny adapter (programmatic-API path)."""

    CATEGORY = "InfiniteID/demo"
    RETURN_TYPES = ("INFINITEID_IDENTITY",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 2, "min": 0, "max": 2**31 - 1}),
                             "count": ("INT", {"default": 1, "min": 1, "max": 64})}}

    def make(self, seed, count):
        return (random_identity(seed=seed, n=count),)


class InfiniteIDDemoFaceAnalysis:
    """Stands in for ``InfiniteIDFaceAnalysisLoader``: the tiny insightface pack (a red
    32x32 cell is a face), loaded through the real loader code from a cache folder."""

    CATEGORY = "InfiniteID/demo"
    RETURN_TYPES = ("FACEANALYSIS",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        # model_name/provider: accepted (and ignored) so a swapped-in real loader's inputs stay valid.
        return {"required": {}, "optional": {"model_name": ("STRING", {"default": "antelopev2"}),
                                             "provider": ("STRING", {"default": "CPU"}),
                                             "det_size": ("INT", {"default": 640, "min": 128, "max": 2048,
                                                                  "step": 32})}}

    def load(self, det_size=640, model_name="antelopev2", provider="CPU"):
        return (_face_analysis(det_size),)


@functools.cache
def _face_analysis(det_size: int):
    import os
    import tempfile

    from ..identity.face_analysis import load_face_analysis

    root = os.path.join(tempfile.gettempdir(), f"infinite_id_demo_{os.getuid() if hasattr(os, 'getuid') else 0}",
                        "insightface")
    pack = os.path.join(root, "models", "antelopev2")
    if not all(os.path.isfile(os.path.join(pack, f)) for f in (DETECTOR_FILE, RECOGNIZER_FILE)):
        write_tiny_antelopev2(root)  # deterministic bytes and atomic writes: parallel runs are safe
    return load_face_analysis("antelopev2", "CPU", det_size, roots=[root])


DEMO_NODES = {
    "InfiniteIDDemoCheckpoint": InfiniteIDDemoCheckpoint,
    "InfiniteIDDemoCLIPVision": InfiniteIDDemoCLIPVision,
    "InfiniteIDDemoAdapter": InfiniteIDDemoAdapter,
    "InfiniteIDDemoIdentity": InfiniteIDDemoIdentity,
    "InfiniteIDDemoFaceAnalysis": InfiniteIDDemoFaceAnalysis,
}


def register_demo_nodes() -> None:
    """Add the demo loaders to the host's node list (tests and ``--demo`` only)."""
    import nodes

    for name, cls in DEMO_NODES.items():
        nodes.NODE_CLASS_MAPPINGS.setdefault(name, cls)
