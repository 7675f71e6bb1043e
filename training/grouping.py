"""``train group``: sort a pile of photos into one folder per person by ArcFace similarity.

The paper's 200K photos were "categorized into 20K distinct identities via face
recognition"; this is that step. Every photo goes through the training cache
(``cache.py``: detection, ArcFace, and the CLIP and VAE features training needs), so the
faces are detected and embedded once, and ``train --data SORTED/`` afterwards finds
everything cached (the sorted files are links to or copies of the same bytes, which is
what the cache is keyed by).

**Same person (decision).** Two photos are the same person when the cosine similarity
of their ArcFace embeddings is at least ``--threshold``, default 0.28: the value of
insightface's own recognition demo (``web-demos/src_recognition``: "They ARE the same
person" from 0.28, "LIKELY" from 0.20, not the same below 0.20); with ``--demo`` 0.8, which
fits the tiny demo recognizer (``DEMO_THRESHOLD``). People are the connected
groups of that relation. Pairs between 0.20 (the threshold minus 0.08 when it is
changed) and the threshold that end up in different groups are listed as borderline:
they may be one person split in two, the report's first thing to look at.

**Search.** scikit-learn's ``NearestNeighbors`` (exact, brute force over BLAS, queried
in chunks with a progress bar) rather than an all-pairs Python loop, and rather than
faiss: scikit-learn is a small, well-kept wheel that insightface 0.7.3 already pulls
in (``check_libraries`` names it before any work when it is missing), its result is
exact (a grouping must not depend on an approximate index's recall), and at 200K x 512
an exact chunked search is minutes of BLAS on a CPU (``docs/TRAINING.md``).

**Not guessed.** A photo without a usable face, an unreadable file and a photo with
several faces are reported and left out (for several faces the largest one is not
assumed to be the person); a group of one photo is reported, since training needs two.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cache import write_atomic
from .dataset import IMAGE_EXTENSIONS, MIN_PHOTOS, TrainingDataError

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.28
BORDERLINE_MARGIN = 0.08  # 0.28 - 0.08 = 0.20, insightface's "likely the same person"
# ``--demo``'s tiny recognizer (``demo/tiny_insightface.py``) is a random projection of pooled
# pixels: different people share a common component and score 0.30-0.60, the same person
# 0.96-1.0, so 0.28 would file every demo person as one. 0.8 separates them.
DEMO_THRESHOLD = 0.8


def default_threshold(demo: bool) -> float:
    """The threshold used when ``--threshold`` is not given: the demo recognizer's or real ArcFace's."""
    return DEMO_THRESHOLD if demo else DEFAULT_THRESHOLD
MODES = ("symlink", "hardlink", "copy")
REPORT_JSON = "group_report.json"
REPORT_TEXT = "group_report.txt"
MAX_BORDERLINE = 1000
UNREADABLE_PREFIXES = ("not a readable image", "cannot be read")


def check_libraries() -> None:
    """Refuse before any photo is processed when the search or graph library is missing."""
    import importlib.util

    missing = [pip for module, pip in (("sklearn", "scikit-learn"), ("scipy", "scipy"))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise TrainingDataError(f"group: needs {' and '.join(missing)} for the face similarity search; install it "
                                f"into ComfyUI's Python (python -m pip install {' '.join(missing)}) and run again")


def scan_pile(root: str | os.PathLike, exclude: Path | None = None) -> list[Path]:
    """Every image file under ``root`` (any depth, sorted), leaving out ``exclude`` (the output)."""
    root = Path(root)
    if not root.is_dir():
        raise TrainingDataError(f"group: --photos '{root}' is not a folder. Give the folder that holds the photos "
                                "(any layout; subfolders are searched).")
    skip = exclude.resolve() if exclude is not None else None
    found = []
    for path in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if skip is not None and (path.resolve() == skip or skip in path.resolve().parents):
            continue
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            found.append(path)
    if not found:
        raise TrainingDataError(f"group: no photos in '{root}' ({', '.join(IMAGE_EXTENSIONS)}, subfolders "
                                "included). Point --photos at the folder of photos to sort.")
    return found


@dataclass
class Grouping:
    """What ``group_photos`` found; ``people`` maps a folder name to its photos."""

    threshold: float
    people: dict[str, list[Path]]
    single: list[Path]
    no_face: dict[Path, str]
    unreadable: dict[Path, str]
    several_faces: dict[Path, int]
    borderline: list[tuple[Path, Path, float]] = field(default_factory=list)


def read_embeddings(faces: dict[Path, Path], chunk: int = 4096) -> tuple[list[Path], np.ndarray, dict[Path, int]]:
    """Unit-length ArcFace embeddings of the photos with exactly one face; photos with several, counted."""
    from safetensors import safe_open
    from tqdm import tqdm

    sources, rows, several = [], [], {}
    items = list(faces.items())
    with tqdm(total=len(items), desc="reading embeddings", unit="photo", leave=False) as bar:
        for start in range(0, len(items), chunk):
            for source, cached in items[start:start + chunk]:
                with safe_open(str(cached), framework="np") as f:
                    count = int((f.metadata() or {}).get("faces_found", "1"))
                    if count > 1:
                        several[source] = count
                    else:
                        sources.append(source)
                        rows.append(f.get_tensor("face_embedding").astype(np.float32))
                bar.update(1)
    matrix = np.stack(rows) if rows else np.zeros((0, 512), np.float32)
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    return sources, matrix, several


def similar_pairs(embeddings: np.ndarray, low: float, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``i < j`` with cosine similarity >= ``low``: ``(i, j, similarity)``.

    Exact radius search with scikit-learn, ``chunk`` query rows at a time (memory stays at
    ``chunk x N`` distances whatever the pile's size).
    """
    from sklearn.neighbors import NearestNeighbors
    from tqdm import tqdm

    n = embeddings.shape[0]
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    index = NearestNeighbors(metric="cosine", algorithm="brute").fit(embeddings)
    first, second, sims = [], [], []
    for start in tqdm(range(0, n, chunk), desc="comparing faces", unit="chunk", leave=False):
        distances, neighbours = index.radius_neighbors(embeddings[start:start + chunk], radius=1.0 - low,
                                                       return_distance=True)
        for offset, (d, j) in enumerate(zip(distances, neighbours)):
            i = start + offset
            keep = j > i
            first.append(np.full(int(keep.sum()), i, np.int64))
            second.append(j[keep].astype(np.int64))
            sims.append((1.0 - d[keep]).astype(np.float32))
    return np.concatenate(first), np.concatenate(second), np.concatenate(sims)


