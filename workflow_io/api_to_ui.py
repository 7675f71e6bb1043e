"""API-format prompt to a tidy UI-format (LiteGraph 0.4) workflow, for the shipped workflows.

Why: the UI files in ``example_workflows/`` are what people open in the editor, the API files are
what the runner and the tests execute; generating one from the other (plus the nodes'
``INPUT_TYPES``) keeps them from drifting apart. The layout is left to right in
columns (each node as far right as its consumers allow), sized from LiteGraph's slot
and widget heights so that the 2024 and the current editor keep the sizes, and fitted
to a 1280x800 window at a zoom (~0.6 or more) where both editors still draw text.
"""
from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from .ui_to_api import plain, socket_inputs, widget_layout

NODE_WIDTH = 250
WIDE_NODES = {"CLIPTextEncode": 300, "InfiniteIDApply": 280, "InfiniteIDEncode": 270, "InfiniteIDSampler": 260,
              "VAEDecode": 210, "SaveImage": 240, "LoadImage": 220, "CheckpointLoaderSimple": 290,
              "CLIPVisionLoader": 290, "InfiniteIDAdapterLoader": 290, "InfiniteIDFaceAnalysisLoader": 260,
              "InfiniteIDMix": 260, "InfiniteIDInterpolate": 260, "EmptyLatentImage": 270}
TALL_NODES = {"LoadImage": 314, "SaveImage": 180}  # image previews
TITLE, SLOT, WIDGET, MULTILINE, PAD = 30, 20, 24, 90, 14  # LiteGraph's slot and widget heights
GAP_X, GAP_Y = 24, 24
MAX_COLUMN_HEIGHT = 1150  # taller columns are split, so a graph fits a 1280x800 view at zoom ~0.6
VIEW_W, VIEW_H, VIEW_MARGIN = 1280, 800, 12
VIEW_LEFT, VIEW_TOP = 64, 90  # the current editor's side bar and top bars cover the canvas there
CONTROL_DEFAULT = "fixed"  # shipped workflows reproduce their seed


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _outputs(cls: Any) -> list[tuple[str, str]]:
    types = [plain(t) if not isinstance(t, (list, tuple)) else "COMBO" for t in cls.RETURN_TYPES]
    names = list(getattr(cls, "RETURN_NAMES", None) or types)
    return list(zip(names, types))


def _size(class_type: str, cls: Any) -> list[int]:
    slots = max(len(socket_inputs(cls)), len(_outputs(cls)), 1)
    height = slots * SLOT + PAD
    for slot in widget_layout(cls):
        if slot.kind != "input":  # control_after_generate and upload are widgets too
            height += WIDGET
            continue
        options = slot.spec[1] if len(slot.spec) > 1 and isinstance(slot.spec[1], dict) else {}
        height += MULTILINE if options.get("multiline") else WIDGET
    return [WIDE_NODES.get(class_type, NODE_WIDTH), max(height, TALL_NODES.get(class_type, 0))]


def _columns(prompt: Mapping[str, dict]) -> dict[str, int]:
    """Column per node: as far right as its consumers allow; output nodes right of their sources.

    Why as late as possible: a loader then sits beside the node that uses it, and the
    identity branch (photos, encoders) and the text branch (checkpoint, prompts) meet
    at Apply/Sampler instead of stacking every loader in one tall first column.
    """
    sources = {nid: [v[0] for v in node["inputs"].values() if _is_link(v)] for nid, node in prompt.items()}
    consumers = {nid: [c for c, srcs in sources.items() if nid in srcs] for nid in prompt}
    early: dict[str, int] = {}

    def visit(nid: str, trail: tuple = ()) -> int:
        if nid in trail:
            raise ValueError(f"node {nid}: the prompt's links form a cycle")
        if nid not in early:
            early[nid] = 1 + max((visit(s, trail + (nid,)) for s in sources[nid]), default=-1)
        return early[nid]

    for nid in prompt:
        visit(nid)
    late: dict[str, int] = {}

    def place(nid: str) -> int:
        if nid not in late:
            late[nid] = min((place(c) for c in consumers[nid]), default=early[nid] + 1) - 1
        return late[nid]

    return {nid: place(nid) for nid in prompt}


