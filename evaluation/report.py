"""Report files of ``python . eval``: per-image CSV, summary table, image grids, scatter plot.

Why plain CSV/Markdown/PNG: people paste the summary into an issue or a paper table and
load the CSV into whatever they use. Formats are described in docs/EVALUATION.md; the
column names here are that contract.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .metrics import mean_or_nan, summary_scores

IMAGE_COLUMNS = ("config", "identity", "prompt_index", "prompt", "image", "face_found", "backbone", "face_score",
                 "clip_i", "clip_t", "lpips", "reason")
SUMMARY_COLUMNS = ("config", "images", "faces_found", "face_score", "clip_i", "clip_t", "id_zscore", "fid", "lpips")
THUMB = 128


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6f}"
    return str(value)


def write_csv(path: Path, rows: Iterable[Mapping[str, object]], columns: Sequence[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k, "")) for k in columns})
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def summarise(rows: Sequence[Mapping[str, object]], configs: Sequence[str],
              quality: Mapping[str, Mapping[str, float]] | None = None) -> list[dict[str, object]]:
    """One row per configuration: means (no-face images count as 0) and eq. 2's z-score."""
    table = []
    for name in configs:
        mine = [r for r in rows if r["config"] == name]
        table.append({"config": name, "images": len(mine), "faces_found": sum(bool(r["face_found"]) for r in mine),
                      "face_score": mean_or_nan([r["face_score"] for r in mine]),
                      "clip_i": mean_or_nan([r["clip_i"] for r in mine]),
                      "clip_t": mean_or_nan([r["clip_t"] for r in mine]),
                      "fid": (quality or {}).get(name, {}).get("fid", float("nan")),
                      "lpips": (quality or {}).get(name, {}).get("lpips", float("nan"))})
    scored = [t for t in table if not (math.isnan(t["face_score"]) or math.isnan(t["clip_i"]))]
    z = summary_scores({t["config"]: t["face_score"] for t in scored}, {t["config"]: t["clip_i"] for t in scored})
    for t in table:
        t["id_zscore"] = z.get(t["config"], float("nan"))
    return table


def write_markdown(path: Path, table: Sequence[Mapping[str, object]], backbone: str) -> Path:
    """The summary as a Markdown table (FID/LPIPS columns only when computed)."""
    optional = [c for c in ("fid", "lpips") if any(not math.isnan(float(t[c])) for t in table)]
    heads = ["configuration", "images", "faces", f"M_{'FaceNet' if backbone == 'facenet' else 'ArcFace'}",
             "CLIP-I", "CLIP-T", "mean z (id)"] + [c.upper() for c in optional]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for t in table:
        cells = [t["config"], t["images"], t["faces_found"]] + [
            "" if math.isnan(float(t[c])) else f"{float(t[c]):.3f}"
            for c in ["face_score", "clip_i", "clip_t", "id_zscore"] + optional]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def write_grid(path: Path, cells: Sequence[Sequence[tuple[Path | None, bool]]]) -> Path:
    """Thumbnails, one row per identity and one column per prompt; red frame = no face."""
    from PIL import Image, ImageDraw

    rows, cols = len(cells), max((len(r) for r in cells), default=0)
    grid = Image.new("RGB", (max(1, cols) * THUMB, max(1, rows) * THUMB), (32, 32, 32))
    for y, row in enumerate(cells):
        for x, (image, face) in enumerate(row):
            if image is None or not Path(image).is_file():
                continue
            with Image.open(image) as im:
                thumb = im.convert("RGB")
                thumb.thumbnail((THUMB, THUMB))
            grid.paste(thumb, (x * THUMB, y * THUMB))
            if not face:
                ImageDraw.Draw(grid).rectangle([x * THUMB, y * THUMB, (x + 1) * THUMB - 1, (y + 1) * THUMB - 1],
                                               outline=(230, 30, 30), width=3)
    grid.save(path)
    return Path(path)


def write_scatter(path: Path, table: Sequence[Mapping[str, object]]) -> Path:
    """Supplementary Fig. 2: identity (eq. 2 z-score) against prompt following (CLIP-T)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    for t in table:
        x, y = float(t["clip_t"]), float(t["id_zscore"])
        if math.isnan(x) or math.isnan(y):
            continue
        ax.scatter([x], [y], s=40)
        ax.annotate(str(t["config"]), (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.locator_params(axis="x", nbins=5)
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_xlabel("CLIP-T (prompt following)")
    ax.set_ylabel("mean(z(M_FaceNet), z(CLIP-I)) (identity)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
