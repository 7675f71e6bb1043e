"""``InfiniteIDFaceSimilarity`` and ``InfiniteIDClipScore``: the paper's evaluation numbers
for one batch, inside a workflow (supplementary A.2; the math is in ``evaluation/``).

Both give the batch mean, a JSON string with one entry per image (``index``, the score(s),
``face_found``, ``reason``), and the images annotated with the face box and the scores.
An image without a face scores 0 and is flagged (``face_found: false``, red frame).
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..evaluation import backbones
from ..evaluation.annotate import annotate
from ..evaluation.scoring import BACKBONES, analyse_faces, clip_i, clip_t, face_similarity, reference_face
from ..host.errors import node_error
from ..identity.images import check_pixels, split_images
from .inputs import checked_inputs

SIMILARITY = "InfiniteIDFaceSimilarity"
CLIP_SCORE = "InfiniteIDClipScore"

_FACE_ANALYSIS_TIP = ("From 'InfiniteID Face Analysis Loader': finds and aligns the faces (and is the ArcFace "
                      "backbone).")
_IMAGE_TIP = "The generated images to score (a batch)."
_REFERENCE_TIP = "The identity's reference photo (its largest face is used; the first image of a batch)."


def _rgb_uint8(image: Any, name: str) -> list[np.ndarray]:
    try:
        parts = split_images(image)
        check_pixels(parts)
    except ValueError as exc:
        raise ValueError(str(exc).replace("image:", f"{name}:", 1)) from exc
    return [(p.clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8) for p in parts]


def _progress(total: int) -> Any:
    """ComfyUI's progress bar (the editor shows it on the node); stages, not images."""
    import comfy.utils

    return comfy.utils.ProgressBar(total)


def _entry(face, **scores: float) -> dict:
    return {"index": face.index, **{k: round(float(v), 6) for k, v in scores.items()},
            "face_found": face.found, "reason": face.reason}


class InfiniteIDFaceSimilarity:
    DESCRIPTION = ("Identity fidelity of generated images: the cosine similarity of each image's face with the "
                   "reference's, with FaceNet (M_FaceNet, the paper's metric) or ArcFace. An image without a face "
                   "scores 0 and is flagged. Outputs the batch mean, per-image scores (JSON) and annotated images.")
    CATEGORY = "InfiniteID/evaluation"
    SEARCH_ALIASES = ["face similarity", "identity score", "facenet", "arcface", "face id score", "evaluate"]
    RETURN_TYPES = ("FLOAT", "STRING", "IMAGE")
    RETURN_NAMES = ("mean_score", "scores", "annotated")
    FUNCTION = "score"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "face_analysis": ("FACEANALYSIS", {"tooltip": _FACE_ANALYSIS_TIP}),
            "image": ("IMAGE", {"tooltip": _IMAGE_TIP}),
            "reference": ("IMAGE", {"tooltip": _REFERENCE_TIP}),
            "backbone": (list(BACKBONES), {"default": "facenet", "advanced": True,
                         "tooltip": "facenet: InceptionResnetV1 (VGGFace2), the paper's M_FaceNet. arcface: the "
                                    "face analysis pack's recognition model (no extra file)."}),
            "facenet_model": (backbones.facenet_choices(), {"default": backbones.FACENET_FILE, "advanced": True,
                              "tooltip": "FaceNet weights in models/facenet/ (used by the facenet backbone only)."}),
        }}

    @checked_inputs(SIMILARITY)
    def score(self, face_analysis, image, reference, backbone, facenet_model):
        with node_error(SIMILARITY):
            images = _rgb_uint8(image, "image")
            ref = reference_face(face_analysis, _rgb_uint8(reference, "reference")[0])
            facenet = backbones.load_facenet(facenet_model) if backbone == "facenet" else None
            bar = _progress(2)
            faces = analyse_faces(face_analysis, images)
            bar.update(1)
            scores = face_similarity(faces, ref, backbone, facenet)
            bar.update(1)
            entries = [_entry(f, score=s) for f, s in zip(faces, scores)]
            lines = [f"{backbone} {s:.3f}" for s in scores]
            return float(np.mean(scores)), json.dumps(entries), annotate(images, faces, lines)


class InfiniteIDClipScore:
    DESCRIPTION = ("CLIP scores of generated images: CLIP-I (CLIP image similarity of the face crops with the "
                   "reference's face, 0 without a face) and CLIP-T (the whole image against the prompt). Outputs "
                   "the batch means, per-image scores (JSON) and annotated images.")
    CATEGORY = "InfiniteID/evaluation"
    SEARCH_ALIASES = ["clip score", "clip-i", "clip-t", "prompt score", "evaluate"]
    RETURN_TYPES = ("FLOAT", "FLOAT", "STRING", "IMAGE")
    RETURN_NAMES = ("clip_i", "clip_t", "scores", "annotated")
    FUNCTION = "score"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "face_analysis": ("FACEANALYSIS", {"tooltip": _FACE_ANALYSIS_TIP}),
            "image": ("IMAGE", {"tooltip": _IMAGE_TIP}),
            "reference": ("IMAGE", {"tooltip": _REFERENCE_TIP}),
            "clip_model": (backbones.clip_choices(), {"default": backbones.CLIP_DEFAULT, "advanced": True,
                           "tooltip": "A full CLIP model (vision + text) in models/clip/: an HF folder such as "
                                      "clip-vit-large-patch14/ (the paper's ViT-L/14) or one HF .safetensors."}),
            "prompt": ("STRING", {"multiline": True, "default": "",
                                  "tooltip": "The prompt the images were generated from (for CLIP-T)."}),
        }}

    @checked_inputs(CLIP_SCORE)
    def score(self, face_analysis, image, reference, clip_model, prompt):
        with node_error(CLIP_SCORE):
            if not str(prompt).strip():
                raise ValueError("prompt: empty; CLIP-T needs the prompt the images were generated from")
            images = _rgb_uint8(image, "image")
            ref = reference_face(face_analysis, _rgb_uint8(reference, "reference")[0])
            clip = backbones.load_clip(clip_model)
            bar = _progress(2)
            faces = analyse_faces(face_analysis, images)
            bar.update(1)
            ci, ct = clip_i(faces, ref, clip), clip_t(images, [prompt], clip)
            bar.update(1)
            entries = [_entry(f, clip_i=a, clip_t=b) for f, a, b in zip(faces, ci, ct)]
            lines = [f"CLIP-I {a:.3f}  CLIP-T {b:.3f}" for a, b in zip(ci, ct)]
            return float(np.mean(ci)), float(np.mean(ct)), json.dumps(entries), annotate(images, faces, lines)


NODE_CLASS_MAPPINGS = {SIMILARITY: InfiniteIDFaceSimilarity, CLIP_SCORE: InfiniteIDClipScore}
NODE_DISPLAY_NAME_MAPPINGS = {SIMILARITY: "InfiniteID Face Similarity", CLIP_SCORE: "InfiniteID CLIP Score"}
