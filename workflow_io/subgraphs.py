"""Subgraphs (the current editor's nested graphs and blueprints) flattened into one graph.

Why: a workflow built from a subgraph blueprint (``subgraphs/*.json``) holds one node whose
type is a subgraph id, and the subgraph's nodes in ``definitions.subgraphs``. The editor's
"Queue" sends the nodes inside, each with the id ``<instance id>:<inner id>`` (nested
subgraphs add more parts), and links through the subgraph's input and output sockets
joined to what the instance is connected to outside. :func:`flatten_subgraphs` does the
same on the UI workflow, so :func:`~.ui_to_api.ui_to_api` (and ``python . run``) send the
prompt the editor sends.

Widget values of the inner nodes come from the definition: a promoted widget
(``properties.proxyWidgets`` on the instance) is the inner node's widget, shown on the
instance, and the editor saves its value there.

Not handled (the pack's blueprints do not use it): a widget exposed as a subgraph *input*
socket (an inner widget linked to the input node, its value kept on the instance); the
inner node's own saved value is sent instead.

In a definition, ``-10`` is the subgraph's input node and ``-20`` its output node; links
are objects (``origin_id``, ``origin_slot``, ``target_id``, ``target_slot``, ``type``).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

INPUT_NODE, OUTPUT_NODE = -10, -20
MAX_DEPTH = 16  # nested subgraphs deeper than this are refused (a definition that contains itself)


def _link_tuple(link: Any) -> tuple[int, Any, int, Any, int, Any]:
    """``(id, origin, origin_slot, target, target_slot, type)`` of a list- or object-form link."""
    if isinstance(link, dict):
        return (int(link["id"]), link["origin_id"], int(link["origin_slot"]), link["target_id"],
                int(link["target_slot"]), link.get("type"))
    return int(link[0]), link[1], int(link[2]), link[3], int(link[4]), link[5] if len(link) > 5 else None


@dataclass
class _Level:
    """One graph: the top-level workflow, or a subgraph definition inside one instance."""

    nodes: dict[str, dict]
    links: dict[int, tuple]
    prefix: str = ""  # "12:" inside instance 12
    parent: _Level | None = None
    instance: dict | None = None  # the instance node (in ``parent``) this level expands
    definition: dict | None = None
    children: dict[str, _Level] = field(default_factory=dict)


def has_subgraphs(workflow: Mapping) -> bool:
    ids = {s.get("id") for s in (workflow.get("definitions") or {}).get("subgraphs") or []}
    return any(isinstance(n, dict) and n.get("type") in ids for n in workflow.get("nodes") or [])


def flatten_subgraphs(workflow: Mapping) -> dict:
    """A copy of ``workflow`` with every subgraph instance replaced by the nodes inside it.

    Inner nodes get the editor's ids (``"12:3"``); every link is re-made between real nodes.
    A workflow without subgraph instances is returned unchanged.
    """
    if not has_subgraphs(workflow):
        return dict(workflow)
    definitions = {s["id"]: s for s in (workflow.get("definitions") or {}).get("subgraphs") or []}
    top = _level(workflow, "", None, None, None)
    nodes: list[dict] = []
    links: list[list] = []
    _collect(top, definitions, nodes, links, 0)
    flat = {k: v for k, v in workflow.items() if k not in ("nodes", "links", "definitions")}
    flat.update(nodes=nodes, links=links)
    return flat


def _level(graph: Mapping, prefix: str, parent: _Level | None, instance: dict | None,
           definition: dict | None) -> _Level:
    nodes = {str(n["id"]): n for n in graph.get("nodes") or []}
    links = {}
    for raw in graph.get("links") or []:
        link = _link_tuple(raw)
        links[link[0]] = link
    return _Level(nodes, links, prefix, parent, instance, definition)


def _collect(level: _Level, definitions: Mapping[str, dict], nodes: list[dict], links: list[list],
             depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"subgraphs nested deeper than {MAX_DEPTH} levels (a subgraph that contains itself?)")
    for nid, node in level.nodes.items():
        definition = definitions.get(node.get("type"))
        if definition is not None:
            child = _level(definition, f"{level.prefix}{nid}:", level, node, definition)
            level.children[nid] = child
            _collect(child, definitions, nodes, links, depth + 1)
            continue
        copy = dict(node, id=f"{level.prefix}{nid}")
        if level.instance is not None and level.instance.get("mode", 0) and not node.get("mode", 0):
            copy["mode"] = level.instance["mode"]  # a muted or bypassed subgraph mutes/bypasses its inside
        copy["inputs"] = []
        for slot in node.get("inputs") or []:
            slot = dict(slot)
            if slot.get("link") is not None:
                source = _source_of_link(level, int(slot["link"]), definitions, depth)
                if source is None:
                    slot["link"] = None
                else:
                    link_id = len(links) + 1
                    links.append([link_id, source[0], source[1], copy["id"], len(copy["inputs"]), slot.get("type")])
                    slot["link"] = link_id
            copy["inputs"].append(slot)
        nodes.append(copy)


def _source_of_link(level: _Level, link_id: int, definitions: Mapping[str, dict],
                    depth: int) -> tuple[str, int] | None:
    """The real node output (full id, slot) a link of ``level`` carries; ``None``: nothing connected."""
    for _ in range(MAX_DEPTH * 4):
        link = level.links.get(link_id)
        if link is None:
            raise ValueError(f"link {link_id} is not in the {'subgraph' if level.definition else 'workflow'}'s "
                             f"links (a dangling link; the file is damaged). Reconnect the input in the editor and "
                             f"save again")
        origin, slot = link[1], link[2]
        if level.definition is not None and int(origin) == INPUT_NODE:
            # Through the subgraph's input socket to what the instance is connected to outside.
            name = (level.definition.get("inputs") or [])[slot]["name"]
            outer = next((s for s in level.instance.get("inputs") or [] if s.get("name") == name), None)
            if outer is None or outer.get("link") is None:
                return None
            level, link_id = level.parent, int(outer["link"])
            continue
        node = level.nodes.get(str(origin))
        if node is None:
            raise ValueError(f"link {link_id} comes from node {origin}, which is not in the "
                             f"{'subgraph' if level.definition else 'workflow'} (a dangling link). Reconnect the "
                             f"input in the editor and save again")
        definition = definitions.get(node.get("type"))
        if definition is None:
            return f"{level.prefix}{origin}", slot
        # Into the subgraph: the inner link that feeds its output socket ``slot``.
        child = level.children.get(str(origin)) or _level(definition, f"{level.prefix}{origin}:", level, node,
                                                          definition)
        level.children.setdefault(str(origin), child)
        inner = next((link for link in child.links.values() if int(link[3]) == OUTPUT_NODE and link[4] == slot), None)
        if inner is None:
            return None
        level, link_id = child, inner[0]
    raise ValueError("subgraph links form a cycle")
