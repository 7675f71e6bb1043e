"""The shipped workflows: in sync, convertible, valid against the registered nodes, runnable.

Every UI file must convert (as the runner converts it) to exactly its API twin, name only
node types and inputs the host knows (also after ``--demo`` swaps in the tiny loaders),
and run end to end through the real executor on the tiny models via the runner's own
``run`` command, writing PNGs that embed the workflow. Runs are cut to 2 steps at
128x128 (and a sweep of 3) to stay fast; the editor itself is checked in test_editor.py.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from infinite_id.cli import run_workflow as run_cli
from infinite_id.host.models import LOADER_INPUTS
from infinite_id.workflow_io.shipped import (
    API_ONLY,
    PACK_ROOT,
    SHIPPED,
    api_path,
    render_all,
    same_workflow,
    thumbnail_path,
    ui_paths,
)
from infinite_id.workflow_io.ui_to_api import ui_to_api

# ComfyUI's template browser lists *.json directly inside these pack folders (app/custom_node_manager.py).
TEMPLATE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")
OLD_WORKFLOW = Path(__file__).parent / "data" / "identity_mixing_v0.2.0.json"

FAST = ["InfiniteIDSampler.steps=2", "EmptyLatentImage.width=128", "EmptyLatentImage.height=128"]
FAST_SWEEP = ["InfiniteIDInterpolate.steps=3", "EmptyLatentImage.batch_size=3"]
# second_pass samples the patched MODEL with core KSampler only; its second image is upscaled 1.5x.
FAST_SECOND_PASS = ["KSampler.steps=2", "EmptyLatentImage.width=128", "EmptyLatentImage.height=128"]
SIZES = {"second_pass": {(128, 128), (192, 192)}}


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_ui_files_are_generated_from_api_files():
    for path, text in render_all().items():
        assert path.is_file(), f"{path} is missing: run scripts/make_workflows.py"
        assert same_workflow(path.read_text(), text), f"{path} is stale: run scripts/make_workflows.py"


def test_each_template_is_listed_once_with_a_fresh_thumbnail():
    import importlib.util

    listed = sorted(p.stem for folder in TEMPLATE_FOLDERS for p in (PACK_ROOT / folder).glob("*.json"))
    assert listed == sorted(SHIPPED), "a UI file in two template folders is listed twice"
    spec = importlib.util.spec_from_file_location("make_workflows", PACK_ROOT / "scripts" / "make_workflows.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for name in SHIPPED:
        path = thumbnail_path(name)
        assert script.thumbnail_digest(path) == script.expected_digest(name), \
            f"{path} is missing or older than {api_path(name)}: run scripts/make_workflows.py --thumbnails"
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.size[0] == image.size[1] >= script.THUMBNAIL_TILE


@pytest.mark.parametrize("name", SHIPPED)
def test_loaders_carry_model_metadata(name):
    """Every file a loader names has a ``properties.models`` entry (name, url, directory): the editor's
    missing-models panel shows the folder from it."""
    for node in _load(ui_paths(name)[0])["nodes"]:
        for need in LOADER_INPUTS.get(node["type"], {}).values():
            value = next(v for v in node["widgets_values"] if isinstance(v, str))
            entries = node["properties"].get("models", [])
            assert [(e["name"], e["directory"]) for e in entries] == [(value, need.folder)], node["title"]
            assert all(e["url"].startswith("https://huggingface.co/") for e in entries)


def test_workflow_saved_with_old_output_names_still_converts():
    """Output names changed (``INFINITEID_IDENTITY`` -> ``identity``); links are by slot, so a workflow
    saved by version 0.2.0 converts to the same prompt as then."""
    assert ui_to_api(_load(OLD_WORKFLOW)) == _load(OLD_WORKFLOW.with_suffix(".api.json"))


@pytest.mark.parametrize("name", SHIPPED)
def test_ui_converts_to_its_api_twin(name):
    for path in ui_paths(name):
        assert ui_to_api(_load(path)) == _load(api_path(name)), path


def _undeclared(prompt: dict) -> list[str]:
    import nodes

    problems = []
    for nid, node in prompt.items():
        cls = nodes.NODE_CLASS_MAPPINGS.get(node["class_type"])
        if cls is None:
            problems.append(f"node {nid}: type {node['class_type']} is not registered")
            continue
        declared = {k for section in cls.INPUT_TYPES().values() for k in section}
        problems += [f"node {nid} ({node['class_type']}): no input '{k}'" for k in node["inputs"] if k not in declared]
    return problems


@pytest.mark.parametrize("name", SHIPPED + API_ONLY)
def test_nodes_and_inputs_exist(name, tmp_path):
    prompt = _load(api_path(name))
    assert _undeclared(prompt) == []
    run_cli.use_demo_models(prompt, tmp_path)
    assert _undeclared(prompt) == []


@pytest.fixture
def cli(tmp_path):
    """``python . run ...`` in-process; the host's input/output folders are restored after."""
    import folder_paths

    saved = folder_paths.get_input_directory(), folder_paths.get_output_directory()
    parser = argparse.ArgumentParser()
    run_cli.add_parser(parser.add_subparsers())

    def invoke(*argv: str) -> int:
        return run_cli.run_command(parser.parse_args(["run", *argv]))

    yield invoke
    folder_paths.set_input_directory(saved[0])
    folder_paths.set_output_directory(saved[1])


