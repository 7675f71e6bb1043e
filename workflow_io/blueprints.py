"""The pack's subgraph blueprints: ``subgraphs/<name>.json``, generated from ``workflows/blueprints/``.

Why blueprints: current ComfyUI (``app/subgraph_manager.py``) serves every
``custom_nodes/<pack>/subgraphs/*.json`` at ``/global_subgraphs``, and the editor lists
each as one node under "Subgraph Blueprints/<category>" in its node library, named after
the file. The one-photo setup (face analysis, CLIP vision and adapter loaders, Encode,
Apply) then is one node between a checkpoint and a sampler.

Why generated: a blueprint is a LiteGraph workflow holding one subgraph node and its
definition (inner nodes, links as objects, the input node ``-10`` and output node
``-20``). Writing that by hand drifts from the nodes' ``INPUT_TYPES``; the source in
``workflows/blueprints/<name>.json`` names only the inner nodes (API format, as the
shipped workflows), the subgraph's inputs (``to``: which inner inputs each feeds),
outputs (``from``: which inner output), the widgets shown on the node (``promoted``:
``[inner id, widget]``, the editor's ``proxyWidgets``), a category and a description.
Layout and the loaders' ``models`` entries (the missing-models panel) come from
:func:`~.api_to_ui.api_to_ui`, as for the shipped workflows.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .api_to_ui import TITLE, api_to_ui
from .shipped import PACK_ROOT, dumps

IO_WIDTH, IO_GAP = 120, 80
BLUEPRINT_MARK = "blueprint:"  # class_type prefix of a blueprint instance in an API-style source


def source_dir(root: Path = PACK_ROOT) -> Path:
    return root / "workflows" / "blueprints"


def blueprint_dir(root: Path = PACK_ROOT) -> Path:
    """Where ComfyUI's subgraph manager looks: ``<pack>/subgraphs/*.json``."""
    return root / "subgraphs"


def blueprint_names(root: Path = PACK_ROOT) -> list[str]:
    return sorted(p.stem for p in source_dir(root).glob("*.json"))


def blueprint_path(name: str, root: Path = PACK_ROOT) -> Path:
    return blueprint_dir(root) / f"{name}.json"


def _uid(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "infinite-id/blueprints/" + "/".join(parts)))


def render_blueprint(name: str, spec: Mapping[str, Any], node_classes: Mapping[str, Any]) -> dict:
    """The blueprint file for the source ``spec`` (see the module docstring)."""
    inner = api_to_ui(name, spec["nodes"], node_classes)
    nodes = {str(n["id"]): n for n in inner["nodes"]}
    links = [{"id": link[0], "origin_id": link[1], "origin_slot": link[2], "target_id": link[3],
              "target_slot": link[4], "type": link[5]} for link in inner["links"]]
    left = min(n["pos"][0] for n in nodes.values()) - IO_GAP - IO_WIDTH
    right = max(n["pos"][0] + n["size"][0] for n in nodes.values()) + IO_GAP
    top = min(n["pos"][1] for n in nodes.values()) - TITLE
    inputs, outputs = [], []
    for k, socket in enumerate(spec["inputs"]):
        ids = []
        for nid, input_name in socket["to"]:
            slots = nodes[nid]["inputs"]
            index = next((i for i, s in enumerate(slots) if s["name"] == input_name), None)
            if index is None:
                raise ValueError(f"blueprint {name}: input '{socket['name']}' feeds node {nid}'s '{input_name}', "
                                 f"which is no socket of {nodes[nid]['type']}")
            link_id = len(links) + 1
            links.append({"id": link_id, "origin_id": -10, "origin_slot": k, "target_id": int(nid),
                          "target_slot": index, "type": socket["type"]})
            slots[index]["link"] = link_id
            ids.append(link_id)
        inputs.append({"id": _uid(name, "in", socket["name"]), "name": socket["name"], "type": socket["type"],
                       "linkIds": ids, "localized_name": socket["name"],
                       "pos": [left + IO_WIDTH - 20, top + 30 + 20 * k]})
    for k, socket in enumerate(spec["outputs"]):
        nid, slot = socket["from"]
        link_id = len(links) + 1
        links.append({"id": link_id, "origin_id": int(nid), "origin_slot": slot, "target_id": -20, "target_slot": k,
                      "type": socket["type"]})
        out = nodes[nid]["outputs"][slot]
        out["links"] = (out["links"] or []) + [link_id]
        outputs.append({"id": _uid(name, "out", socket["name"]), "name": socket["name"], "type": socket["type"],
                        "linkIds": [link_id], "localized_name": socket["name"], "pos": [right + 20, top + 30 + 20 * k]})
    for nid, widget in spec.get("promoted", []):
        if widget not in _widget_names(node_classes[nodes[nid]["type"]]):
            raise ValueError(f"blueprint {name}: promoted widget '{widget}' is not a widget of node {nid}")
    last_node = max(int(n) for n in nodes)
    definition = {
        "id": _uid(name), "version": 1,
        "state": {"lastGroupId": 0, "lastNodeId": last_node, "lastLinkId": len(links), "lastRerouteId": 0},
        "revision": 0, "config": {}, "name": name, "category": spec.get("category", "InfiniteID"),
        "description": spec["description"],
        "inputNode": {"id": -10, "bounding": [left, top, IO_WIDTH, 40 + 20 * len(inputs)]},
        "outputNode": {"id": -20, "bounding": [right, top, IO_WIDTH, 40 + 20 * len(outputs)]},
        "inputs": inputs, "outputs": outputs, "widgets": [],
        "nodes": list(nodes.values()), "links": links, "groups": [], "extra": {},
    }
    instance = {
        "id": last_node + 1, "type": definition["id"], "pos": [0, 0],
        "size": [300, TITLE + 20 * max(len(inputs), len(outputs)) + 24 * len(spec.get("promoted", [])) + 14],
        "flags": {}, "order": 0, "mode": 0,
        "inputs": [{"name": s["name"], "localized_name": s["name"], "type": s["type"], "link": None} for s in inputs],
        "outputs": [{"name": s["name"], "localized_name": s["name"], "type": s["type"], "links": []} for s in outputs],
        "properties": {"proxyWidgets": [[str(nid), widget] for nid, widget in spec.get("promoted", [])]},
        "widgets_values": [], "title": name,
    }
    return {"id": _uid(name, "workflow"), "revision": 0, "last_node_id": last_node + 1, "last_link_id": 0,
            "nodes": [instance], "links": [], "groups": [], "definitions": {"subgraphs": [definition]},
            "config": {}, "extra": {"BlueprintDescription": spec["description"]}, "version": 0.4}


