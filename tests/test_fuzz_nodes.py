"""Generated bad values into every input of every pack node, through the host's real executor.

For each node, inputs are taken from its ``INPUT_TYPES``; one input at a time gets a bad
value for its type (NaN, inf, huge and negative numbers, empty, huge, NUL and path-like
strings, unknown options, and for sockets wrong objects and wrongly shaped or typed
tensors, sent by a source node). Every run must end in one of two ways:

- success, or the host's validation refusing the prompt (its message names the node);
- an error raised by the node itself whose message starts with the node's name
  (``InfiniteIDError``, the pack's user-facing error), never another exception type;

and in both cases no traceback is logged, no file appears outside ComfyUI's folders
(input, output, temp, models; all temporary here), and the next good prompt still runs.

Bounded for CI: a fixed seed picks at most ``CASES_PER_INPUT`` cases per input.
"""
from __future__ import annotations

import copy
import itertools
import logging
import os
import random
import sys
from pathlib import Path
from typing import Any

import folder_paths
import fuzz_sources
import pytest
import torch
from identity_prompts import as_image, face_rgb

from infinite_id.host.executor import PromptError
from infinite_id.host.folders import ADAPTERS
from infinite_id.nodes import NODE_CLASS_MAPPINGS as PACK_NODES

SEED = 13
CASES_PER_INPUT = 2
# Nodes the lead owns (engine rewrite in progress): problems found there are reported as
# xfail with the exact cases instead of failing CI. Remove a name once its node passes.
LEAD_OWNED: frozenset[str] = frozenset()
_salt = itertools.count(100)


def _huge_identity(scale: float = 1e30):
    from infinite_id.demo.tiny_identity import random_identity

    identity = random_identity(seed=3)
    identity.cond = identity.cond * scale  # set after construction, as another pack could
    return identity


def _nan_identity():
    identity = _huge_identity(1.0)
    identity.uncond = torch.full_like(identity.uncond, float("nan"))
    return identity


def _narrow_identity():
    from infinite_id.identity.types import Identity

    return Identity(cond=torch.ones(1, 4, 7), uncond=torch.zeros(1, 4, 7))


def _nan_adapter():
    from infinite_id.demo.nodes import _adapter

    adapter = copy.deepcopy(_adapter(1))
    with torch.no_grad():
        adapter.kv.to_k[0].weight.fill_(float("nan"))
    adapter._patcher = None
    return adapter


_FACE = as_image(face_rgb((5, 5), size=(128, 128)))
SOCKET_CASES: dict[str, list[tuple[str, Any]]] = {
    "IMAGE": [("empty batch", lambda: torch.zeros(0, 64, 64, 3)), ("5 channels", lambda: torch.rand(1, 64, 64, 5)),
              ("NaN pixels", lambda: torch.full((1, 64, 64, 3), float("nan"))),
              ("uint8", lambda: (_FACE * 255).to(torch.uint8)), ("bool", lambda: _FACE > 0.5),
              ("2-D", lambda: torch.rand(64, 64)), ("1x1", lambda: torch.rand(1, 1, 1, 3)),
              ("0..255 floats", lambda: _FACE * 255), ("a string", lambda: "image.png"), ("None", lambda: None)],
    "LATENT": [("0 rows", lambda: {"samples": torch.zeros(0, 4, 8, 8)}), ("5-D", lambda: {"samples": torch.rand(1, 4, 2, 8, 8)}),
               ("no samples", lambda: {}), ("NaN", lambda: {"samples": torch.full((1, 4, 8, 8), float("nan"))}),
               ("a string", lambda: "latent")],
    "MODEL": [("a string", lambda: "model"), ("None", lambda: None), ("a tensor", lambda: torch.zeros(3))],
    "CONDITIONING": [("empty list", lambda: []), ("a string", lambda: "a photo"), ("None", lambda: None)],
    "INFINITEID_IDENTITY": [("a string", lambda: "alice"), ("tokens of 1e30", _huge_identity),
                            ("NaN uncond", _nan_identity), ("7-wide tokens", _narrow_identity), ("None", lambda: None)],
    "INFINITEID_ADAPTER": [("a string", lambda: "adapter.safetensors"), ("NaN key weights", _nan_adapter),
                           ("None", lambda: None)],
    "FACEANALYSIS": [("a string", lambda: "antelopev2"), ("an object", object), ("None", lambda: None)],
    "CLIP_VISION": [("a string", lambda: "clip"), ("an object", object)],
    "MASK": [("zeros", lambda: torch.zeros(1, 64, 64)), ("NaN", lambda: torch.full((1, 64, 64), float("nan"))),
             ("0..255", lambda: torch.full((1, 64, 64), 255.0)), ("5-D", lambda: torch.ones(1, 1, 1, 8, 8)),
             ("empty", lambda: torch.ones(1, 0, 8)), ("int64", lambda: torch.ones(1, 8, 8, dtype=torch.int64)),
             ("batch 7", lambda: torch.ones(7, 64, 64)), ("a string", lambda: "mask.png"), ("None", lambda: None)],
}
GENERIC_SOCKET_CASES = [("a string", lambda: "x"), ("None", lambda: None)]


