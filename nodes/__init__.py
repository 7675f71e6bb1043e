"""Thin ComfyUI node classes; each file adapts ComfyUI types to one feature.

Node type names are a public contract (docs/COMPATIBILITY.md, "Saved workflows"): saved workflows refer to
them. Add nodes freely; never rename or remove one without a migration.
"""
from . import adapter_loader, apply, guider, sampler
from . import encode, evaluation, face_analysis, identity_files, mixing, regions

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _module in (apply, sampler, guider, adapter_loader, face_analysis, encode, mixing, regions, identity_files, evaluation):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
