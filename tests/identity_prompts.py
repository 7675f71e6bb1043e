"""Prompt pieces for the identity tests: face images from the tiny pack, an IMAGE source
node for any value (RGBA, gray, NaN, lists...), and the Encode node with demo loaders."""
from __future__ import annotations

import uuid

import nodes
import numpy as np
import torch

from infinite_id.demo import tiny_insightface as tiny
from infinite_id.host.executor import capture

_IMAGES: dict[str, object] = {}


class InfiniteIDTestImage:
    """Test-only source of any IMAGE value (RGBA, gray, NaN, lists...) by key."""

    CATEGORY = "InfiniteID/testing"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"key": ("STRING", {"default": ""})}}

    def make(self, key):
        return (_IMAGES[key],)


def image_node(value) -> dict:
    """An API node giving ``value`` as its IMAGE output."""
    nodes.NODE_CLASS_MAPPINGS.setdefault("InfiniteIDTestImage", InfiniteIDTestImage)
    key = uuid.uuid4().hex  # unique: the executor caches outputs by inputs
    _IMAGES[key] = value
    return {"class_type": "InfiniteIDTestImage", "inputs": {"key": key}}


def face_rgb(*cells, size=(640, 640), first_identity=1) -> np.ndarray:
    rgb = np.full((size[0], size[1], 3), 128, dtype=np.uint8)
    scale = tiny.detection_scale(size[0], size[1])
    for n, (x, y) in enumerate(cells):
        tiny.draw_face(rgb, x, y, scale=scale, identity=first_identity + n)
    return rgb


def as_image(*rgbs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(rgbs)).float() / 255.0


def encode_nodes(image_entry: dict, **settings) -> dict:
    inputs = {"face_analysis": ["fa", 0], "clip_vision": ["cv", 0], "adapter": ["adapter", 0], "image": ["img", 0],
              "face_index": -1, "average": "embeddings", "skip_images_without_face": True}
    inputs.update(settings)
    return {"fa": {"class_type": "InfiniteIDDemoFaceAnalysis", "inputs": {}},
            "cv": {"class_type": "InfiniteIDDemoCLIPVision", "inputs": {}},
            "adapter": {"class_type": "InfiniteIDDemoAdapter", "inputs": {"seed": 1}},
            "img": image_entry,
            "enc": {"class_type": "InfiniteIDEncode", "inputs": inputs},
            "out": capture("enc", infiniteid_identity=["enc", 0], image=["enc", 1])}
