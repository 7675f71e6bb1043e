"""``InfiniteIDFaceAnalysisLoader``: an insightface ``FaceAnalysis`` as ``FACEANALYSIS``.

The type name is the one InstantID and PuLID use, so their loaders connect to our
nodes and this loader to theirs. All the care (lazy import, nested folders, provider
fallback, no downloads) lives in ``identity/face_analysis.py``.
"""
from __future__ import annotations

from ..host.errors import node_error
from ..identity.face_analysis import AUTO, DEFAULT_PACK, PROVIDERS, available_packs, load_face_analysis
from .inputs import checked_inputs

NODE = "InfiniteIDFaceAnalysisLoader"


class InfiniteIDFaceAnalysisLoader:
    DESCRIPTION = ("Load an insightface model pack (antelopev2 by default) from models/insightface/models/. "
                   "Nothing is downloaded; a missing pack gives a message naming its files and folder.")
    CATEGORY = "InfiniteID"
    SEARCH_ALIASES = ["insightface", "antelopev2", "face analysis", "face detection", "face id loader",
                      "instantid face", "pulid face"]
    RETURN_TYPES = ("FACEANALYSIS",)
    RETURN_NAMES = ("face_analysis",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (available_packs(), {"default": DEFAULT_PACK,
                           "tooltip": "A folder under models/insightface/models/ (antelopev2, buffalo_l, ...)."}),
            "provider": (list(PROVIDERS), {"default": AUTO, "advanced": True,
                         "tooltip": "onnxruntime execution provider. auto: the installed build's GPU provider "
                                    "(onnxruntime-gpu: CUDA), else CPU. Falls back to CPU (with a log line) when "
                                    "the installed onnxruntime cannot run it."}),
            "det_size": ("INT", {"default": 640, "min": 128, "max": 2048, "step": 32, "advanced": True,
                                 "tooltip": "Detector input size. Encode retries smaller sizes down to 320 when no "
                                            "face is found."}),
        }}

    @checked_inputs(NODE)
    def load(self, model_name, provider, det_size):
        with node_error(NODE):
            return (load_face_analysis(model_name, provider, det_size),)


NODE_CLASS_MAPPINGS = {NODE: InfiniteIDFaceAnalysisLoader}
NODE_DISPLAY_NAME_MAPPINGS = {NODE: "InfiniteID Face Analysis Loader"}
