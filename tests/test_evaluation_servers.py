"""``eval --server`` against two real ComfyUI servers on loopback, one of them killed mid-run.

Both servers are the active host's ``main.py`` with this pack installed
(tests/comfy_server.py) plus a test-only custom node folder, written into each server's
temporary base directory, that registers the pack's tiny demo loaders. Server A is
killed (SIGKILL) right after it accepted its second pair: that pair and every later one
must be made by server B, each pair exactly once.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from comfy_server import comfy_server
from infinite_id.cli import evaluate as eval_cli
from infinite_id.evaluation import generate
from infinite_id.evaluation.plan import load_prompts
from eval_helpers import eval_folders, models_dir  # noqa: F401

# Delegates to the pack's own demo classes, looked up when the server first asks (the
# pack may load after this folder: custom_nodes are imported in directory order).
TEST_NODES = '''"""Test-only: the Infinite-ID pack's tiny demo loaders on this server."""
import importlib
import os
import sys

PACK_INIT = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", "infinite_id", "__init__.py"))
NAMES = ["InfiniteIDDemoCheckpoint", "InfiniteIDDemoCLIPVision", "InfiniteIDDemoAdapter",
         "InfiniteIDDemoFaceAnalysis"]


def _demo():
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and os.path.realpath(path) == PACK_INIT:
            return importlib.import_module(name + ".demo.nodes").DEMO_NODES
    raise RuntimeError("the Infinite-ID pack is not loaded in this server")


class _Delegate(type):
    def __getattr__(cls, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(_demo()[cls._node], attr)


def _node(name):
    def __init__(self):
        self._impl = _demo()[name]()

    def __getattr__(self, attr):
        if attr == "_impl":
            raise AttributeError(attr)
        return getattr(self._impl, attr)

    return _Delegate(name, (), {"_node": name, "__init__": __init__, "__getattr__": __getattr__})


NODE_CLASS_MAPPINGS = {n: _node(n) for n in NAMES}
'''
FAST = ["--set", "InfiniteIDSampler.steps=1", "--set", "EmptyLatentImage.width=64",
        "--set", "EmptyLatentImage.height=64"]


@pytest.fixture(scope="module")
def servers(host_info, tmp_path_factory):
    files = {"custom_nodes/zz_infiniteid_eval_test/__init__.py": TEST_NODES.encode()}
    processes: list = []
    with contextlib.ExitStack() as stack:
        urls = []
        for name in ("a", "b"):
            base = tmp_path_factory.mktemp(f"server_{name}")
            urls.append(stack.enter_context(comfy_server(host_info.path, base, base / "server.log", files,
                                                         processes=processes)))
        yield urls, processes


def _history(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/history", timeout=30) as resp:
        return json.loads(resp.read())


def _made_pairs(history: dict) -> list[str]:
    """The pairs a server executed, read from the SaveImage prefix of each prompt it ran."""
    made = []
    for entry in history.values():
        prompt = entry["prompt"][2]
        for node in prompt.values():
            if node["class_type"] == "SaveImage":
                made.append(node["inputs"]["filename_prefix"].split("/", 1)[1])
    return made


def test_pairs_spread_over_two_servers_and_survive_one_dying(servers, tmp_path, eval_folders, monkeypatch, caplog):
    (url_a, url_b), processes = servers
    killed: dict[str, str] = {}
    submitted: dict[str, list[str]] = {url_a: [], url_b: []}
    original = generate.run_on_servers

    def kill_a_after_its_second_submit(task, client):
        submitted[client.url].append(task.key)
        if client.url == url_a and len(submitted[url_a]) == 2:
            processes[0].kill()
            processes[0].wait(30)
            killed["pair"] = task.key

    monkeypatch.setattr(generate, "run_on_servers",
                        lambda tasks, clients, job_timeout, on_submit=None: original(tasks, clients, job_timeout,
                                                                     on_submit=kill_a_after_its_second_submit))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(load_prompts()[:4]) + "\n")  # the default list's first four
    parser = argparse.ArgumentParser()
    eval_cli.add_parser(parser.add_subparsers())
    out = tmp_path / "out"
    args = parser.parse_args(["eval", "--demo", "--prompts", str(prompts), "--server", url_a, "--server", url_b,
                              "--job-timeout", "120", "--backbone", "arcface", "--output", str(out), *FAST])
    with caplog.at_level(logging.WARNING):
        assert eval_cli.evaluate_command(args) == 0
    assert "pair" in killed, "server A never took a second pair"
    assert f"server {url_a} stopped answering" in caplog.text

    pairs = [f"raw_photo/{i}/{p:02d}" for i in ("demo_a", "demo_b") for p in range(4)]
    made = sorted(p.relative_to(out / "images").as_posix()[:-4] for p in (out / "images").rglob("*.png"))
    assert made == pairs  # nothing lost
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(m["pair"] for m in manifest) == pairs  # each delivered once
    by = {m["pair"]: m["made_by"] for m in manifest}
    assert [p for p, u in by.items() if u == url_a] == submitted[url_a][:1]
    assert by[killed["pair"]] == url_b  # the pair in flight on A was made by B
    on_b = _made_pairs(_history(url_b))
    tags = {p: p.replace("/", "__") for p in pairs}
    assert sorted(on_b) == sorted(tags[p] for p, u in by.items() if u == url_b)  # B ran each of its pairs once
    assert tags[submitted[url_a][0]] not in on_b  # and none that A had finished
    for path in (out / "images").rglob("*.png"):
        with Image.open(path) as im:
            assert im.size == (64, 64)
    assert len(Path(out / "images.csv").read_text().splitlines()) == 9


def test_prompt_refused_by_a_server_stops_with_its_message(servers, tmp_path, eval_folders, caplog):
    (_, url_b), _ = servers
    (tmp_path / "p.txt").write_text("a photo of a person\n")
    parser = argparse.ArgumentParser()
    eval_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["eval", "--demo", "--prompts", str(tmp_path / "p.txt"), "--server", url_b,
                              "--backbone", "arcface", "--output", str(tmp_path / "out"),
                              "--set", "InfiniteIDSampler.sampler_name=no_such_sampler", *FAST])
    with caplog.at_level(logging.ERROR):
        assert eval_cli.evaluate_command(args) == 1
    assert "refused" in caplog.text and "no_such_sampler" in caplog.text
    assert "Run the same command again to resume" in caplog.text