def _widget_names(node_class: Any) -> set[str]:
    from .ui_to_api import widget_layout

    return {slot.name for slot in widget_layout(node_class) if slot.kind == "input"}


def render_all_blueprints(node_classes: Mapping[str, Any] | None = None, root: Path = PACK_ROOT) -> dict[Path, str]:
    """Text of every generated blueprint file, by path."""
    if node_classes is None:
        import nodes

        node_classes = nodes.NODE_CLASS_MAPPINGS
    return {blueprint_path(name, root): dumps(render_blueprint(
        name, json.loads((source_dir(root) / f"{name}.json").read_text()), node_classes))
        for name in blueprint_names(root)}


def workflow_with_blueprint(name: str, prompt: Mapping[str, dict], node_classes: Mapping[str, Any],
                            blueprint: Mapping[str, Any]) -> dict:
    """A UI workflow from an API-style ``prompt`` in which nodes of class ``"blueprint:<name>"`` are
    instances of ``blueprint`` (as the editor inserts one from the node library).

    Why: the tests (and anyone scripting) can state "checkpoint -> blueprint -> sampler" in the
    shipped workflows' API form and get the file the editor would save.
    """
    definition = blueprint["definitions"]["subgraphs"][0]
    template = blueprint["nodes"][0]
    kind = f"{BLUEPRINT_MARK}{definition['name']}"

    class StandIn:  # the instance's sockets, for the layout
        RETURN_TYPES = tuple(s["type"] for s in definition["outputs"])
        RETURN_NAMES = tuple(s["name"] for s in definition["outputs"])

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {s["name"]: (s["type"], {}) for s in definition["inputs"]}}

    ui = api_to_ui(name, prompt, {**node_classes, kind: StandIn})
    for node in ui["nodes"]:
        if node["type"] != kind:
            continue
        node.update(type=definition["id"], properties=json.loads(json.dumps(template["properties"])),
                    widgets_values=list(template.get("widgets_values") or []))
        for out, socket in zip(node["outputs"], definition["outputs"]):
            out["localized_name"] = socket["name"]
    definition = json.loads(json.dumps(definition))
    ui["last_node_id"], new_ids = _renumber(definition, {int(n["id"]) for n in ui["nodes"]}, ui["last_node_id"])
    for node in ui["nodes"]:  # promoted widgets name the inner node by id
        if node["type"] == definition["id"]:
            node["properties"]["proxyWidgets"] = [[str(new_ids.get(int(nid), nid)), widget]
                                                  for nid, widget in node["properties"].get("proxyWidgets", [])]
    ui["definitions"] = {"subgraphs": [definition]}
    return ui


def _renumber(definition: dict, taken: set[int], last: int) -> tuple[int, dict[int, int]]:
    """Give inner nodes whose id a node of the outer graph already has a new one.

    Returns the last id used and the old -> new ids.

    Why: the current editor keeps node ids unique across a workflow and its subgraphs; it
    renumbers clashing inner nodes on load, and its "Queue" then names them by the new
    ids. A file that already has unique ids is sent as saved, by the editor and the runner.
    """
    new_ids = {}
    for node in definition["nodes"]:
        if node["id"] in taken:
            last += 1
            new_ids[node["id"]] = last
            node["id"] = last
    for link in definition["links"]:
        link["origin_id"] = new_ids.get(link["origin_id"], link["origin_id"])
        link["target_id"] = new_ids.get(link["target_id"], link["target_id"])
    definition["state"]["lastNodeId"] = max(last, definition["state"]["lastNodeId"])
    return definition["state"]["lastNodeId"], new_ids

