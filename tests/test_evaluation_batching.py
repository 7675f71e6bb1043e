"""``python . eval --batch``: identities of one prompt in one sampling call, in-process.

Runs the real host on the tiny demo models (``--demo``) with three identities, so a batch
of 2 leaves a batch of 1 per prompt. The host's ``Runner.run`` is wrapped to count the
API prompts (sampling calls) and the identity batches in them. The graph rules
(``evaluation/batching.py``) and the out-of-memory split on servers are checked on plain
dicts and stand-in clients.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from eval_helpers import cli, eval_folders, models_dir  # noqa: F401
from PIL import Image

from infinite_id.cli import evaluate as eval_cli
from infinite_id.cli.run_workflow import demo_photo
from infinite_id.evaluation import batching, remote
from infinite_id.evaluation.plan import Config
from infinite_id.evaluation.workflow import PairWorkflow
from infinite_id.host.executor import PromptError, Runner

PACK = Path(eval_cli.__file__).resolve().parent.parent
RAW = PACK / "workflows" / "api" / "raw_photo.json"
MIXING = PACK / "workflows" / "api" / "identity_mixing.json"
FAST = ["--set", "InfiniteIDSampler.steps=1", "--set", "EmptyLatentImage.width=64",
        "--set", "EmptyLatentImage.height=64"]
PEOPLE = ("demo_a", "demo_b", "demo_c")


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    """Every API prompt the in-process evaluation runs, in order."""
    seen: list[dict] = []
    original = Runner.run

    def run(self, prompt, extra_data=None):
        seen.append(copy.deepcopy(prompt))
        return original(self, prompt, extra_data)

    monkeypatch.setattr(Runner, "run", run)
    return seen


def _rows(prompt: dict) -> int:
    """Identities sampled by one prompt: its Encode nodes."""
    return sum(node["class_type"] == "InfiniteIDEncode" for node in prompt.values())


@pytest.fixture
def setup(tmp_path):
    ids = tmp_path / "identities"
    ids.mkdir()
    for name in PEOPLE:
        Image.fromarray(demo_photo(name)).save(ids / f"{name}.png")
    (tmp_path / "p.txt").write_text("a photo of a person holding flowers\na photo of a person on a beach\n")
    return ["--demo", "--identities", str(ids), "--prompts", str(tmp_path / "p.txt"), "--backbone", "arcface", *FAST]


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def _images(out: Path) -> dict[str, Path]:
    return {p.relative_to(out / "images").as_posix(): p for p in sorted((out / "images").rglob("*.png"))}


def test_batched_evaluation_makes_the_images_of_one_pair_per_call(cli, setup, tmp_path, eval_folders, calls):
    """Same seeds, same images: batching changes only how many rows one U-Net call holds.

    Not bit-exact: a row inside a batch goes through batched matrix products and
    convolutions, whose float32 sums may round differently from the same row alone
    (test_shared_noise.py finds rel 1e-5). Written as 8-bit PNG, that can move a channel
    across a rounding boundary, so a pixel may differ by one level, never more.
    """
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli(*setup, "--batch", "1", "--output", str(one)) == 0
    assert [_rows(p) for p in calls] == [1] * 6
    calls.clear()
    assert cli(*setup, "--batch", "2", "--output", str(two)) == 0
    assert [_rows(p) for p in calls] == [2, 1, 2, 1]  # per prompt: demo_a + demo_b, then demo_c
    made_one, made_two = _images(one), _images(two)
    assert list(made_one) == list(made_two) == [f"raw_photo/{n}/{p:02d}.png" for n in PEOPLE for p in range(2)]
    for key in made_one:
        a, b = _pixels(made_one[key]), _pixels(made_two[key])
        assert a.shape == b.shape == (64, 64, 3)
        assert np.abs(a - b).max() <= 1, key
        assert np.mean(a != b) < 0.01, key  # a rounding flip here and there, not another picture
    manifest = [json.loads(line) for line in (two / "manifest.jsonl").read_text().splitlines()]
    assert [(m["pair"], m["batch"]) for m in manifest] == [
        ("raw_photo/demo_a/00", 2), ("raw_photo/demo_b/00", 2), ("raw_photo/demo_c/00", 1),
        ("raw_photo/demo_a/01", 2), ("raw_photo/demo_b/01", 2), ("raw_photo/demo_c/01", 1)]
    assert all(m["seed"] == 42 for m in manifest)  # one seed for every identity: a controlled comparison


def test_resume_batches_only_the_missing_pairs(cli, setup, tmp_path, eval_folders, calls, caplog):
    out = tmp_path / "run"
    assert cli(*setup, "--batch", "3", "--output", str(out)) == 0
    assert [_rows(p) for p in calls] == [3, 3]
    before = {key: _pixels(path) for key, path in _images(out).items()}
    # As if the run stopped inside the first prompt's batch: demo_a and demo_c of prompt 0 missing.
    for name in ("demo_a", "demo_c"):
        (out / "images" / "raw_photo" / name / "00.png").unlink()
    stamps = {key: path.stat().st_mtime_ns for key, path in _images(out).items()}
    calls.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert cli(*setup, "--batch", "3", "--output", str(out)) == 0
    assert "4 already made, 2 to generate" in caplog.text
    assert [_rows(p) for p in calls] == [2]  # one call, for the two missing pairs only
    photos = sorted(n["inputs"]["image"] for n in calls[0].values() if n["class_type"] == "LoadImage")
    assert photos == ["infiniteid_eval_demo_a.png", "infiniteid_eval_demo_c.png"]
    after = _images(out)
    for key, mtime in stamps.items():
        assert after[key].stat().st_mtime_ns == mtime, f"{key} was made again"
    for key, pixels in before.items():
        assert np.abs(_pixels(after[key]) - pixels).max() <= 1, key  # another batch, the same picture
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["pair"] for line in lines[-2:]] == ["raw_photo/demo_a/00", "raw_photo/demo_c/00"]


def test_workflows_that_cannot_batch_make_one_pair_per_call(cli, setup, tmp_path, eval_folders, calls, caplog):
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert cli(*setup, "--limit-prompts", "1", "--workflow", str(RAW), "--workflow", str(MIXING),
                   "--variant", "per_row:InfiniteIDSampler.batch_noise=per row", "--output", str(tmp_path / "o")) == 0
    assert ("configuration identity_mixing: one pair per sampling call, not 4 (InfiniteIDApply's identity comes "
            "from node 11 (InfiniteIDMix), not straight from InfiniteIDEncode") in caplog.text
    assert ("configuration per_row: one pair per sampling call, not 4 (node 11 (InfiniteIDSampler) has batch_noise "
            "'per row'") in caplog.text
    assert "configuration raw_photo: one pair" not in caplog.text
    batched = [p for p in calls if any(n["class_type"] == "InfiniteIDIdentityBatch" for n in p.values())]
    assert len(calls) == 7 and [_rows(p) for p in batched] == [3]  # raw_photo: one call; the others: 3 each
    assert len(_images(tmp_path / "o")) == 9


def test_out_of_memory_splits_the_batch_and_goes_on(cli, setup, tmp_path, eval_folders, monkeypatch, caplog):
    seen: list[int] = []
    original = Runner.run

    def run(self, prompt, extra_data=None):
        seen.append(_rows(prompt))
        if _rows(prompt) > 1:
            raise PromptError("InfiniteIDSampler (node 11): CUDA out of memory. Tried to allocate 2.00 GiB",
                              details={"exception_type": "torch.OutOfMemoryError"})
        return original(self, prompt, extra_data)

    monkeypatch.setattr(Runner, "run", run)
    with caplog.at_level(logging.WARNING):
        assert cli(*setup, "--limit-prompts", "1", "--batch", "3", "--output", str(tmp_path / "o")) == 0
    assert seen == [3, 1, 1, 1]  # 3 fails; halves of at most 1 then (3 // 2 = 1)
    assert "raw_photo/demo_a+demo_b+demo_c/00: out of memory for 3 identities in one call; going on with 1" in (
        caplog.text)
    assert len(_images(tmp_path / "o")) == 3


def test_bad_batch_size(cli, setup, tmp_path, eval_folders, caplog):
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert cli(*setup, "--batch", "0", "--output", str(tmp_path / "o")) == 2
    assert "--batch: must be at least 1 (1 makes one pair per sampling call), got 0" in caplog.text


# -- the graph rules, on plain API prompts ------------------------------------------------------------------------


def _raw() -> dict:
    return PairWorkflow(Config("raw_photo", RAW)).base


def test_identity_path_of_the_shipped_workflow_and_many_photos():
    wf = PairWorkflow(Config("raw_photo", RAW))
    path = wf.batching()
    assert path == batching.IdentityPath(("7", "8"), ("8", 0), (("9", "identity"),))
    photos = [f"p{i}.png" for i in range(11)]
    prompt = wf.build(photos, "a prompt", 7, "tag")
    encodes = {nid: n for nid, n in prompt.items() if n["class_type"] == "InfiniteIDEncode"}
    loads = {nid: n for nid, n in prompt.items() if n["class_type"] == "LoadImage"}
    assert len(encodes) == len(loads) == 11
    assert sorted(n["inputs"]["image"] for n in loads.values()) == sorted(photos)
    for node in encodes.values():  # each copy reads its own photo and shares the loaders
        assert node["inputs"]["image"][0] in loads and node["inputs"]["adapter"] == ["6", 0]
    batches = [nid for nid, n in prompt.items() if n["class_type"] == "InfiniteIDIdentityBatch"]
    assert len(batches) == 2  # 8 identities, then the first batch + 3 more: rows keep the photos' order
    first, second = (prompt[b]["inputs"] for b in batches)
    assert list(first) == [f"identity_{i}" for i in range(1, 9)] and first["identity_1"] == ["8", 0]
    assert second["identity_1"] == [batches[0], 0] and len(second) == 4
    order = [loads[encodes[link[0]]["inputs"]["image"][0]]["inputs"]["image"]
             for link in list(first.values()) + list(second.values())[1:]]
    assert order == photos
    assert prompt["9"]["inputs"]["identity"] == [batches[1], 0]
    assert prompt["11"]["inputs"]["seed"] == 7 and prompt["2"]["inputs"]["text"] == "a prompt"


@pytest.mark.parametrize("change,reason", [
    (lambda p: p.pop("9"), "no InfiniteIDApply node takes an identity"),
    (lambda p: p["9"]["inputs"].update(identity=["99", 0]) or p.update({"99": {"class_type": "InfiniteIDLoadIdentity",
                                                                                "inputs": {}}}),
     "InfiniteIDApply's identity comes from node 99 (InfiniteIDLoadIdentity), not straight from InfiniteIDEncode"),
    (lambda p: p.update({"98": {"class_type": "LoadImage", "inputs": {"image": "x.png"}}})
     or p["8"]["inputs"].update(image=["98", 0]), "node 8 (InfiniteIDEncode) is not computed from the reference photo"),
    (lambda p: p.update({"97": {"class_type": "PreviewImage", "inputs": {"images": ["8", 1]}}}),
     "node 8 (InfiniteIDEncode) also feeds node 97 (PreviewImage) (input 'images'), which would see only the first"),
    (lambda p: p["10"]["inputs"].update(batch_size=3), "node 10 (EmptyLatentImage) makes a batch of 3 latents"),
    (lambda p: p["11"]["inputs"].update(batch_noise="per row"), "node 11 (InfiniteIDSampler) has batch_noise 'per row'"),
], ids=["no apply", "identity file", "other photo", "also previewed", "latent batch", "per row"])
def test_identity_path_says_why_not(change, reason):
    prompt = _raw()
    change(prompt)
    found = batching.identity_path(prompt, "7")
    assert isinstance(found, str) and found.startswith(reason), found


def test_two_applies_of_one_identity_both_get_the_batch():
    prompt = _raw()
    prompt["20"] = copy.deepcopy(prompt["9"])
    path = batching.identity_path(prompt, "7")
    assert path.consumers == (("9", "identity"), ("20", "identity"))
    batching.add_identity_rows(prompt, path, "7", ["a.png", "b.png"])
    assert prompt["9"]["inputs"]["identity"] == prompt["20"]["inputs"]["identity"] == ["23", 0]


class _StandIn(remote.Client):
    """A server that runs out of memory for more than ``fits`` identities; no network."""

    def __init__(self, fits: int) -> None:
        super().__init__("http://stand-in")
        self.fits, self.sizes = fits, []

    def submit(self, prompt: dict) -> str:
        self.sizes.append(prompt["n"])
        if prompt["n"] > self.fits:
            raise remote.PromptFailed(f"{self.url} failed the prompt: InfiniteIDSampler (node 11): "
                                      f"CUDA out of memory. Tried to allocate 9.00 GiB")
        return str(prompt["n"])

    def wait(self, prompt_id: str, timeout: float, poll: float = 0.25) -> dict:
        return {"n": int(prompt_id)}

    def images(self, entry: dict, node_id: str) -> list[bytes]:
        return [b"png"] * entry["n"]


def test_a_server_out_of_memory_batch_is_split_in_halves(caplog):
    delivered: list[str] = []

    def task(keys: list[str]) -> remote.Task:
        def deliver(images: list[bytes], where: str) -> None:
            assert len(images) == len(keys)
            delivered.extend(keys)

        return remote.Task("+".join(keys), lambda client: ({"n": len(keys)}, "13"), deliver, pairs=keys,
                           split=lambda: [task(keys[:len(keys) // 2]), task(keys[len(keys) // 2:])])

    client = _StandIn(fits=2)
    with caplog.at_level(logging.WARNING):
        outcome = remote.run_on_servers([task(["a", "b", "c", "d", "e"])], [client])
    assert client.sizes == [5, 2, 3, 1, 2] and sorted(delivered) == ["a", "b", "c", "d", "e"]
    assert not outcome.error and not outcome.left and sorted(outcome.done) == ["a", "b", "c", "d", "e"]
    assert "ran out of memory for a+b+c+d+e; trying 2 smaller batches" in caplog.text
    fails = remote.run_on_servers([remote.Task("x", lambda c: ({"n": 3}, "13"), lambda i, w: None)], [_StandIn(1)])
    assert "out of memory" in fails.error and fails.left == ["x"]  # nothing to split into: the run stops
