"""``train group``: a pile of photos sorted into people by ArcFace similarity.

The pile is drawn for the tiny insightface pack (``demo/tiny_insightface.py``): each
synthetic person is a seeded face texture, so its photos give nearly the same embedding
wherever the face sits, and other people's textures give unrelated ones. Expected
groups are known by construction; the command must find exactly them, report the photo
without a face, the photo with two faces and the unreadable file instead of guessing,
and give a clear message for each bad pile.

Threshold: the tiny recognizer is a random projection of pooled pixels, so different
textures share a common component: other people's photos score 0.30..0.60 with it
(real ArcFace impostor pairs sit near 0), its same-person photos 0.96..1.0. ``--demo``
therefore groups at 0.8 by default (and says so); without ``--demo`` the default is
0.28, insightface's same-person value for real ArcFace embeddings. The tests run the
command as a user would, without ``--threshold``, and the grouping arithmetic at any
threshold is checked on constructed vectors against a plain all-pairs computation.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from training_fixtures import PHOTO_SIZE

from infinite_id.demo import tiny_insightface as tiny

PEOPLE, PHOTOS = 3, 3


def person_photo(person: int, photo: int, size: int = PHOTO_SIZE) -> np.ndarray:
    """A photo of synthetic person ``person``: their face texture, another place and background each time.

    Backgrounds keep red below green and blue, so the tiny detector finds exactly one face.
    """
    rng = np.random.default_rng(1000 * person + photo)
    rgb = np.empty((size, size, 3), np.uint8)
    g, b = rng.integers(60, 220, 2)
    rgb[...] = (min(g, b) - 30, g, b)
    tiny.draw_face(rgb, 4 + (3 * photo) % 9, 5 + photo % 6, scale=tiny.detection_scale(size, size),
                   identity=100 + person)
    return rgb


def two_faces() -> np.ndarray:
    rgb = np.full((PHOTO_SIZE, PHOTO_SIZE, 3), 120, np.uint8)
    scale = tiny.detection_scale(PHOTO_SIZE, PHOTO_SIZE)
    tiny.draw_face(rgb, 4, 4, scale=scale, identity=100)
    tiny.draw_face(rgb, 13, 13, scale=scale, identity=101)
    return rgb


def make_pile(root: Path) -> dict[str, set[str]]:
    """3 people x 3 photos under shuffled names (some in a subfolder), and the odd cases; returns the truth."""
    order = np.random.default_rng(3).permutation(PEOPLE * PHOTOS)
    truth: dict[str, set[str]] = {}
    for n, index in enumerate(order):
        person, photo = divmod(int(index), PHOTOS)
        name = f"img_{n:02d}.png" if n % 2 else f"trip/img_{n:02d}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(person_photo(person, photo)).save(root / name)
        truth.setdefault(f"p{person}", set()).add(name)
    Image.fromarray(np.full((PHOTO_SIZE, PHOTO_SIZE, 3), 90, np.uint8)).save(root / "wall.png")
    Image.fromarray(two_faces()).save(root / "couple.png")
    Image.fromarray(person_photo(7, 0)).save(root / "stranger.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return truth


def group(host_info, pile: Path, sorted_dir: Path, *extra: str) -> int:
    """``train group --demo`` as a user types it: no ``--threshold`` unless a test passes one."""
    from infinite_id.cli import main

    return main(["train", "group", "--demo", "--photos", str(pile), "--output", str(sorted_dir), *extra], host_info)


@pytest.fixture(scope="module")
def grouped(tmp_path_factory, host_info):
    pile = tmp_path_factory.mktemp("pile")
    truth = make_pile(pile)
    out = tmp_path_factory.mktemp("sorted") / "SORTED"
    handler = _Capture()
    logging.getLogger().addHandler(handler)
    try:
        assert group(host_info, pile, out) == 0
    finally:
        logging.getLogger().removeHandler(handler)
    return pile, out, truth, handler.text


class _Capture(logging.Handler):
    """The log of the module-scoped run (caplog is per test)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _found(out: Path, pile: Path) -> list[set[str]]:
    groups = []
    for folder in sorted(out.glob("person-*")):
        groups.append({str(Path(p.resolve()).relative_to(pile.resolve())) for p in folder.iterdir()})
    return groups


