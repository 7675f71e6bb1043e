"""``InfiniteIDEncode``: reference photos of one person -> ``INFINITEID_IDENTITY``."""
from __future__ import annotations

from ..host.errors import node_error
from ..identity.encode import AVERAGE_MODES, EncodeSettings, encode_identity
from .inputs import checked_inputs

NODE = "InfiniteIDEncode"


class InfiniteIDEncode:
    DESCRIPTION = ("Detect and align the face in each reference image, read it with ArcFace and CLIP vision, and map "
                   "both to identity tokens with the adapter. Several images of the same person are averaged. "
                   "The second output shows the aligned faces that were used.")
    CATEGORY = "InfiniteID"
    SEARCH_ALIASES = ["face id", "identity", "encode face", "face embedding", "reference photo", "arcface",
                      "pulid", "instantid", "ipadapter face", "faceid"]
    RETURN_TYPES = ("INFINITEID_IDENTITY", "IMAGE")
    RETURN_NAMES = ("identity", "faces")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "face_analysis": ("FACEANALYSIS", {"tooltip": "From 'InfiniteID Face Analysis Loader' (or another "
                                                          "pack's insightface loader)."}),
            "clip_vision": ("CLIP_VISION", {"tooltip": "Core 'Load CLIP Vision' with the model the adapter was "
                                                       "trained with (CLIP-ViT-H-14)."}),
            "adapter": ("INFINITEID_ADAPTER", {"tooltip": "From 'InfiniteID Adapter Loader'."}),
            "image": ("IMAGE", {"tooltip": "One or several photos of ONE person (a batch)."}),
            "face_index": ("INT", {"default": -1, "min": -1, "max": 63, "advanced": True,
                                   "tooltip": "-1: the largest face in each image. 0, 1, ...: the face at that "
                                              "position counted from the left."}),
            "average": (list(AVERAGE_MODES), {"default": "embeddings", "advanced": True,
                        "tooltip": "How several images combine. embeddings: average the face features, then map "
                                   "once. tokens: map each image, then average the identity tokens."}),
            "skip_images_without_face": ("BOOLEAN", {"default": True, "advanced": True,
                                         "tooltip": "Ignore images where no usable face is found (logged). The node "
                                                    "still fails when no image has one."}),
        }}

    @checked_inputs(NODE)
    def encode(self, face_analysis, clip_vision, adapter, image, face_index, average, skip_images_without_face):
        with node_error(NODE):
            settings = EncodeSettings(face_index=face_index, average=average,
                                      skip_images_without_face=skip_images_without_face)
            return encode_identity(face_analysis, clip_vision, adapter, image, settings)


NODE_CLASS_MAPPINGS = {NODE: InfiniteIDEncode}
NODE_DISPLAY_NAME_MAPPINGS = {NODE: "InfiniteID Encode"}