def widget_cases(kind: str, options: dict, outside: Path) -> list[tuple[str, Any]]:
    """Bad values for one widget input of ``kind`` (the editor's widget types)."""
    if kind == "INT":
        lo, hi = options.get("min", -(2 ** 63)), options.get("max", 2 ** 63)
        return [("-1", -1), ("below min", lo - 1), ("above max", hi + 1), ("2**64", 2 ** 64), ("-2**63", -(2 ** 63)),
                ("NaN", float("nan")), ("1.5", 1.5), ("text", "12abc")]
    if kind == "FLOAT":
        return [("NaN", float("nan")), ("inf", float("inf")), ("-inf", float("-inf")), ("1e30", 1e30),
                ("-1e30", -1e30), ("-1", -1.0), ("text", "abc")]
    if kind == "BOOLEAN":
        return [("text", "maybe"), ("2", 2), ("-1", -1)]
    if kind == "STRING":
        return [("empty", ""), ("blank", "  "), ("100k chars", "x" * 100_000), ("NUL", "a\0b"),
                ("../ path", "../../outside/escape"), ("absolute path", str(outside / "abs_escape")),
                ("unicode digit", "input_²"), ("commas", ",,"), ("nan", "nan"), ("300 x é", "é" * 300)]
    # COMBO
    return [("empty", ""), ("unknown option", "no-such-option"), ("../ path", "../../outside/escape.safetensors"),
            ("NUL", "a\0b"), ("a number", 5)]


def _kind(spec: tuple) -> str:
    return "COMBO" if isinstance(spec[0], (list, tuple)) else str.__str__(spec[0]) if isinstance(spec[0], str) else "?"


