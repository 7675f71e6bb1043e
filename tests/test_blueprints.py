"""The pack's subgraph blueprints (``subgraphs/*.json``): generated, served, and running.

A blueprint dropped between a checkpoint and a sampler must give exactly the prompt of
the shipped workflow it stands for (the editor's "Queue" and the runner flatten it the
same way; ``test_editor.py`` checks the editor's side in the browser), run through
``python . run`` on the demo models, and run on a real ComfyUI server posted to
``/prompt``. On a current host the server must list the blueprints at
``/global_subgraphs`` (``app/subgraph_manager.py``) as the editor's node library reads them.
"""
from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from blueprint_cases import BLUEPRINT_NODE, CASES, expected_prompt, ui_workflow
from comfy_server import PACK_NAME, comfy_server
from PIL import Image
from test_workflows import cli  # noqa: F401  (fixture: ``python . run`` in-process)

from infinite_id.cli import run_workflow as run_cli
from infinite_id.host.models import LOADER_INPUTS, model_metadata
from infinite_id.workflow_io.blueprints import blueprint_dir, blueprint_names, blueprint_path, render_all_blueprints
from infinite_id.workflow_io.shipped import api_path, ui_path
from infinite_id.workflow_io.ui_to_api import ui_to_api


def _classes():
    import nodes

    return nodes.NODE_CLASS_MAPPINGS


def test_blueprints_are_generated_from_their_sources():
    files = render_all_blueprints()
    assert sorted(p.name for p in files) == sorted(p.name for p in blueprint_dir().glob("*.json"))
    assert {"InfiniteID One Photo", "InfiniteID Two People"} <= set(blueprint_names())
    for path, text in files.items():
        assert path.read_text() == text, f"{path} is stale: run scripts/make_workflows.py"


@pytest.mark.parametrize("name", sorted(CASES))
def test_blueprint_names_its_models_as_the_templates_do(name):
    """Each loader inside carries the file name, folder and address the shipped workflow's loader carries."""
    case = CASES[name]
    inner = json.loads(blueprint_path(name).read_text())["definitions"]["subgraphs"][0]["nodes"]
    template = {n["type"]: n for n in json.loads(ui_path(case.workflow).read_text())["nodes"]}
    loaders = [n for n in inner if n["type"] in LOADER_INPUTS]
    assert {n["type"] for n in loaders} == {"CLIPVisionLoader", "InfiniteIDAdapterLoader"}
    for node in loaders:
        assert node["properties"]["models"] == template[node["type"]]["properties"]["models"]
        assert node["widgets_values"] == template[node["type"]]["widgets_values"]
        assert node["properties"]["models"] == model_metadata(node["type"], dict(zip(
            LOADER_INPUTS[node["type"]], node["widgets_values"])))


@pytest.mark.parametrize("name", sorted(CASES))
def test_workflow_from_blueprint_converts_to_the_shipped_prompt(name):
    case = CASES[name]
    ui = ui_workflow(case, _classes())
    got = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in ui_to_api(ui).items()}
    assert got == expected_prompt(case, ui)
    assert any(k.startswith(f"{BLUEPRINT_NODE}:") for k in got)


@pytest.mark.parametrize("name", sorted(CASES))
def test_workflow_from_blueprint_runs(name, cli, tmp_path):
    workflow = tmp_path / f"{name}.json"
    ui = ui_workflow(CASES[name], _classes())
    workflow.write_text(json.dumps(ui))
    out = tmp_path / "out"
    assert cli(str(workflow), "--demo", "--output", str(out), "--set", "InfiniteIDSampler.steps=2") == 0
    saves = [n for n in json.loads(api_path(CASES[name].workflow).read_text()).values()
             if n["class_type"] == "SaveImage"]
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == len(saves)
    with Image.open(pngs[0]) as image:
        assert json.loads(image.text["workflow"]) == ui  # opens in the editor again, blueprint node included


def test_blueprint_workflow_with_a_dangling_inner_link_is_named(tmp_path):
    case = CASES["InfiniteID One Photo"]
    ui = ui_workflow(case, _classes())
    definition = ui["definitions"]["subgraphs"][0]
    definition["links"] = [link for link in definition["links"] if link["origin_id"] != -10]
    with pytest.raises(ValueError, match="dangling link"):
        ui_to_api(ui)


@pytest.fixture(scope="module")
def server(host_info, tmp_path_factory):
    from test_evaluation_servers import TEST_NODES

    base = tmp_path_factory.mktemp("blueprint_server")
    files = {"custom_nodes/zz_infiniteid_demo_loaders/__init__.py": TEST_NODES.encode()}
    with comfy_server(host_info.path, base, base / "server.log", files) as url:
        yield url, base


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def test_server_lists_the_blueprints(server, host_info):
    url, _ = server
    if not (Path(host_info.path) / "app" / "subgraph_manager.py").is_file():
        pytest.skip("this host has no subgraph blueprints (app/subgraph_manager.py)")
    listed = {e["name"]: (k, e) for k, e in _get(f"{url}/global_subgraphs").items()
              if e["info"]["node_pack"] == f"custom_nodes.{PACK_NAME}"}
    assert sorted(listed) == blueprint_names()
    for name, (key, _) in listed.items():
        entry = _get(f"{url}/global_subgraphs/{key}")
        assert json.loads(entry["data"]) == json.loads(blueprint_path(name).read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_server_runs_the_blueprint_prompt(server, name):
    """The flattened prompt (what the editor queues), on the demo loaders, through a real ``/prompt``."""
    url, base = server
    ui = ui_workflow(CASES[name], _classes())
    prompt = ui_to_api(ui)
    run_cli.use_demo_models(prompt, base / "input")
    body = json.dumps({"prompt": prompt, "extra_data": {"extra_pnginfo": {"workflow": ui}}}).encode()
    request = urllib.request.Request(f"{url}/prompt", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            prompt_id = json.loads(resp.read())["prompt_id"]
    except urllib.error.HTTPError as exc:
        pytest.fail(f"/prompt refused the blueprint's prompt: {exc.read().decode()[:2000]}")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        entry = _get(f"{url}/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None or entry and entry.get("outputs"):
            break
        time.sleep(1)
    else:
        pytest.fail(f"the server did not finish the prompt:\n{(base / 'server.log').read_text()[-3000:]}")
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = [i for out in entry["outputs"].values() for i in out.get("images", [])]
    assert images and all((base / "output" / i["subfolder"] / i["filename"]).is_file() for i in images)
