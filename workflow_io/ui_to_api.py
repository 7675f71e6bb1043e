"""UI-format (graph editor) workflows to API-format prompts, as the editor's "Queue" does.

Why here and not in the editor: the headless runner must take the ``.json`` files people
save from ComfyUI and share, and the editor is not running. A UI workflow stores widget
values as a bare list (``widgets_values``) in the order the editor built the widgets;
the names come from the node's ``INPUT_TYPES``. :func:`widget_layout` rebuilds that order
the way both the 2024 and the current editor do (one widget per INT/FLOAT/STRING/
BOOLEAN/combo input, required then optional, an extra ``control_after_generate`` value
after seed widgets and an ``upload`` value for image-upload nodes), and
:func:`ui_to_api` follows links through Reroute and bypassed nodes, drops muted nodes,
skips Notes and takes a Primitive node's value into the widget it drives. Subgraphs
(blueprints) are flattened first, as the editor does (``subgraphs.py``).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .subgraphs import flatten_subgraphs

log = logging.getLogger(__name__)

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
SEED_NAMES = frozenset({"seed", "noise_seed"})  # both editors add a control widget to these by name
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
UPLOAD_OPTIONS = ("image_upload",)
# Editor-only node types: never sent to the server.
VIRTUAL_NODES = frozenset({"Reroute", "Note", "MarkdownNote", "PrimitiveNode"})
MUTED, BYPASSED = 2, 4


@dataclass(frozen=True)
class WidgetSlot:
    """One entry of ``widgets_values``: an input's value, or an editor-only extra."""

    name: str
    kind: str  # "input", "control" (control_after_generate) or "upload"
    spec: tuple = ()


def plain(value: Any) -> Any:
    """A host's str-enum type name (``IO.CONDITIONING``) as the plain string the editor sees."""
    return str.__str__(value) if isinstance(value, str) else value


def is_widget(spec: Any) -> bool:
    """Whether the editor shows this ``INPUT_TYPES`` entry as a widget (not a socket)."""
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if options.get("forceInput"):
        return False
    return isinstance(kind, (list, tuple)) or plain(kind) in WIDGET_TYPES


def declared_inputs(node_class: Any) -> list[tuple[str, tuple]]:
    """``(name, spec)`` of every required and optional input, in the editor's order."""
    types = node_class.INPUT_TYPES()
    return [(name, tuple(spec)) for section in ("required", "optional")
            for name, spec in (types.get(section) or {}).items()]


def widget_layout(node_class: Any) -> list[WidgetSlot]:
    """The entries of a node's ``widgets_values``, in the order the editor writes them."""
    slots: list[WidgetSlot] = []
    types = node_class.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, spec in (types.get(section) or {}).items():
            spec = tuple(spec)
            if not is_widget(spec):
                continue
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            slots.append(WidgetSlot(name, "input", spec))
            kind = "COMBO" if isinstance(spec[0], (list, tuple)) else plain(spec[0])
            if options.get("control_after_generate") or (kind == "INT" and name in SEED_NAMES):
                slots.append(WidgetSlot(name, "control"))
        if section == "required" and any(
                len(s) > 1 and isinstance(s[1], dict) and any(s[1].get(o) for o in UPLOAD_OPTIONS)
                for s in (types.get("required") or {}).values()):
            # The editor appends the upload button after the required inputs.
            slots.append(WidgetSlot("upload", "upload"))
    return slots


def socket_inputs(node_class: Any) -> list[tuple[str, str]]:
    """``(name, type)`` of the inputs the editor shows as sockets."""
    return [(name, plain(spec[0])) for name, spec in declared_inputs(node_class) if not is_widget(spec)]


def widget_values_by_name(node_class: Any, values: Any) -> dict[str, Any]:
    """Map a node's ``widgets_values`` (list, or a dict some packs save) to input names."""
    layout = widget_layout(node_class)
    if isinstance(values, dict):
        return {s.name: values[s.name] for s in layout if s.kind == "input" and s.name in values}
    out: dict[str, Any] = {}
    values = list(values or [])
    i = 0
    for slot in layout:
        if i >= len(values):
            break
        if slot.kind == "control":
            i += values[i] in CONTROL_VALUES  # older saves may lack it
        elif slot.kind == "upload":
            i += values[i] == "image"
        else:
            out[slot.name] = values[i]
            i += 1
    if i < len(values):
        log.debug("%s: %d widget values beyond the known inputs ignored", getattr(node_class, "__name__", "?"),
                  len(values) - i)
    return out


def _links_by_id(workflow: Mapping) -> dict[int, tuple[str, int, str, int, str]]:
    links = {}
    for link in workflow.get("links") or []:
        try:
            if isinstance(link, dict):  # schema version 1
                link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                        link.get("type")]
            links[int(link[0])] = (_id_text(link[1]), int(link[2]), _id_text(link[3]), int(link[4]), link[5])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ValueError(f"link {str(link)[:80]} is malformed ({type(exc).__name__}: {exc}); the workflow "
                             f"file is damaged, open it in the editor and save it again") from None
    return links


def _id_text(value: Any) -> str:
    """A node id as the prompt names it: ``"7"``, or ``"12:3"`` for a node inside subgraph instance 12."""
    text = str(value)
    if isinstance(value, bool) or not all(part.lstrip("-").isdigit() for part in text.split(":")):
        raise ValueError(f"node id {value!r} is not a number")
    return str(int(text)) if ":" not in text else text


