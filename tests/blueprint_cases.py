"""Shipped workflows rebuilt around the pack's subgraph blueprints, as a user builds them.

Each case takes a shipped workflow's API file, removes the nodes a blueprint holds and
puts one blueprint node in their place, wired as the user would wire it (checkpoint
MODEL and photo in, patched MODEL out to the sampler). The editor, the runner and a
server must then send/run exactly the shipped workflow's prompt, with the inner nodes
named ``<blueprint node id>:<inner id>`` as the editor names them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from infinite_id.workflow_io.blueprints import BLUEPRINT_MARK, blueprint_path, workflow_with_blueprint
from infinite_id.workflow_io.shipped import api_path
from infinite_id.workflow_io.ui_to_api import id_order

BLUEPRINT_NODE = "30"


@dataclass(frozen=True)
class Case:
    blueprint: str
    workflow: str                      # the shipped workflow it stands in for
    inner: dict[str, str]              # shipped node id -> the blueprint's inner node id
    wiring: dict[str, list]            # blueprint input -> shipped [node id, slot]
    consumers: dict[tuple[str, str], int]  # (shipped node id, input) -> blueprint output slot


CASES = {
    "InfiniteID One Photo": Case(
        "InfiniteID One Photo", "raw_photo", {"4": "1", "5": "2", "6": "3", "8": "4", "9": "5"},
        {"model": ["1", 0], "image": ["7", 0]}, {("11", "model"): 0}),
    "InfiniteID Two People": Case(
        "InfiniteID Two People", "two_people",
        {"4": "1", "5": "2", "6": "3", "9": "4", "10": "5", "15": "6", "16": "7"},
        {"model": ["1", 0], "image_a": ["7", 0], "mask_a": ["13", 0], "image_b": ["8", 0], "mask_b": ["14", 0]},
        {("18", "model"): 0}),
}


def source_prompt(case: Case) -> dict:
    """The shipped API prompt with the blueprint's nodes replaced by one ``blueprint:<name>`` node."""
    prompt = {k: v for k, v in json.loads(api_path(case.workflow).read_text()).items() if k not in case.inner}
    for (nid, input_name), slot in case.consumers.items():
        prompt[nid]["inputs"][input_name] = [BLUEPRINT_NODE, slot]
    prompt[BLUEPRINT_NODE] = {"class_type": BLUEPRINT_MARK + case.blueprint, "inputs": dict(case.wiring),
                              "_meta": {"title": case.blueprint}}
    return prompt


def ui_workflow(case: Case, node_classes) -> dict:
    """The UI file the editor saves after the user dropped the blueprint into the graph."""
    blueprint = json.loads(blueprint_path(case.blueprint).read_text())
    return workflow_with_blueprint(f"{case.workflow}_blueprint", source_prompt(case), node_classes, blueprint)


def expected_prompt(case: Case, ui: dict) -> dict:
    """The shipped prompt with the blueprint's nodes renamed as the editor names them in ``ui``
    (inner nodes whose id an outer node has get new ids; they are found by their title)."""
    titles = {str(n["id"]): n["title"] for n in json.loads(blueprint_path(case.blueprint).read_text())[
        "definitions"]["subgraphs"][0]["nodes"]}
    now = {n["title"]: str(n["id"]) for n in ui["definitions"]["subgraphs"][0]["nodes"]}
    rename = {k: f"{BLUEPRINT_NODE}:{now[titles[v]]}" for k, v in case.inner.items()}
    out = {}
    for nid, node in json.loads(api_path(case.workflow).read_text()).items():
        inputs = {k: [rename.get(v[0], v[0]), v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
        out[rename.get(nid, nid)] = {"class_type": node["class_type"], "inputs": inputs}
    return dict(sorted(out.items(), key=lambda kv: id_order(kv[0])))
