"""``python . eval`` in-process: scoring a folder, generating with resume, reports, FID/LPIPS,
and the message of every bad input.

Scores are recomputed here from the report's own image paths with insightface's
``FaceAnalysis.get`` and plain model calls; the z-score column from the CSV's means.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_helpers import app, by_hand_face, cli, clip_by_hand, cos, eval_folders, models_dir  # noqa: F401
from identity_prompts import face_rgb
from PIL import Image

from infinite_id.demo import tiny_eval
from infinite_id.evaluation import quality, report

PROMPTS = ["a photo of a person holding flowers", "a photo of a person on a beach"]
FAST = ["--set", "InfiniteIDSampler.steps=1", "--set", "EmptyLatentImage.width=64",
        "--set", "EmptyLatentImage.height=64"]


def _save(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture
def bench(tmp_path):
    """Two identities, a prompt list, and two configurations' images (one without a face)."""
    ids = tmp_path / "identities"
    _save(ids / "alice.png", face_rgb((7, 6), first_identity=3))
    _save(ids / "bob.png", face_rgb((9, 8), first_identity=4))
    (tmp_path / "prompts.txt").write_text("# two prompts\n" + "\n".join(PROMPTS) + "\n\n")
    images = tmp_path / "made"
    _save(images / "full" / "alice" / "00.png", face_rgb((7, 6), first_identity=3))
    _save(images / "full" / "alice" / "01.png", face_rgb())  # no face
    _save(images / "full" / "bob" / "00.png", face_rgb((8, 9), first_identity=4))
    _save(images / "ablated" / "alice" / "00.png", face_rgb((7, 6), first_identity=7))
    _save(images / "ablated" / "bob" / "01.png", face_rgb((9, 8), first_identity=4))
    return tmp_path


def test_scores_a_folder_and_writes_readable_reports(cli, bench, eval_folders, app):
    out = bench / "report"
    assert cli("--identities", str(bench / "identities"), "--prompts", str(bench / "prompts.txt"),
               "--images", str(bench / "made"), "--backbone", "arcface", "--clip-model", tiny_eval.TINY_CLIP_NAME,
               "--output", str(out)) == 0
    rows = report.read_csv(out / "images.csv")
    assert [(r["config"], r["identity"], r["prompt_index"]) for r in rows] == [
        ("ablated", "alice", "0"), ("ablated", "bob", "1"), ("full", "alice", "0"), ("full", "alice", "1"),
        ("full", "bob", "0")]
    refs = {n: by_hand_face(np.asarray(Image.open(bench / "identities" / f"{n}.png")), app) for n in ("alice", "bob")}
    ref_clip = dict(zip(refs, clip_by_hand([refs[n]["crop"] for n in refs])[0]))
    for row in rows:
        rgb = np.asarray(Image.open(row["image"]).convert("RGB"))
        face = by_hand_face(rgb, app)
        prompt = PROMPTS[int(row["prompt_index"])]
        assert row["prompt"] == prompt
        _, text_emb = clip_by_hand([rgb], prompt)
        assert float(row["clip_t"]) == pytest.approx(cos(clip_by_hand([rgb])[0][0], text_emb), abs=2e-5)
        if not face:
            assert row["face_found"] == "False" and float(row["face_score"]) == 0 and float(row["clip_i"]) == 0
            assert "no face found" in row["reason"]
            continue
        assert row["face_found"] == "True"
        assert float(row["face_score"]) == pytest.approx(cos(face["arcface"], refs[row["identity"]]["arcface"]),
                                                         abs=2e-5)
        assert float(row["clip_i"]) == pytest.approx(cos(clip_by_hand([face["crop"]])[0][0], ref_clip[row["identity"]]),
                                                     abs=2e-5)
    summary = {r["config"]: r for r in report.read_csv(out / "summary.csv")}
    assert list(summary) == ["ablated", "full"]
    means = {c: {k: np.mean([float(r[k]) for r in rows if r["config"] == c]) for k in ("face_score", "clip_i")}
             for c in summary}
    for c, s in summary.items():
        assert float(s["face_score"]) == pytest.approx(means[c]["face_score"], abs=1e-6)
        assert int(s["images"]) == sum(r["config"] == c for r in rows)
    # Two configurations: each z-score is +-1, so the summary is the mean of two signs.
    sign = {c: np.sign(means[c]["face_score"] - means[o]["face_score"]) + np.sign(means[c]["clip_i"] - means[o]["clip_i"])
            for c, o in (("ablated", "full"), ("full", "ablated"))}
    for c in summary:
        assert float(summary[c]["id_zscore"]) == pytest.approx(sign[c] / 2, abs=1e-6)
    assert summary["full"]["faces_found"] == "2"
    assert "| full | 3 | 2 |" in (out / "summary.md").read_text()
    for name in ("grid_full.png", "grid_ablated.png", "scatter.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 100
    with Image.open(out / "grid_full.png") as im:  # 2 identities x 2 prompts; the no-face cell framed in red
        assert im.size == (256, 256)
        assert im.convert("RGB").getpixel((128 + 1, 64)) == (230, 30, 30)


def test_generates_in_process_and_resumes(cli, tmp_path, eval_folders, caplog):
    out = tmp_path / "run"
    (tmp_path / "p.txt").write_text(PROMPTS[0] + "\n")
    args = ["--demo", "--prompts", str(tmp_path / "p.txt"), "--variant",
            "no_merge:InfiniteIDApply.cross_attention_merge=false", "--output", str(out), *FAST]
    assert cli(*args) == 0
    made = sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*.png"))
    assert made == ["no_merge/demo_a/00.png", "no_merge/demo_b/00.png", "raw_photo/demo_a/00.png",
                    "raw_photo/demo_b/00.png"]
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(m["pair"] for m in manifest) == [m[:-4] for m in made]
    assert all(m["prompt"] == PROMPTS[0] and m["seed"] == 42 for m in manifest)
    removed = out / "images" / "no_merge" / "demo_b" / "00.png"
    removed.unlink()
    stamp = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert cli(*args) == 0
    assert "3 already made, 1 to generate" in caplog.text
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[-1])["pair"] == "no_merge/demo_b/00"
    assert removed.is_file()
    for path, mtime in stamp.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was made again"
    rows = report.read_csv(out / "images.csv")
    assert len(rows) == 4 and {r["backbone"] for r in rows} == {"facenet"}


