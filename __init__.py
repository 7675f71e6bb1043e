"""Infinite-ID for ComfyUI: identity-preserved personalization with SDXL.

ComfyUI imports this folder as a custom node pack and reads ``NODE_CLASS_MAPPINGS``.
Heavy optional dependencies (insightface, onnxruntime) are imported only by the nodes
that need them, so the pack always loads. ``web/`` holds the editor extension (link
colours for the pack's types).
"""
from .host.folders import register_folders
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

register_folders()

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