def _node_id(node: Mapping) -> str:
    try:
        return _id_text(node["id"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"a node without a numeric id ({str(node)[:80]}); the workflow file is damaged") from None


def id_order(node_id: str) -> tuple[int, ...]:
    """Sort key of prompt ids: ``"2" < "10" < "10:1" < "11"``."""
    return tuple(int(part) for part in str(node_id).split(":"))


def ui_to_api(workflow: Mapping, node_classes: Mapping[str, Any] | None = None,
              display_names: Mapping[str, str] | None = None) -> dict[str, dict]:
    """Convert a UI-format workflow to the API prompt the editor would queue.

    ``node_classes`` defaults to the host's registered nodes. Raises ``ValueError`` naming
    every node type that is not installed (a workflow that cannot run should say why
    before anything loads).
    """
    if node_classes is None or display_names is None:
        import nodes

        node_classes = nodes.NODE_CLASS_MAPPINGS if node_classes is None else node_classes
        display_names = nodes.NODE_DISPLAY_NAME_MAPPINGS if display_names is None else display_names
    if not all(isinstance(n, dict) and isinstance(n.get("type"), str) for n in workflow.get("nodes") or []):
        raise ValueError("a node entry is not an object with a 'type'; the workflow file is damaged")
    for definition in (workflow.get("definitions") or {}).get("subgraphs") or []:
        if not all(isinstance(n, dict) and isinstance(n.get("type"), str) for n in definition.get("nodes") or []):
            raise ValueError(f"subgraph '{definition.get('name')}': a node entry is not an object with a 'type'; "
                             "the workflow file is damaged")
    workflow = flatten_subgraphs(workflow)  # the editor's "Queue" sends the nodes inside subgraphs
    graph_nodes = {_node_id(n): n for n in workflow.get("nodes") or []}
    missing = sorted({n["type"] for n in graph_nodes.values()
                      if n["type"] not in node_classes and n["type"] not in VIRTUAL_NODES})
    if missing:
        hint = " (group nodes: convert them back to nodes in the editor first)" if any(
            str(t).startswith("workflow") for t in missing) else ""
        raise ValueError(f"the workflow uses node types that are not installed: {', '.join(missing)}{hint}")
    links = _links_by_id(workflow)
    resolve = _make_resolver(graph_nodes, links)
    prompt: dict[str, dict] = {}
    for node_id in sorted(graph_nodes, key=id_order):
        node = graph_nodes[node_id]
        if node["type"] in VIRTUAL_NODES or node.get("mode", 0) in (MUTED, BYPASSED):
            continue
        cls = node_classes[node["type"]]
        inputs = widget_values_by_name(cls, node.get("widgets_values"))
        for slot in node.get("inputs") or []:
            if not isinstance(slot, dict) or slot.get("link") is None:
                continue
            where = f"node {node_id} ({node['type']}) input '{slot.get('name')}'"
            try:
                value = resolve(int(slot["link"]), slot.get("type"))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{where}: {exc}") from None
            if value is not None:
                inputs[slot["name"]] = value
        title = node.get("title") or display_names.get(node["type"]) or node["type"]
        prompt[str(node_id)] = {"inputs": inputs, "class_type": node["type"], "_meta": {"title": title}}
    return prompt


def _make_resolver(graph_nodes: Mapping[str, dict], links: Mapping[int, tuple]) -> Callable[[int, Any], Any]:
    """``resolve(link_id, wanted_type)``: ``[origin_id, slot]``, a literal, or None (input dropped)."""

    def resolve(link_id: int, wanted: Any) -> Any:
        for _ in range(len(graph_nodes) + 1):  # each hop passes one node; more means a cycle
            link = links.get(link_id)
            if link is None:
                raise ValueError(f"link {link_id} is not in the workflow's links (a dangling link; the file is "
                                 f"damaged). Reconnect the input in the editor and save again")
            origin_id, origin_slot = link[0], link[1]
            origin = graph_nodes.get(origin_id)
            if origin is None:
                raise ValueError(f"link {link_id} comes from node {origin_id}, which is not in the workflow (a "
                                 f"dangling link). Reconnect the input in the editor and save again")
            if origin.get("mode", 0) == MUTED:
                return None
            if origin["type"] == "PrimitiveNode":
                # Saved graphs keep the same value in the target widget; the current editor reads this one.
                return (origin.get("widgets_values") or [None])[0]
            inputs = origin.get("inputs") or []
            if origin["type"] == "Reroute":
                next_link = inputs[0].get("link") if inputs else None
            elif origin.get("mode", 0) == BYPASSED:
                # As the editor: the input at the same index if its type matches, else the first that does.
                order = [origin_slot] + list(range(len(inputs)))
                match = next((i for i in order if i < len(inputs) and inputs[i].get("type") == wanted), None)
                next_link = inputs[match].get("link") if match is not None else None
            elif origin["type"] in VIRTUAL_NODES:
                return None
            else:
                return [origin_id, origin_slot]
            if next_link is None:
                return None
            link_id = int(next_link)  # a non-number is reported by the caller with the input's name
        raise ValueError(f"link {link_id}: the links form a cycle")

    return resolve
