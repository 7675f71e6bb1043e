"""Score a folder of evaluation images (``images/<config>/<identity>/<NN>.png``).

Why separate from the nodes: the CLI scores hundreds of images against a few reference
photos; references are analysed once, images one identity at a time, and the face crops
are kept for FID/LPIPS. The numbers are the same functions the nodes call.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .plan import ReferencePhoto
from .scoring import analyse_faces, clip_i, clip_t, face_similarity, reference_face

log = logging.getLogger(__name__)


@dataclass
class Scorer:
    """The loaded backbones of one run."""

    face_analysis: Any
    backbone: str
    facenet: Any = None
    clip: Any = None
    lpips: Any = None  # quality.load_lpips, when asked for
    fid: Any = None  # quality.load_fid_extractor, when asked for
    draw_scatter: bool = True  # False when matplotlib is missing (checked before any work)


@dataclass
class Scored:
    rows: list[dict] = field(default_factory=list)
    gen_crops: dict[str, list[np.ndarray]] = field(default_factory=dict)  # config -> face crops
    ref_crops: dict[str, np.ndarray] = field(default_factory=dict)  # identity -> reference crop


def _rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def score_images(images_root: Path, configs: Sequence[str], identities: Sequence[ReferencePhoto], prompts: Sequence[str],
                 scorer: Scorer, progress: Callable[[int, int], None] | None = None) -> Scored:
    """Per-image rows for every image present; a reference without a face is an error."""
    result = Scored()
    refs = {}
    for ident in identities:
        try:
            refs[ident.name] = reference_face(scorer.face_analysis, _rgb(ident.path), input_name="--identities")
        except ValueError as exc:
            raise ValueError(f"{exc} ({ident.path})") from None
        result.ref_crops[ident.name] = refs[ident.name].crop
    groups = [(c, i) for c in configs for i in identities if (Path(images_root) / c / i.name).is_dir()]
    for n, (config, ident) in enumerate(groups):
        folder = Path(images_root) / config / ident.name
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.stem.isdigit())
        files = [p for p in files if int(p.stem) < len(prompts)]
        if not files:
            continue
        images = [_rgb(p) for p in files]
        texts = [prompts[int(p.stem)] for p in files]
        faces = analyse_faces(scorer.face_analysis, images)
        ref = refs[ident.name]
        face = face_similarity(faces, ref, scorer.backbone, scorer.facenet)
        ci = clip_i(faces, ref, scorer.clip)
        ct = clip_t(images, texts, scorer.clip)
        for path, f, text, a, b, c in zip(files, faces, texts, face, ci, ct):
            result.rows.append({"config": config, "identity": ident.name, "prompt_index": int(path.stem),
                                "prompt": text, "image": str(path), "face_found": f.found, "backbone": scorer.backbone,
                                "face_score": float(a), "clip_i": float(b), "clip_t": float(c),
                                "lpips": float("nan"), "reason": f.reason.replace(f"image {f.index}", "image"),
                                "_crop": f.crop})
            if f.found:
                result.gen_crops.setdefault(config, []).append(f.crop)
        if progress is not None:
            progress(n + 1, len(groups))
    return result