def base_graph(salt: int) -> dict:
    """Good sources for every socket type the pack's nodes take (demo models, tiny sizes)."""
    return {
        "ckpt": {"class_type": "InfiniteIDDemoCheckpoint", "inputs": {"seed": 0}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a person", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "adapter": {"class_type": "InfiniteIDDemoAdapter", "inputs": {"seed": 1}},
        "identity": {"class_type": "InfiniteIDDemoIdentity", "inputs": {"seed": salt, "count": 1}},
        "fa": {"class_type": "InfiniteIDDemoFaceAnalysis", "inputs": {}},
        "cv": {"class_type": "InfiniteIDDemoCLIPVision", "inputs": {}},
        "img": fuzz_sources.source("IMAGE", _FACE),
        "mask": fuzz_sources.source("MASK", torch.ones(1, 64, 64)),
        "apply": {"class_type": "InfiniteIDApply", "inputs": {
            "model": ["ckpt", 0], "adapter": ["adapter", 0], "identity": ["identity", 0], "weight": 1.0,
            "attention_mode": "mixed", "cross_attention_merge": True, "adain": "off", "start_percent": 0.0,
            "end_percent": 1.0, "mix_start_percent": 0.0, "mix_end_percent": 1.0, "blocks": "all"}},
    }


GOOD_LINKS = {"MODEL": ["ckpt", 0], "CONDITIONING": ["pos", 0], "LATENT": ["latent", 0],
              "INFINITEID_ADAPTER": ["adapter", 0], "INFINITEID_IDENTITY": ["identity", 0], "FACEANALYSIS": ["fa", 0],
              "CLIP_VISION": ["cv", 0], "IMAGE": ["img", 0], "MASK": ["mask", 0]}
# Optional sockets left unconnected in the good prompt (connected, they would make it invalid).
LEFT_OPEN = {("InfiniteIDRegions", "regions")}
# Good widget values where the default would be slow or meaningless here.
GOOD_VALUES = {("InfiniteIDSampler", "steps"): 1, ("InfiniteIDFaceSimilarity", "backbone"): "arcface",
               ("InfiniteIDClipScore", "prompt"): "a photo of a person", ("InfiniteIDSaveIdentity", "name"): "fuzz"}


def target_prompt(node_type: str, salt: int) -> tuple[dict, list[tuple[str, tuple]]]:
    """The base graph plus ``node_type`` with good inputs, its outputs in a sink; and its inputs."""
    cls = PACK_NODES[node_type]
    types = cls.INPUT_TYPES()
    declared = [(name, tuple(spec)) for section in ("required", "optional")
                for name, spec in (types.get(section) or {}).items()]
    prompt = base_graph(salt)
    inputs: dict[str, Any] = {}
    for name, spec in declared:
        kind = _kind(spec)
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        if (node_type, name) in LEFT_OPEN:
            continue
        if (node_type, name) in GOOD_VALUES:
            inputs[name] = GOOD_VALUES[(node_type, name)]
        elif kind == "COMBO":
            choices = list(spec[0])
            inputs[name] = options.get("default", choices[0] if choices else "")
        elif kind in ("INT", "FLOAT", "STRING", "BOOLEAN"):
            inputs[name] = options.get("default", {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[kind])
        elif kind == "MODEL" and node_type in ("InfiniteIDSampler", "InfiniteIDGuider"):
            inputs[name] = ["apply", 0]
        elif kind == "CONDITIONING" and name == "negative":
            inputs[name] = ["neg", 0]
        elif kind in GOOD_LINKS:
            inputs[name] = list(GOOD_LINKS[kind])
    prompt["target"] = {"class_type": node_type, "inputs": inputs}
    outputs = {t: i for i, t in reversed(list(enumerate(cls.RETURN_TYPES)))}
    links = {t.lower(): ["target", i] for t, i in outputs.items() if t in fuzz_sources.SOCKET_TYPES}
    prompt["sink"] = fuzz_sources.sink(f"fuzz-{salt}", **links)
    return prompt, declared


def good_prompt(salt: int) -> dict:
    """A pipeline over most nodes; ``salt`` changes the identity so it really runs again."""
    prompt = base_graph(salt)
    prompt["iid"] = {"class_type": "InfiniteIDSampler", "inputs": {
        "model": ["apply", 0], "seed": 5, "steps": 1, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0], "denoise": 1.0}}
    prompt["mix"] = {"class_type": "InfiniteIDMix", "inputs": {"identity_1": ["identity", 0],
                                                               "identity_2": ["identity", 0], "weights": "1, 0.5"}}
    prompt["enc"] = {"class_type": "InfiniteIDEncode", "inputs": {
        "face_analysis": ["fa", 0], "clip_vision": ["cv", 0], "adapter": ["adapter", 0], "image": ["img", 0],
        "face_index": -1, "average": "embeddings", "skip_images_without_face": True}}
    prompt["sink"] = fuzz_sources.sink(f"good-{salt}", latent=["iid", 0], infiniteid_identity=["mix", 0],
                                       image=["enc", 1])
    return prompt


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """ComfyUI's input/output/temp and the first adapter folder in tmp_path/comfy; cwd elsewhere."""
    comfy = tmp_path / "comfy"
    for name in ("input", "output", "temp", "models/infiniteid"):
        (comfy / name).mkdir(parents=True)
    saved = folder_paths.get_input_directory(), folder_paths.get_output_directory(), folder_paths.get_temp_directory()
    folder_paths.set_input_directory(str(comfy / "input"))
    folder_paths.set_output_directory(str(comfy / "output"))
    folder_paths.set_temp_directory(str(comfy / "temp"))
    paths, extensions = folder_paths.folder_names_and_paths[ADAPTERS]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, ADAPTERS,
                        ([str(comfy / "models" / "infiniteid")] + list(paths), extensions))
    if hasattr(folder_paths, "filename_list_cache"):
        monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    yield tmp_path
    folder_paths.set_input_directory(saved[0])
    folder_paths.set_output_directory(saved[1])
    folder_paths.set_temp_directory(saved[2])


def _listing(folder: str) -> set[str]:
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