def test_people_are_grouped_exactly(grouped):
    """The demo's default threshold finds the three people (0.28 would file them as one) and says which it used."""
    pile, out, truth, text = grouped
    assert "group: threshold 0.8 (the default for the tiny demo recognizer" in text, text
    assert "group: 3 people" in text
    found = _found(out, pile)
    assert sorted(map(sorted, found)) == sorted(map(sorted, truth.values()))
    assert all(p.is_symlink() for p in (out / "person-0001").iterdir())  # the default mode
    data = json.loads((out / "group_report.json").read_text())
    assert data["settings"]["threshold"] == 0.8 and data["settings"]["borderline_from"] == 0.72
    assert data["people_found"] == PEOPLE and set(data["photos_per_person"].values()) == {PHOTOS}


def test_grouping_arithmetic_against_all_pairs():
    """Constructed unit vectors: chunked sklearn search + components == an all-pairs numpy computation."""
    from infinite_id.training.grouping import DEFAULT_THRESHOLD, default_threshold, group_embeddings

    assert DEFAULT_THRESHOLD == 0.28 and default_threshold(demo=False) == 0.28 and default_threshold(demo=True) == 0.8
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 512))
    # Noise of 0.3..4.5 per photo: similarities inside a person spread from ~0.9 to ~0.05, so some
    # photos split off and leave borderline pairs.
    rows = [c + rng.normal(size=(n, 512)) * rng.uniform(0.3, 4.5, (n, 1))
            for c, n in zip(centres, rng.integers(1, 7, len(centres)))]
    vectors = np.concatenate(rows).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sources = [Path(f"p{i:03d}.png") for i in range(len(vectors))]
    people, single, borderline = group_embeddings(sources, vectors, DEFAULT_THRESHOLD, chunk=7)
    sims = vectors @ vectors.T
    # Reference: union-find over every pair at or above the threshold.
    parent = list(range(len(vectors)))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i
    for i in range(len(vectors)):
        for j in range(i + 1, len(vectors)):
            if sims[i, j] >= DEFAULT_THRESHOLD:
                parent[root(j)] = root(i)
    expected: dict[int, set] = {}
    for i in range(len(vectors)):
        expected.setdefault(root(i), set()).add(sources[i])
    assert sorted(map(sorted, (set(v) for v in people.values()))) == sorted(
        sorted(g) for g in expected.values() if len(g) >= 2)
    assert set(single) == {next(iter(g)) for g in expected.values() if len(g) == 1}
    label = {s: k for k, g in enumerate(expected.values()) for s in g}
    want = sorted((sources[i], sources[j]) for i in range(len(vectors)) for j in range(i + 1, len(vectors))
                  if 0.20 <= sims[i, j] < DEFAULT_THRESHOLD and label[sources[i]] != label[sources[j]])
    assert want and sorted((a, b) for a, b, _ in borderline) == want
    assert all(abs(s - sims[sources.index(a), sources.index(b)]) < 1e-5 for a, b, s in borderline)


def test_odd_photos_are_reported_not_guessed(grouped):
    pile, out, _, _ = grouped
    data = json.loads((out / "group_report.json").read_text())
    assert list(data["no_face"]) == ["wall.png"] and "no face found" in data["no_face"]["wall.png"]
    assert data["several_faces"] == {"couple.png": 2}
    assert list(data["unreadable"]) == ["broken.jpg"] and "not a readable image" in data["unreadable"]["broken.jpg"]
    assert data["single_photos"] == ["stranger.png"]
    placed = {p.name for p in out.rglob("*.png")}
    assert not placed & {"wall.png", "couple.png", "stranger.png"}
    text = (out / "group_report.txt").read_text()
    for words in ("people found: 3", "couple.png: 2 faces", "wall.png: no face found", "broken.jpg: not a readable",
                  "stand alone", "borderline pairs"):
        assert words in text


