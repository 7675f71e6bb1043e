"""The workflows this pack ships, and rendering their UI-format files from the API files.

Why one list: the generator script, the tests and the README all mean the same files.
``workflows/api/<name>.json`` is the source (hand-edited, runnable by ``python . run``);
``workflows/<name>.json`` and its copy ``example_workflows/<name>.json`` (where
ComfyUI's template browser looks for a pack's examples) are generated from it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from .workflow_layout import api_to_ui

PACK_ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("raw_photo", "stylised_photo", "identity_mixing", "interpolation_sweep", "ablation_grid")
# API-only files: programmatic examples that use demo nodes, no editor twin.
API_ONLY = ("smoke_programmatic",)


def api_path(name: str, root: Path = PACK_ROOT) -> Path:
    return root / "workflows" / "api" / f"{name}.json"


def ui_paths(name: str, root: Path = PACK_ROOT) -> tuple[Path, Path]:
    return root / "workflows" / f"{name}.json", root / "example_workflows" / f"{name}.json"


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def same_workflow(a: str, b: str) -> bool:
    """Equal UI files, up to unlinked output sockets: hosts differ there (current SaveImage
    has an output, the 2024 one none) and nothing in a workflow depends on them."""
    def used(text: str) -> dict:
        data = json.loads(text)
        for node in data.get("nodes", []):
            node["outputs"] = [o for o in node.get("outputs") or [] if o.get("links")]
        return data

    return used(a) == used(b)


def render_all(node_classes: Mapping[str, Any] | None = None, root: Path = PACK_ROOT) -> dict[Path, str]:
    """Text of every generated UI file, by path."""
    if node_classes is None:
        import nodes

        node_classes = nodes.NODE_CLASS_MAPPINGS
    files = {}
    for name in SHIPPED:
        text = dumps(api_to_ui(name, json.loads(api_path(name, root).read_text()), node_classes))
        for path in ui_paths(name, root):
            files[path] = text
    return files
