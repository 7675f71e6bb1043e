"""``eval --server`` against two real ComfyUI servers on loopback, one of them killed mid-run.

Both servers are the active host's ``main.py`` with this pack installed
(tests/comfy_server.py) plus a test-only custom node folder, written into each server's
temporary base directory, that registers the pack's tiny demo loaders. The run batches
identities (``--batch 2``, three identities: per prompt one call of two and one of one).
Server A is killed (SIGKILL) right after it accepted its second call: that call's pairs
and every later one must be made by server B, each pair exactly once.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import urllib.request
from pathlib import Path

import pytest
from comfy_server import comfy_server
from eval_helpers import eval_folders, models_dir  # noqa: F401
from PIL import Image

from infinite_id.cli import evaluate as eval_cli
from infinite_id.cli.run_workflow import demo_photo
from infinite_id.evaluation import generate
from infinite_id.evaluation.plan import load_prompts, safe_name

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


def _made_calls(history: dict) -> dict[str, int]:
    """The calls a server executed (the SaveImage prefix of each prompt it ran) and their identities."""
    made = {}
    for entry in history.values():
        prompt = entry["prompt"][2]
        rows = sum(node["class_type"] == "InfiniteIDEncode" for node in prompt.values())
        for node in prompt.values():
            if node["class_type"] == "SaveImage":
                made[node["inputs"]["filename_prefix"].split("/", 1)[1]] = rows
    return made


def test_batches_spread_over_two_servers_and_survive_one_dying(servers, tmp_path, eval_folders, monkeypatch,
                                                               caplog):
    (url_a, url_b), processes = servers
    killed: dict[str, list[str]] = {}
    submitted: dict[str, list] = {url_a: [], url_b: []}
    original = generate.run_on_servers

    def kill_a_after_its_second_submit(task, client):
        submitted[client.url].append(task)
        if client.url == url_a and len(submitted[url_a]) == 2:
            processes[0].kill()
            processes[0].wait(30)
            killed["pairs"] = task.pairs

    monkeypatch.setattr(generate, "run_on_servers",
                        lambda tasks, clients, job_timeout, on_submit=None: original(tasks, clients, job_timeout,
                                                                     on_submit=kill_a_after_its_second_submit))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(load_prompts()[:4]) + "\n")  # the default list's first four
    people = ("demo_a", "demo_b", "demo_c")
    (tmp_path / "ids").mkdir()
    for name in people:
        Image.fromarray(demo_photo(name)).save(tmp_path / "ids" / f"{name}.png")
    parser = argparse.ArgumentParser()
    eval_cli.add_parser(parser.add_subparsers())
    out = tmp_path / "out"
    args = parser.parse_args(["eval", "--demo", "--identities", str(tmp_path / "ids"), "--prompts", str(prompts),
                              "--server", url_a, "--server", url_b, "--batch", "2", "--job-timeout", "120",
                              "--backbone", "arcface", "--output", str(out), *FAST])
    with caplog.at_level(logging.WARNING):
        assert eval_cli.evaluate_command(args) == 0
    assert "pairs" in killed, "server A never took a second call"
    assert f"server {url_a} stopped answering" in caplog.text

    pairs = [f"raw_photo/{i}/{p:02d}" for i in people for p in range(4)]
    made = sorted(p.relative_to(out / "images").as_posix()[:-4] for p in (out / "images").rglob("*.png"))
    assert made == pairs  # nothing lost
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(m["pair"] for m in manifest) == pairs  # each delivered once
    by = {m["pair"]: m["made_by"] for m in manifest}
    first_on_a = submitted[url_a][0]
    assert sorted(p for p, u in by.items() if u == url_a) == sorted(first_on_a.pairs)
    assert all(by[p] == url_b for p in killed["pairs"])  # the call in flight on A was made by B
    tasks = {t.key: t for ts in submitted.values() for t in ts}
    assert sorted(len(t.pairs) for t in tasks.values()) == [1] * 4 + [2] * 4  # per prompt: a + b, then c
    on_b = _made_calls(_history(url_b))
    tag = {key: safe_name(key.replace("/", "__")) for key in tasks}
    expected = {tag[k]: len(t.pairs) for k, t in tasks.items() if k != first_on_a.key}
    assert on_b == expected  # B ran each of its calls once, with its identities, and none that A had finished
    for path in (out / "images").rglob("*.png"):
        with Image.open(path) as im:
            assert im.size == (64, 64)
    assert len(Path(out / "images.csv").read_text().splitlines()) == 13


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
