"""Thin ComfyUI node classes; each file adapts ComfyUI types to one feature.

Node type names are a public contract (docs/COMPATIBILITY.md, "Saved workflows"): saved workflows refer to
them. Add nodes freely; never rename or remove one without a migration.

``NODE_MODULES`` is the one list of node files: importing and registering both follow from
it (its order is the order ComfyUI lists the nodes in). A new node file goes into it;
``tests/test_node_list.py`` fails for a node file left out.
"""
from __future__ import annotations

import importlib

NODE_MODULES = ("apply", "sampler", "guider", "adapter_loader", "face_analysis", "encode", "mixing", "regions",
                "identity_files", "evaluation")

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _name in NODE_MODULES:
    _module = importlib.import_module(f".{_name}", __name__)
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