def test_rerun_resumes_and_other_settings_are_refused(grouped, host_info, caplog):
    pile, out, truth, _ = grouped
    before = sorted(p.name for p in out.rglob("*.png"))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert group(host_info, pile, out) == 0
    assert "(0 newly processed)" in caplog.text and "0 placed now" in caplog.text
    assert sorted(p.name for p in out.rglob("*.png")) == before
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert group(host_info, pile, out, "--threshold", "0.5") == 2
    assert "holds a grouping made with other settings (threshold 0.8 -> 0.5" in caplog.text
    assert "--overwrite" in caplog.text


def test_sorted_folder_trains_without_processing_again(grouped, host_info, caplog, tmp_path):
    from infinite_id.cli import main

    _, out, _, _ = grouped
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["train", "--demo", "--data", str(out), "--output", str(tmp_path / "run"), "--steps", "1",
                     "--preview-every", "0", "--precision", "fp32"], host_info) == 0
    assert "0 newly processed" in caplog.text and f"{PEOPLE * PHOTOS} usable photos of {PEOPLE} people" in caplog.text


def test_copies_when_asked(tmp_path, host_info):
    pile = tmp_path / "pile"
    for person in range(2):
        for photo in range(2):
            (pile / f"{person}{photo}.png").parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(person_photo(person, photo)).save(pile / f"{person}{photo}.png")
    out = tmp_path / "sorted"
    assert group(host_info, pile, out, "--mode", "copy") == 0
    files = sorted(out.glob("person-*/*.png"))
    assert len(files) == 4 and not any(f.is_symlink() for f in files)
    assert all((pile / f.name).read_bytes() == f.read_bytes() for f in files)


def test_bad_piles_are_explained(tmp_path, host_info, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = []
    cases.append((empty, "no photos in"))
    cases.append((tmp_path / "missing", "is not a folder"))
    broken = tmp_path / "broken"
    broken.mkdir()
    for n in range(2):
        (broken / f"{n}.jpg").write_bytes(b"garbage")
    cases.append((broken, "none of the 2 photo(s) has a usable face (first: not a readable image"))
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    for person in range(3):
        Image.fromarray(person_photo(10 + person, 0)).save(lonely / f"{person}.png")
    cases.append((lonely, "no two photos show the same person at threshold 0.8: 3 photo(s) each stand alone"))
    for pile, words in cases:
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert group(host_info, pile, tmp_path / f"out-{pile.name}") == 2, pile
        assert words in caplog.text, (pile, caplog.text)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert group(host_info, lonely, tmp_path / "o", "--threshold", "1.5") == 2
    assert "--threshold must be between 0 and 1" in caplog.text


def test_group_command_under_torchrun_matches(grouped, tmp_path):
    """Two processes (torchrun, gloo) split the detection; rank 0 groups and writes the same people."""
    import os
    import subprocess
    import sys

    pile, out, _, _ = grouped
    pack = Path(__file__).resolve().parent.parent
    two = tmp_path / "SORTED"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(pack),
               "train", "group", "--demo", "--photos", str(pile), "--output", str(two)]
    done = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    assert "data-parallel run: 2 processes (gloo)" in log and log.count("group: 3 people") == 1
    assert _found(two, pile) == _found(out, pile)
    first, second = (json.loads((d / "group_report.json").read_text()) for d in (out, two))
    assert first == second
    assert not list((two / ".cache").glob("*.tmp"))


def test_missing_search_library_is_named_before_any_work(tmp_path, host_info, caplog, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a))
    with caplog.at_level(logging.ERROR):
        assert group(host_info, tmp_path / "pile", tmp_path / "out") == 2
    assert "group: needs scikit-learn" in caplog.text and "pip install scikit-learn" in caplog.text
    assert not (tmp_path / "out").exists()
