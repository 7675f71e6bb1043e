"""Per-image scores: face detection and alignment, then M_FaceNet / ArcFace, CLIP-I, CLIP-T.

Why here and not in the nodes: the nodes and ``python . eval`` must give the same number
for the same image. Faces are found with the pack's own insightface path
(``identity.faces.find_face``: retrying detection sizes, the largest face, ArcFace
alignment with ``norm_crop`` at 224 px), not with MTCNN as the paper's protocol does
(docs/EVALUATION.md says why). An image without a face scores 0 in every face metric and
is flagged; its CLIP-T is still computed (it needs no face).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..identity.faces import check_face_analysis, detection_sizes, find_face
from .metrics import NO_FACE_SCORE, cosine

BACKBONES = ("facenet", "arcface")


@dataclass(eq=False)
class FaceResult:
    """One image's face, or why there is none (``crop`` is ``None`` then)."""

    index: int
    reason: str = ""
    bbox: list[float] = field(default_factory=list)
    faces_found: int = 0
    arcface: np.ndarray | None = None
    crop: np.ndarray | None = None  # aligned 224x224 RGB uint8

    @property
    def found(self) -> bool:
        return self.crop is not None


def analyse_faces(analysis: Any, images_rgb: Sequence[np.ndarray]) -> list[FaceResult]:
    """Detect and align the largest face of each ``H x W x 3`` uint8 RGB image."""
    check_face_analysis(analysis)
    sizes = detection_sizes(analysis)
    results = []
    for i, rgb in enumerate(images_rgb):
        found = find_face(analysis, np.ascontiguousarray(rgb[:, :, ::-1]), i, -1, sizes)
        if isinstance(found, str):
            results.append(FaceResult(index=i, reason=found))
        else:
            results.append(FaceResult(index=i, bbox=found.bbox, faces_found=found.faces_found,
                                      arcface=found.embedding, crop=found.crop_rgb))
    return results


def reference_face(analysis: Any, image_rgb: np.ndarray, input_name: str = "reference") -> FaceResult:
    """The reference's face; without one nothing can be compared, so this is an error."""
    face = analyse_faces(analysis, [image_rgb])[0]
    if not face.found:
        raise ValueError(f"{input_name}: {face.reason.replace('image 0', 'the reference image')}; the identity "
                         f"scores need a reference photo with a visible face")
    return face


def identity_embeddings(faces: Sequence[FaceResult], backbone: str, facenet: Any = None) -> list[np.ndarray | None]:
    """Per face: the backbone's embedding, ``None`` where no face was found."""
    if backbone not in BACKBONES:
        raise ValueError(f"backbone: '{backbone}' is not one of {', '.join(BACKBONES)}")
    out: list[np.ndarray | None] = [None] * len(faces)
    present = [i for i, f in enumerate(faces) if f.found]
    if backbone == "arcface":
        for i in present:
            out[i] = faces[i].arcface
        return out
    if facenet is None:
        raise ValueError("backbone facenet needs a loaded FaceNet model (facenet_model)")
    embeddings = facenet.embed([faces[i].crop for i in present])
    for i, emb in zip(present, embeddings):
        out[i] = emb
    return out


def face_similarity(gen: Sequence[FaceResult], ref: FaceResult, backbone: str, facenet: Any = None) -> np.ndarray:
    """``M_FaceNet`` (or the ArcFace equivalent) per generated image; 0 where no face."""
    embs = identity_embeddings(list(gen) + [ref], backbone, facenet)
    ref_emb = embs[-1]
    return np.array([NO_FACE_SCORE if e is None else float(cosine(e, ref_emb)[0]) for e in embs[:-1]])


def clip_i(gen: Sequence[FaceResult], ref: FaceResult, clip: Any) -> np.ndarray:
    """CLIP-I per generated image: CLIP image cosine of the face crops; 0 where no face."""
    present = [i for i, f in enumerate(gen) if f.found]
    scores = np.full(len(gen), NO_FACE_SCORE)
    if not present:
        return scores
    embs = clip.embed_images([gen[i].crop for i in present] + [ref.crop])
    sims = cosine(embs[:-1], embs[-1:])
    for i, s in zip(present, sims):
        scores[i] = float(s)
    return scores


def clip_t(images_rgb: Sequence[np.ndarray], prompts: Sequence[str], clip: Any) -> np.ndarray:
    """CLIP-T per image: the whole image against its prompt (one prompt for all, or one each)."""
    if len(prompts) == 1:
        prompts = list(prompts) * len(images_rgb)
    if len(prompts) != len(images_rgb):
        raise ValueError(f"prompt: {len(prompts)} prompts for {len(images_rgb)} images")
    if not len(images_rgb):
        return np.zeros(0)
    return cosine(clip.embed_images(images_rgb), clip.embed_texts(prompts))
