"""Reading workflow files (API or UI format) and applying ``--set`` overrides.

Shared by the headless runner (``cli/run_workflow.py``) and the evaluation (``evaluation/``), so
neither imports the other.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .ui_to_api import declared_inputs, ui_to_api


def load_workflow(path: Path) -> tuple[dict, dict | None]:
    """Return ``(api_prompt, ui_workflow_or_None)``; a UI workflow is converted as the editor would.

    The UI workflow is kept so that saved PNGs embed it and open in the editor again.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{path} is not a JSON workflow ({exc})") from None
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        try:
            prompt = ui_to_api(data)
            check_links(prompt)
            return prompt, data
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        try:
            check_links(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        return data, None
    raise ValueError(f"{path} is neither an API-format prompt nor a UI-format workflow")


def check_links(prompt: Mapping[str, Any], node_classes: Mapping[str, Any] | None = None) -> None:
    """Every ``[node_id, slot]`` input must name a node of the prompt and one of its outputs.

    Why here: both hosts' validators index the prompt with the link's node id and fail
    with a bare ``KeyError``/``IndexError`` on a dangling link; this names the input.
    """
    if node_classes is None:
        import nodes

        node_classes = nodes.NODE_CLASS_MAPPINGS
    for nid, node in prompt.items():
        inputs = node.get("inputs") or {}
        if not isinstance(inputs, dict):
            raise ValueError(f"node {nid} ({node.get('class_type')}): 'inputs' is not a JSON object")
        for name, value in inputs.items():
            if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))):
                continue
            where = f"node {nid} ({node.get('class_type')}) input '{name}'"
            origin = prompt.get(str(value[0]))
            if origin is None:
                raise ValueError(f"{where} is linked to node {value[0]}, which is not in the workflow (a dangling "
                                 f"link); reconnect the input in the editor and save again")
            cls = node_classes.get(origin.get("class_type"))
            outputs = getattr(cls, "RETURN_TYPES", None) if cls is not None else None
            if outputs is not None and (not isinstance(value[1], int) or isinstance(value[1], bool)
                                        or not 0 <= value[1] < len(outputs)):
                raise ValueError(f"{where} is linked to output {value[1]!r} of node {value[0]} "
                                 f"({origin.get('class_type')}), which has {len(outputs)} output(s)")


def settable_inputs(class_type: str, node_classes: Mapping[str, Any] | None = None) -> list[str] | None:
    """The input names ``--set`` may address on ``class_type`` (required and optional, in the
    editor's order), or ``None`` when the type is not installed (validation reports that)."""
    if node_classes is None:
        import nodes

        node_classes = nodes.NODE_CLASS_MAPPINGS
    cls = node_classes.get(class_type)
    if cls is None:
        return None
    return [name for name, _ in declared_inputs(cls)]


def apply_overrides(prompt: dict, overrides: list[str], node_classes: Mapping[str, Any] | None = None) -> None:
    """Apply ``--set NODE.INPUT=VALUE`` items (see ``add_parser``) in place.

    An input name the node does not declare is refused with the names it does have: the
    host would otherwise accept and ignore it, and a typo (``stepz``) would pass silently.
    """
    for item in overrides:
        target, sep, raw = item.partition("=")
        node_ref, dot, input_name = target.rpartition(".")
        if not sep or not dot or not node_ref or not input_name:
            raise ValueError(f"--set {item!r}: use NODE.INPUT=VALUE")
        matches = [nid for nid, node in prompt.items()
                   if node_ref in (nid, (node.get("_meta") or {}).get("title"), node.get("class_type"))]
        if not matches:
            raise ValueError(f"--set {item!r}: no node with id, title or type '{node_ref}'")
        for nid in matches:
            class_type = prompt[nid].get("class_type")
            names = settable_inputs(class_type, node_classes)
            if names is not None and not names:
                raise ValueError(f"--set {item!r}: node {nid} ({class_type}) has no inputs to set")
            if names is not None and input_name not in names:
                raise ValueError(f"--set {item!r}: {class_type} (node {nid}) has no input '{input_name}'; its "
                                 f"inputs are: {', '.join(names)}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        for nid in matches:
            inputs = prompt[nid].setdefault("inputs", {})
            if not isinstance(inputs, dict):
                raise ValueError(f"--set {item!r}: node {nid}'s inputs are not a JSON object; the workflow is damaged")
            inputs[input_name] = value