def check_outcome(runner, prompt: dict, node_type: str, caplog) -> str | None:
    """Run ``prompt``; the problem found (text), or None when the outcome is one of the allowed ones."""
    caplog.clear()
    try:
        runner.run(prompt)
        problem = None
    except PromptError as exc:
        details = exc.details if isinstance(exc.details, dict) else {}
        if "exception_message" in details:  # raised while executing a node
            where, message = details.get("node_type"), str(details.get("exception_message"))
            kind = str(details.get("exception_type"))
            if where != node_type:
                problem = f"failed in {where} instead: {kind}: {message[:200]}"
            elif not message.startswith(node_type) or not kind.endswith("InfiniteIDError"):
                problem = f"{kind}: {message[:200]}"
            else:
                problem = None
        elif details:  # the host's validation: it names the node itself
            problem = None if node_type in str(exc) else f"validation message without the node: {str(exc)[:200]}"
        else:
            problem = f"no result: {exc}"
    except Exception as exc:  # noqa: BLE001 - anything escaping the executor is a finding
        problem = f"escaped the executor: {type(exc).__name__}: {str(exc)[:200]}"
    if "Traceback" in caplog.text:
        tb = caplog.text[caplog.text.index("Traceback"):][:300].replace("\n", " | ")
        problem = (problem + "; " if problem else "") + f"traceback logged: {tb}"
    return problem


def cases_for(node_type: str, declared, outside: Path, rng: random.Random):
    for name, spec in declared:
        kind = _kind(spec)
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        if kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
            pool = [(label, value, False) for label, value in widget_cases(kind, options, outside)]
        else:
            pool = [(label, factory, True) for label, factory in SOCKET_CASES.get(kind, GENERIC_SOCKET_CASES)]
        for label, value, socket in rng.sample(pool, min(CASES_PER_INPUT, len(pool))):
            yield name, kind, label, value, socket


@pytest.mark.parametrize("node_type", sorted(PACK_NODES))
def test_bad_values_into_every_input(node_type, runner, sandbox, caplog):
    rng = random.Random(f"{SEED}-{node_type}")
    outside = sandbox / "outside"
    base_listing = _listing(getattr(folder_paths, "base_path", "."))
    problems = []
    with caplog.at_level(logging.WARNING):
        salt = next(_salt)
        prompt, declared = target_prompt(node_type, salt)
        for name, kind, label, value, socket in cases_for(node_type, declared, outside, rng):
            case = copy.deepcopy(prompt)
            if socket:
                case[f"bad_{name}"] = fuzz_sources.source(kind if kind in fuzz_sources.SOCKET_TYPES else "STRING",
                                                          value())
                case["target"]["inputs"][name] = [f"bad_{name}", 0]
            else:
                case["target"]["inputs"][name] = value
            if os.environ.get("FUZZ_VERBOSE"):
                print(f"fuzz case {node_type}.{name} = {label}", file=sys.__stderr__, flush=True)
            problem = check_outcome(runner, case, node_type, caplog)
            if problem:
                problems.append(f"{node_type}.{name} = {label} ({kind}): {problem}")
        # Nothing outside ComfyUI's folders: not beside them, not in the working directory.
        stray = [str(p.relative_to(sandbox)) for p in sandbox.rglob("*")
                 if p.is_file() and not p.relative_to(sandbox).parts[0] == "comfy"]
        if stray or outside.exists():
            problems.append(f"{node_type}: files written outside ComfyUI's folders: {stray}")
        if _listing(getattr(folder_paths, "base_path", ".")) != base_listing:
            problems.append(f"{node_type}: the ComfyUI folder changed")
        # The executor is still fine: a good prompt (new identity, so it really runs) works.
        good_salt = next(_salt)
        runner.run(good_prompt(good_salt))
        got = fuzz_sources.received[f"good-{good_salt}"]
        assert got["latent"]["samples"].shape == (1, 4, 8, 8) and torch.isfinite(got["latent"]["samples"]).all()
    if problems and node_type in LEAD_OWNED:
        pytest.xfail("lead-owned node, reported for the engine rewrite:\n" + "\n".join(problems))
    assert not problems, "\n".join(problems)


def test_cases_cover_every_input_and_stay_bounded(sandbox):
    """Every declared input of every node gets cases; the total stays CI-sized."""
    total = 0
    for node_type in sorted(PACK_NODES):
        _, declared = target_prompt(node_type, 0)
        rng = random.Random(f"{SEED}-{node_type}")
        names = [case[0] for case in cases_for(node_type, declared, sandbox / "outside", rng)]
        assert set(names) == {name for name, _ in declared}, node_type
        total += len(names)
    assert total <= 12 * 12 * CASES_PER_INPUT
