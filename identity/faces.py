"""BGR photos -> detected, chosen and aligned faces (insightface 0.7.3 and 2.x).

Why separate from ``encode.py``: this half deals only with insightface (detection
retries, which face to use, alignment), the other half with CLIP vision and the
adapter's mappers. It imports neither torch nor ComfyUI, so its insightface-version
behaviour is tested in a plain insightface 0.7.3 environment too. Each image either
yields a :class:`FaceCrop` or a sentence saying why not; the caller decides whether that
sentence skips the image or stops the node.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MIN_IMAGE_SIDE = 64
"""Smaller images are refused: a face must span at least ~32 pixels to be detected and
aligned, and upscaling a thumbnail only invents one."""
MIN_DET_SIZE = 320
DET_SIZE_STEP = 64
CLIP_CROP_SIZE = 224
"""``norm_crop(..., image_size=224)``: the IP-Adapter FaceID-Plus pipeline's CLIP input.
It is ArcFace's 112 alignment at twice the resolution, so ArcFace and CLIP see the same
region of the face."""


@dataclass
class FaceCrop:
    """One reference image's chosen face: where it was and what the encoders read."""

    index: int
    bbox: list[float]
    faces_found: int
    det_size: tuple[int, int]
    embedding: np.ndarray  # raw ArcFace output, (512,)
    crop_rgb: np.ndarray  # aligned CLIP_CROP_SIZE^2 RGB uint8


def _pair(value: Any) -> tuple[int, int] | None:
    try:
        if len(value) == 2 and all(np.ndim(v) == 0 for v in value):
            return int(value[0]), int(value[1])
    except TypeError:
        return None
    return None


def detection_sizes(analysis: Any) -> list[tuple[int, int]]:
    """The prepared detection size, then smaller ones down to 320 in steps of 64.

    A face that fills the photo can be too large for the detector's anchors at 640;
    shrinking the detector input finds it. 2.x may store a list of sizes: the largest is
    the start.
    """
    stored = getattr(analysis, "det_size", None)
    start = _pair(stored)
    if start is None and isinstance(stored, (list, tuple)) and stored:
        pairs = [p for p in (_pair(s) for s in stored) if p is not None]
        start = max(pairs, key=lambda p: p[0] * p[1]) if pairs else None
    if start is None:
        start = _pair(getattr(getattr(analysis, "det_model", None), "input_size", None) or ()) or (640, 640)
    sizes = [start]
    width, height = start
    while min(width, height) - DET_SIZE_STEP >= MIN_DET_SIZE:
        width, height = width - DET_SIZE_STEP, height - DET_SIZE_STEP
        sizes.append((width, height))
    return sizes


def check_face_analysis(analysis: Any) -> None:
    models = getattr(analysis, "models", None)
    if getattr(analysis, "det_model", None) is None or not isinstance(models, dict) or "recognition" not in models:
        raise ValueError("face_analysis: this object has no insightface detector and recognition (ArcFace) model; "
                         "connect 'InfiniteID Face Analysis Loader' (or another pack's FACEANALYSIS loader)")


def detect(analysis: Any, bgr: np.ndarray, sizes: Sequence[tuple[int, int]]) -> tuple[list[Any], tuple[int, int]]:
    """Faces at the first detection size that finds any (``Face`` objects with kps)."""
    from insightface.app.common import Face

    for size in sizes:
        boxes, kpss = analysis.det_model.detect(bgr, input_size=size, max_num=0, metric="default")
        if boxes.shape[0] and kpss is not None:
            faces = [Face(bbox=boxes[i, :4], kps=kpss[i], det_score=boxes[i, 4]) for i in range(boxes.shape[0])]
            return faces, size
    return [], sizes[-1]


def choose_face(faces: list[Any], face_index: int) -> Any | None:
    """``-1``: the largest face. ``k >= 0``: the k-th face from the left (box centres).

    Why not detection order: it follows detector scores, which users cannot see; "the
    second person from the left" is something they can.
    """
    if face_index < 0:
        return max(faces, key=lambda f: float((f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])))
    ordered = sorted(faces, key=lambda f: (float(f.bbox[0] + f.bbox[2]), float(f.bbox[1] + f.bbox[3])))
    return ordered[face_index] if face_index < len(ordered) else None


def find_face(analysis: Any, bgr: np.ndarray, index: int, face_index: int,
              sizes: Sequence[tuple[int, int]]) -> FaceCrop | str:
    """The chosen, aligned face of one ``H x W x 3`` uint8 BGR image, or why there is none."""
    from insightface.utils import face_align

    height, width = int(bgr.shape[0]), int(bgr.shape[1])
    if min(height, width) < MIN_IMAGE_SIDE:
        return (f"image {index} is {width}x{height} pixels; the face detector needs at least "
                f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} (use a larger photo of the face)")
    faces, size = detect(analysis, bgr, sizes)
    if not faces:
        tried = ", ".join(str(s[0]) if s[0] == s[1] else f"{s[0]}x{s[1]}" for s in sizes)
        return f"no face found in image {index} ({width}x{height}); detection sizes tried: {tried}"
    face = choose_face(faces, face_index)
    if face is None:
        return f"image {index} has {len(faces)} face(s) but face_index is {face_index} (0 = leftmost face)"
    if len(faces) > 1:
        log.info("image %d: %d faces found; using %s (box %s)", index, len(faces),
                 "the largest" if face_index < 0 else f"face {face_index} from the left",
                 [round(float(v)) for v in face.bbox])
    embedding = analysis.models["recognition"].get(bgr, face)
    crop_bgr = face_align.norm_crop(bgr, landmark=face.kps, image_size=CLIP_CROP_SIZE)
    return FaceCrop(index=index, bbox=[float(v) for v in face.bbox], faces_found=len(faces), det_size=size,
                    embedding=np.asarray(embedding, dtype=np.float32).reshape(-1),
                    crop_rgb=np.ascontiguousarray(crop_bgr[:, :, ::-1]))