def _fast_args(name: str) -> list[str]:
    if name == "second_pass":
        return [arg for item in FAST_SECOND_PASS for arg in ("--set", item)]
    sets = FAST + (FAST_SWEEP if name == "interpolation_sweep" else [])
    return [arg for item in sets for arg in ("--set", item)]


@pytest.mark.parametrize("name", SHIPPED)
def test_runs_end_to_end_on_demo_models(name, cli, tmp_path):
    from infinite_id.host import compat

    if name == "second_pass" and not compat.has_keyed_wrappers():
        pytest.skip("second_pass samples the patched MODEL with core KSampler, which needs a ComfyUI with keyed "
                    "wrappers (comfy.patcher_extension); this host refuses it (tests/test_any_sampler.py)")
    ui = _load(ui_paths(name)[0])
    out = tmp_path / "out"
    assert cli(str(ui_paths(name)[0]), "--demo", "--output", str(out), *_fast_args(name)) == 0
    saves = [n for n in _load(api_path(name)).values() if n["class_type"] == "SaveImage"]
    batch = 3 if name == "interpolation_sweep" else 1
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == len(saves) * batch
    for png in pngs:
        with Image.open(png) as image:
            assert image.size in SIZES.get(name, {(128, 128)})
            assert json.loads(image.text["workflow"]) == ui  # opens in the editor again
            prompt = json.loads(image.text["prompt"])
            assert "InfiniteIDDemoCheckpoint" in {n["class_type"] for n in prompt.values()}


def test_api_file_runs_too(cli, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        assert cli(str(api_path("raw_photo")), "--demo", "--output", str(out), *_fast_args("raw_photo")) == 0
    pngs = sorted(out.rglob("*.png"))
    with Image.open(pngs[0]) as image:
        assert "workflow" not in image.text and "prompt" in image.text
    for png in pngs:
        assert f"saved {png}" in caplog.text
    assert f"saved {len(pngs)} image(s) to {out.resolve()}" in caplog.text


def test_workflow_saved_with_old_output_names_runs(cli, tmp_path):
    out = tmp_path / "out"
    assert cli(str(OLD_WORKFLOW), "--demo", "--output", str(out), *_fast_args("identity_mixing")) == 0
    assert len(list(out.rglob("*.png"))) == 1


def test_missing_models_are_named_with_their_folder(cli, tmp_path, monkeypatch, caplog):
    import folder_paths

    from infinite_id.host.folders import INSIGHTFACE
    from infinite_id.host.models import LOADER_INPUTS

    empty = {}
    for folder in {need.folder for inputs in LOADER_INPUTS.values() for need in inputs.values()} | {INSIGHTFACE}:
        empty[folder] = tmp_path / "models" / folder
        exts = folder_paths.folder_names_and_paths.get(folder, ([], {".safetensors"}))[1]
        monkeypatch.setitem(folder_paths.folder_names_and_paths, folder, ([str(empty[folder])], exts))
    with caplog.at_level(logging.ERROR):
        assert cli(str(ui_paths("raw_photo")[0])) == 2
    text = caplog.text
    for file_name, folder in (("sd_xl_base_1.0.safetensors", "checkpoints"),
                              ("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "clip_vision"),
                              ("ip-adapter-faceid-plusv2_sdxl.bin", "infiniteid")):
        line = next(line for line in text.splitlines() if file_name in line)
        assert str(empty[folder]) in line, line
    assert "antelopev2" in text and str(empty[INSIGHTFACE]) in text
    assert "--demo" in text


def test_unknown_node_types_are_named(cli, tmp_path, caplog):
    ui = _load(ui_paths("raw_photo")[0])
    ui["nodes"][0]["type"] = "SomePackThatIsNotInstalled"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(ui))
    with caplog.at_level(logging.ERROR):
        assert cli(str(path), "--demo") == 2
    assert "SomePackThatIsNotInstalled" in caplog.text
