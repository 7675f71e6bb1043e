"""The evaluation math of supplementary A.2/A.5, in plain numpy/torch.

Why its own module: the nodes, the ``eval`` command and the tests all mean the same
numbers. Nothing here knows ComfyUI, files or backbones: embeddings in, numbers out.

- ``M_FaceNet`` / CLIP-I: cosine of two face embeddings (eq. 1), 0 when either face is
  missing (the FastComposer protocol the paper follows, docs/EVALUATION.md).
- CLIP-T: cosine of the image embedding and the prompt embedding (eq. 3).
- Summary: ``mean(zscore(M_FaceNet), zscore(CLIP-I))`` over the compared configurations
  (eq. 2), with the population standard deviation (``ddof=0``).
- FID and LPIPS come from torchmetrics / lpips (``backbones.py``); this module only
  averages what they return.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

NO_FACE_SCORE = 0.0


def cosine(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of ``[N, D]`` (or ``[D]``) with ``[N, D]`` / ``[1, D]`` / ``[D]``."""
    ta = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).double()
    tb = torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b).double()
    ta, tb = ta.reshape(-1, ta.shape[-1]), tb.reshape(-1, tb.shape[-1])
    if ta.shape[-1] != tb.shape[-1]:
        raise ValueError(f"embeddings of different sizes ({ta.shape[-1]} and {tb.shape[-1]}) cannot be compared")
    return torch.nn.functional.cosine_similarity(ta, tb, dim=-1, eps=1e-12).numpy()


def face_scores(gen: Sequence[np.ndarray | None], ref: np.ndarray) -> np.ndarray:
    """Cosine of each generated face embedding with the reference's; ``None`` (no face) scores 0."""
    out = np.full(len(gen), NO_FACE_SCORE, dtype=np.float64)
    for i, emb in enumerate(gen):
        if emb is not None:
            out[i] = float(cosine(emb, ref)[0])
    return out


def zscore(values: Sequence[float]) -> np.ndarray:
    """``(x - mean) / std`` with the population std; all zeros when every value is equal.

    Why zeros: with one configuration, or identical ones, nothing is better than anything
    else; dividing by zero would only print NaN in the summary table.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return x
    std = float(x.std())
    if not math.isfinite(std) or std == 0.0:
        return np.zeros_like(x)
    return (x - x.mean()) / std


def summary_scores(face_means: Mapping[str, float], clip_i_means: Mapping[str, float]) -> dict[str, float]:
    """Supplementary eq. 2 per configuration: ``mean(zscore(M_FaceNet), zscore(CLIP-I))``."""
    names = list(face_means)
    if set(names) != set(clip_i_means):
        raise ValueError("the identity score and CLIP-I must be given for the same configurations")
    zf = zscore([face_means[n] for n in names])
    zc = zscore([clip_i_means[n] for n in names])
    return {n: float((zf[i] + zc[i]) / 2.0) for i, n in enumerate(names)}


def mean_or_nan(values: Sequence[float | None]) -> float:
    """Mean of the values that exist; NaN when none do (shown as empty in reports)."""
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(kept)) if kept else float("nan")