def api_to_ui(name: str, prompt: Mapping[str, dict], node_classes: Mapping[str, Any]) -> dict:
    """The UI workflow for ``prompt`` (keys must be the integer node ids the UI file will use).

    Every widget input must be set in the prompt (defaults of combos differ per host),
    and every node needs ``_meta.title`` (display names differ per host).
    """
    ids = sorted(prompt, key=int)
    for nid in ids:
        node = prompt[nid]
        if "title" not in node.get("_meta", {}):
            raise ValueError(f"{name}: node {nid} has no _meta.title")
    column = _columns(prompt)
    sizes = {nid: _size(prompt[nid]["class_type"], node_classes[prompt[nid]["class_type"]]) for nid in ids}
    ui_nodes: dict[str, dict] = {}
    links: list[list] = []
    for nid in ids:
        node, cls = prompt[nid], node_classes[prompt[nid]["class_type"]]
        values = []
        for slot in widget_layout(cls):
            if slot.kind == "control":
                values.append(CONTROL_DEFAULT)
            elif slot.kind == "upload":
                values.append("image")
            elif slot.name in node["inputs"]:
                values.append(node["inputs"][slot.name])
            else:
                raise ValueError(f"{name}: node {nid} ({node['class_type']}) does not set widget '{slot.name}'")
        inputs = []
        for input_name, input_type in socket_inputs(cls):
            value = node["inputs"].get(input_name)
            link_id = None
            if _is_link(value):
                src = prompt[value[0]]
                link_id = len(links) + 1
                out_type = _outputs(node_classes[src["class_type"]])[value[1]][1]
                links.append([link_id, int(value[0]), value[1], int(nid), len(inputs), out_type])
            inputs.append({"name": input_name, "type": input_type, "link": link_id})
        ui_nodes[nid] = {
            "id": int(nid), "type": node["class_type"], "pos": [0, 0], "size": sizes[nid], "flags": {},
            "order": 0, "mode": 0, "inputs": inputs,
            "outputs": [{"name": out_name, "type": out_type, "links": None, "slot_index": i}
                        for i, (out_name, out_type) in enumerate(_outputs(cls))],
            "title": node["_meta"]["title"],
            "properties": _properties(node),
            "widgets_values": values,
        }
    for link_id, origin, slot, _target, _slot, _type in links:
        out = ui_nodes[str(origin)]["outputs"][slot]
        out["links"] = (out["links"] or []) + [link_id]
    _place(ui_nodes, column, links)
    _order(ui_nodes, column)
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"infinite-id/workflows/{name}")),
        "revision": 0,
        "last_node_id": max(int(i) for i in ids),
        "last_link_id": len(links),
        "nodes": [ui_nodes[nid] for nid in ids],
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": _view(ui_nodes.values())},
        "version": 0.4,
    }


def _properties(node: Mapping[str, Any]) -> dict:
    """LiteGraph node properties; loaders also get ``models`` (name, url, directory of each file
    they name), which the editor's missing-models panel shows, folder included."""
    from ..host.models import model_metadata

    properties: dict[str, Any] = {"Node name for S&R": node["class_type"]}
    models = model_metadata(node["class_type"], node["inputs"])
    if models:
        properties["models"] = models
    return properties


def _place(ui_nodes: dict[str, dict], column: dict[str, int], links: list[list]) -> None:
    """Stack each column top-down, ordered by the mean height of each node's sources.

    A column taller than ``MAX_COLUMN_HEIGHT`` is dealt into side-by-side sub-columns, so
    a wide ablation grid stays readable in one screen.
    """
    origins = {nid: [str(link[1]) for link in links if str(link[3]) == nid] for nid in ui_nodes}
    centre: dict[str, float] = {}
    x = 0
    for col in range(max(column.values()) + 1):
        members = [nid for nid in ui_nodes if column[nid] == col]
        if not members:
            continue

        def key(nid: str) -> tuple:
            placed = [centre[o] for o in origins[nid] if o in centre]
            return (sum(placed) / len(placed) if placed else 0.0, int(nid))

        members.sort(key=key)
        for part in _split(members, [TITLE + ui_nodes[nid]["size"][1] + GAP_Y for nid in members]):
            y = 0
            for nid in part:
                ui_nodes[nid]["pos"] = [x, y + TITLE]
                centre[nid] = y + ui_nodes[nid]["size"][1] / 2
                y += TITLE + ui_nodes[nid]["size"][1] + GAP_Y
            x += max(ui_nodes[nid]["size"][0] for nid in part) + GAP_X


def _split(members: list[str], heights: list[int]) -> list[list[str]]:
    """Deal a column into sub-columns up to ``MAX_COLUMN_HEIGHT``, filled from the end so the
    first one takes the remainder (the run of alike nodes at the end stays together)."""
    groups: list[list[str]] = [[]]
    used = 0.0
    for nid, height in zip(reversed(members), reversed(heights)):
        if groups[0] and used + height / 2 > MAX_COLUMN_HEIGHT:
            groups.insert(0, [])
            used = 0.0
        groups[0].insert(0, nid)
        used += height
    return groups


def _order(ui_nodes: dict[str, dict], column: dict[str, int]) -> None:
    """LiteGraph's ``order``, a topological index: every source sits in a column left of its consumers."""
    for i, nid in enumerate(sorted(ui_nodes, key=lambda n: (column[n], int(n)))):
        ui_nodes[nid]["order"] = i


def _view(nodes: Any) -> dict:
    """Canvas offset/scale that show the whole graph in a 1280x800 window of the current editor."""
    nodes = list(nodes)
    left = min(n["pos"][0] for n in nodes)
    top = min(n["pos"][1] for n in nodes) - TITLE
    right = max(n["pos"][0] + n["size"][0] for n in nodes)
    bottom = max(n["pos"][1] + n["size"][1] for n in nodes)
    scale = round(min(1.0, (VIEW_W - VIEW_LEFT - 2 * VIEW_MARGIN) / (right - left),
                      (VIEW_H - VIEW_TOP - 2 * VIEW_MARGIN) / (bottom - top)), 3)
    return {"scale": scale, "offset": [round((VIEW_LEFT + VIEW_MARGIN) / scale - left, 1),
                                       round((VIEW_TOP + VIEW_MARGIN) / scale - top, 1)]}