def group_photos(results: dict[Path, Path | str], threshold: float = DEFAULT_THRESHOLD,
                 chunk: int = 2048) -> Grouping:
    """Group the cached photos (``cache_sources``'s result) into people."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"group: --threshold must be between 0 and 1 (cosine similarity), got {threshold}")
    no_face = {s: r for s, r in results.items() if isinstance(r, str) and not r.startswith(UNREADABLE_PREFIXES)}
    unreadable = {s: r for s, r in results.items() if isinstance(r, str) and r.startswith(UNREADABLE_PREFIXES)}
    faces = {s: r for s, r in results.items() if not isinstance(r, str)}
    sources, embeddings, several = read_embeddings(faces)
    people, single, borderline = group_embeddings(sources, embeddings, threshold, chunk)
    return Grouping(threshold, people, single, no_face, unreadable, several, borderline)


def group_embeddings(sources: list[Path], embeddings: np.ndarray, threshold: float, chunk: int = 2048
                     ) -> tuple[dict[str, list[Path]], list[Path], list[tuple[Path, Path, float]]]:
    """``(people, photos alone, borderline pairs)`` from unit-length embeddings.

    People are the connected components of "similarity >= threshold"; folders are named
    ``person-0001``... from the largest group down (ties: by first photo), so the same
    pile and settings always give the same names (a re-run continues, not renames).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    low = max(threshold - BORDERLINE_MARGIN, 0.0)
    first, second, sims = similar_pairs(embeddings, low, chunk)
    same = sims >= threshold
    n = len(sources)
    if n == 0:
        return {}, [], []
    graph = coo_matrix((np.ones(int(same.sum())), (first[same], second[same])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    members: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        members.setdefault(int(label), []).append(i)
    groups = sorted(members.values(), key=lambda m: (-len(m), str(sources[m[0]])))
    people = {f"person-{k + 1:04d}": [sources[i] for i in m]
              for k, m in enumerate(g for g in groups if len(g) >= MIN_PHOTOS)}
    single = [sources[g[0]] for g in groups if len(g) < MIN_PHOTOS]
    apart = ~same & (labels[first] != labels[second])
    a, b, s = first[apart], second[apart], sims[apart]
    order = np.argsort(-s, kind="stable")[:MAX_BORDERLINE]
    borderline = [(sources[int(a[k])], sources[int(b[k])], float(s[k])) for k in order]
    return people, single, borderline


def check_grouping(grouping: Grouping, total: int) -> None:
    """Stop when nothing trainable was found, saying why."""
    if grouping.people:
        return
    faces = total - len(grouping.no_face) - len(grouping.unreadable)
    if faces <= 0:
        first = next(iter({**grouping.unreadable, **grouping.no_face}.values()), "")
        raise TrainingDataError(f"group: none of the {total} photo(s) has a usable face (first: {first}). Use photos "
                                "where one face is clearly visible.")
    raise TrainingDataError(
        f"group: no two photos show the same person at threshold {grouping.threshold:g}: {len(grouping.single)} "
        f"photo(s) each stand alone, {len(grouping.several_faces)} have several faces. Training needs at least "
        f"{MIN_PHOTOS} photos of each person; add more photos per person (or, if these are the same people, lower "
        "--threshold; the borderline pairs in the report show the closest ones).")


def _target_name(source: Path, root: Path) -> str:
    """A unique file name in the person's folder: the path inside the pile with ``/`` as ``__``."""
    return "__".join(source.relative_to(root).parts)


def _same_file(target: Path, source: Path, mode: str) -> bool:
    if mode == "symlink":
        return target.is_symlink() and Path(os.readlink(target)) == source.resolve()
    try:
        return target.stat().st_size == source.stat().st_size and target.read_bytes() == source.read_bytes()
    except OSError:
        return False


def place_photos(grouping: Grouping, root: Path, output: Path, mode: str) -> int:
    """Write ``output/<person>/`` as links or copies; files already in place (a re-run) are kept.

    Returns how many files were written this time.
    """
    if mode not in MODES:
        raise ValueError(f"group: --mode must be one of {', '.join(MODES)}, not '{mode}'")
    written = 0
    for person, photos in grouping.people.items():
        folder = output / person
        folder.mkdir(parents=True, exist_ok=True)
        for source in photos:
            target = folder / _target_name(source, root)
            if target.exists() or target.is_symlink():
                if _same_file(target, source, mode):
                    continue
                raise FileExistsError(f"group: '{target}' exists and is not a {mode} of '{source}'; use an empty "
                                      "--output, or --overwrite to replace an earlier grouping")
            if mode == "symlink":
                os.symlink(source.resolve(), target)
            elif mode == "hardlink":
                os.link(source, target)
            else:
                write_atomic(target, lambda tmp, source=source: shutil.copy2(source, tmp))
            written += 1
    return written


def report(grouping: Grouping, root: Path, settings: dict) -> dict:
    """The report as data (``group_report.json``); ``report_text`` renders it for people."""
    rel = lambda p: str(Path(p).relative_to(root))  # noqa: E731
    return {
        "settings": settings,
        "people_found": len(grouping.people),
        "photos_sorted": sum(len(v) for v in grouping.people.values()),
        "photos_per_person": {name: len(v) for name, v in grouping.people.items()},
        "people": {name: [rel(p) for p in v] for name, v in grouping.people.items()},
        "single_photos": [rel(p) for p in grouping.single],
        "no_face": {rel(p): why for p, why in grouping.no_face.items()},
        "several_faces": {rel(p): n for p, n in grouping.several_faces.items()},
        "unreadable": {rel(p): why for p, why in grouping.unreadable.items()},
        "borderline_pairs": [{"a": rel(a), "b": rel(b), "similarity": round(s, 4)} for a, b, s in grouping.borderline],
    }


def report_text(data: dict) -> str:
    lines = [f"people found: {data['people_found']} ({data['photos_sorted']} photos sorted; threshold "
             f"{data['settings']['threshold']:g}, borderline from {data['settings']['borderline_from']:g})"]
    for name, count in data["photos_per_person"].items():
        lines.append(f"  {name}: {count} photos")

    def section(title: str, entries: Iterable[str]) -> None:
        entries = list(entries)
        lines.append(f"{title}: {len(entries)}")
        lines.extend(f"  {e}" for e in entries)
    section("photos that stand alone (no second photo of that person; not sorted)", data["single_photos"])
    section("photos with no usable face (not sorted)", (f"{p}: {why}" for p, why in data["no_face"].items()))
    section("photos with several faces (not sorted: which one is the person is not guessed)",
            (f"{p}: {n} faces" for p, n in data["several_faces"].items()))
    section("unreadable files (not sorted)", (f"{p}: {why}" for p, why in data["unreadable"].items()))
    section("borderline pairs (similar, but in different groups: check these first)",
            (f"{b['a']} ~ {b['b']}: {b['similarity']:.3f}" for b in data["borderline_pairs"]))
    return "\n".join(lines) + "\n"


def write_report(data: dict, output: Path) -> None:
    write_atomic(output / REPORT_JSON, lambda tmp: tmp.write_text(json.dumps(data, indent=1)))
    write_atomic(output / REPORT_TEXT, lambda tmp: tmp.write_text(report_text(data)))


def prepare_group_output(output: Path, settings: dict, overwrite: bool, is_main: bool = True) -> None:
    """A re-run with the same settings continues; an earlier grouping with others is refused or (--overwrite) removed."""
    previous = output / REPORT_JSON
    if not previous.is_file():
        return
    try:
        before = json.loads(previous.read_text()).get("settings", {})
    except (OSError, ValueError):
        before = {}
    if before == settings:
        return
    if not overwrite:
        changed = ", ".join(f"{k} {before.get(k)} -> {v}" for k, v in settings.items() if before.get(k) != v)
        raise FileExistsError(f"group: '{output}' holds a grouping made with other settings ({changed}). Use another "
                              "--output, or --overwrite to replace it")
    if is_main:
        for path in output.glob("person-*"):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        for name in (REPORT_JSON, REPORT_TEXT):
            (output / name).unlink(missing_ok=True)
