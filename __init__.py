"""Infinite-ID for ComfyUI: identity-preserved personalization with SDXL.

ComfyUI imports this folder as a custom node pack and reads ``NODE_CLASS_MAPPINGS``.
Heavy optional dependencies (insightface, onnxruntime) are imported only by the nodes
that need them, so the pack always loads.
"""
from .host.folders import register_folders
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

register_folders()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