def test_fid_and_lpips_equal_recomputation(tmp_path):
    from scipy import linalg

    gen = [face_rgb((7, 6), first_identity=i)[96:320, 96:320] for i in range(5)]
    real = [face_rgb((7, 6), first_identity=i)[96:320, 96:320] for i in range(10, 16)]
    extractor = quality.load_fid_extractor(None, demo=True)
    got = quality.fid(gen, real, extractor)

    def stats(crops):
        with torch.no_grad():
            f = extractor(torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)).numpy().astype(np.float64)
        return f.mean(0), np.cov(f, rowvar=False)

    (m1, s1), (m2, s2) = stats(real), stats(gen)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert math.isnan(quality.fid(gen[:1], real, extractor))

    net = quality.load_lpips(None, demo=True)
    a, b = gen[0], real[0]

    def by_hand(x, y):
        def t(img):
            v = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
            return (v - net.scaling_layer.shift) / net.scaling_layer.scale

        total = 0.0
        with torch.no_grad():
            fx, fy = net.net(t(x)), net.net(t(y))
            for k, (u, v) in enumerate(zip(fx, fy)):
                u = u / (u.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                v = v / (v.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                w = net.lins[k].model[1].weight[0, :, 0, 0]
                total += float(((u - v) ** 2 * w[None, :, None, None]).sum(1).mean())
        return total

    assert quality.lpips_distance(net, a, b) == pytest.approx(by_hand(a, b), rel=1e-5)
    assert quality.lpips_distance(net, a, a) == pytest.approx(0.0, abs=1e-7)


def test_lpips_trunk_loads_from_a_local_torchvision_file(tmp_path, eval_folders):
    import torchvision

    torch.manual_seed(3)
    trunk = torchvision.models.alexnet(weights=None).state_dict()
    (eval_folders / "lpips").mkdir(exist_ok=True)
    torch.save(trunk, eval_folders / "lpips" / quality.LPIPS_FILE)
    net = quality.load_lpips(None)
    assert torch.equal(getattr(net.net.slice2, "3").weight, trunk["features.3.weight"])
    with pytest.raises(ValueError, match="--lpips-model: 'nope.pth' was not found.*alexnet-owt-7be5be79.pth"):
        quality.load_lpips("nope.pth")


def _error(cli, caplog, *argv) -> str:
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert cli(*argv) == 2
    return caplog.text


def test_bad_inputs_say_what_to_do(cli, bench, eval_folders, caplog, tmp_path):
    base = ["--prompts", str(bench / "prompts.txt"), "--images", str(bench / "made"), "--backbone", "arcface",
            "--clip-model", tiny_eval.TINY_CLIP_NAME, "--output", str(tmp_path / "o")]
    (tmp_path / "empty").mkdir()
    assert "--identities: no identity photos in" in _error(cli, caplog, "--identities", str(tmp_path / "empty"), *base)
    assert "is not a folder" in _error(cli, caplog, "--identities", str(tmp_path / "nope"), *base)
    ids = ["--identities", str(bench / "identities")]
    (tmp_path / "blank.txt").write_text("# only comments\n\n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    for path, message in ((tmp_path / "missing.txt", "does not exist"), (tmp_path / "blank.txt", "has no prompts"),
                          (tmp_path / "binary.txt", "is not UTF-8 text")):
        assert f"--prompts: {path} {message}" in _error(cli, caplog, *ids, *base, "--prompts", str(path))
    text = _error(cli, caplog, *ids, *base, "--backbone", "facenet", "--facenet-model", "absent.pt")
    assert "facenet_model: 'absent.pt' was not found. Put 20180402-114759-vggface2.pt" in text
    text = _error(cli, caplog, *ids, *base, "--clip-model", "clip-vit-large-patch14")
    assert "clip_model: 'clip-vit-large-patch14' was not found" in text and "config.json" in text
    text = _error(cli, caplog, *ids, *base, "--fid", "--fid-model", "absent.pth")
    assert "--fid-model: 'absent.pth' was not found" in text
    _save(tmp_path / "faceless" / "carol.png", face_rgb())
    text = _error(cli, caplog, "--identities", str(tmp_path / "faceless"), *base)
    assert "--identities: no face found in the reference image" in text and "carol.png" in text
    (tmp_path / "nothing").mkdir()
    assert "--images: no images in" in _error(cli, caplog, *ids, *base, "--images", str(tmp_path / "nothing"))


def test_bad_configurations_and_unreachable_server(cli, bench, eval_folders, caplog, tmp_path):
    from comfy_server import free_port

    gen = ["--identities", str(bench / "identities"), "--prompts", str(bench / "prompts.txt"), "--backbone",
           "arcface", "--clip-model", tiny_eval.TINY_CLIP_NAME, "--output", str(tmp_path / "o"), "--demo"]
    assert "--variant 'oops': use NAME:NODE.INPUT=VALUE" in _error(cli, caplog, *gen, "--variant", "oops")
    text = _error(cli, caplog, *gen, "--variant", "raw_photo:InfiniteIDApply.weight=0.5")
    assert "configuration names must differ, got raw_photo twice" in text
    assert "--workflow: " in _error(cli, caplog, *gen, "--workflow", str(tmp_path / "none.json"))
    text = _error(cli, caplog, *gen, "--variant", "x:NoSuchNode.weight=1")
    assert "no node with id, title or type 'NoSuchNode'" in text
    url = f"http://127.0.0.1:{free_port()}"
    text = _error(cli, caplog, *gen, "--server", url)
    assert f"--server {url} is unreachable" in text and "drop it from --server" in text


def test_fid_and_lpips_columns_in_the_reports(cli, bench, eval_folders, app):
    out = bench / "report_quality"
    assert cli("--identities", str(bench / "identities"), "--prompts", str(bench / "prompts.txt"),
               "--images", str(bench / "made"), "--backbone", "arcface", "--demo", "--fid", "--lpips",
               "--output", str(out)) == 0
    rows = report.read_csv(out / "images.csv")
    net = quality.load_lpips(None, demo=True)
    refs = {n: by_hand_face(np.asarray(Image.open(bench / "identities" / f"{n}.png")), app)["crop"]
            for n in ("alice", "bob")}
    gen = {}
    for row in rows:
        face = by_hand_face(np.asarray(Image.open(row["image"]).convert("RGB")), app)
        if not face:
            assert row["lpips"] == ""
            continue
        gen.setdefault(row["config"], []).append(face["crop"])
        assert float(row["lpips"]) == pytest.approx(quality.lpips_distance(net, face["crop"], refs[row["identity"]]),
                                                    abs=1e-5)
    summary = {r["config"]: r for r in report.read_csv(out / "summary.csv")}
    extractor = quality.load_fid_extractor(None, demo=True)
    for config, crops in gen.items():
        assert float(summary[config]["fid"]) == pytest.approx(quality.fid(crops, list(refs.values()), extractor),
                                                              abs=1e-6)
        lp = [float(r["lpips"]) for r in rows if r["config"] == config and r["lpips"]]
        assert float(summary[config]["lpips"]) == pytest.approx(np.mean(lp), abs=1e-6)
    assert "| FID | LPIPS |" in (out / "summary.md").read_text()


def test_default_prompt_list_is_the_benchmark_shape():
    from infinite_id.evaluation.plan import load_prompts

    prompts = load_prompts()
    assert len(prompts) == 30 and len(set(prompts)) == 30
    text = "\n".join(prompts)
    for theme in ("Times Square", "living room", "beach", "holding a bouquet of flowers", "running"):
        assert theme in text
