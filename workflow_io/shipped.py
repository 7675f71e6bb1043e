"""The workflows this pack ships, and rendering their UI-format files from the API files.

Why one list: the generator script, the tests and the README all mean the same files.
``workflows/api/<name>.json`` is the source (hand-edited, runnable by ``python . run``);
``example_workflows/<name>.json`` is generated from it, with ``<name>.jpg`` beside it:
the thumbnail, a labelled schematic of the workflow (``scripts/make_workflows.py
--thumbnails``, drawn by ``scripts/thumbnail_art.py``).

Why only there: ComfyUI's template browser lists ``*.json`` directly inside a pack's
``example_workflows/``, ``example/``, ``examples/``, ``workflow/`` and ``workflows/``
folders (``app/custom_node_manager.py``) and asks for ``<name>.jpg`` beside each, so a UI
file in two of them is listed twice. ``workflows/`` keeps the API files in ``api/``,
which the browser does not read.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .api_to_ui import api_to_ui

PACK_ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("raw_photo", "stylised_photo", "identity_mixing", "interpolation_sweep", "ablation_grid", "two_people",
           "second_pass")
# API-only files: programmatic examples that use demo nodes, no editor twin.
API_ONLY = ("smoke_programmatic",)


def api_path(name: str, root: Path = PACK_ROOT) -> Path:
    return root / "workflows" / "api" / f"{name}.json"


def ui_path(name: str, root: Path = PACK_ROOT) -> Path:
    return root / "example_workflows" / f"{name}.json"


def ui_paths(name: str, root: Path = PACK_ROOT) -> tuple[Path]:
    """Every generated UI file of ``name`` (one: a second copy would be listed twice)."""
    return (ui_path(name, root),)


def thumbnail_path(name: str, root: Path = PACK_ROOT) -> Path:
    """The template browser's card image: ``<name>.jpg`` beside the UI file."""
    return root / "example_workflows" / f"{name}.jpg"


def api_digest(name: str, root: Path = PACK_ROOT) -> str:
    """A hash of the API file; a thumbnail's JPEG comment records it (with the drawing code's)."""
    import hashlib

    return hashlib.sha256(api_path(name, root).read_bytes()).hexdigest()[:16]


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
