"""Reference photos of one person -> an :class:`Identity` (docs/IDENTITY.md, "Encoding").

For each photo: detect and align the face (``faces.py``), take ArcFace's embedding and
CLIP vision's hidden states of the aligned face, then map them to identity tokens with
the adapter's mappers. Decisions (the paper is silent on them):

- **Several photos** (``average``): ``"embeddings"`` (default) averages the ArcFace
  embeddings (re-normalised to unit length when the adapter reads normalised ones, as a
  mean of unit vectors is shorter than any the mapper was trained on) and the CLIP
  hidden states, then maps once; ``"tokens"`` maps each photo and averages the tokens.
  Embeddings first is what FaceID pipelines do and keeps the mapper on its training
  distribution; tokens first weighs each photo's mapped identity equally.
- **Negative side**: the tokens of a zero face embedding and of CLIP's view of a
  mean-grey image, the convention of FaceID-Plus adapters (their reference feeds an
  all-zero tensor *after* CLIP normalisation; the CLIP mean colour is the image that
  ComfyUI's preprocessing maps closest to it, within its 1/255 rounding). Native
  adapters are trained with the same negative side (``training/pairs.py``).
- **CLIP crop**: ``norm_crop`` to 224 (see ``faces.CLIP_CROP_SIZE``); the same crops are
  returned as the preview IMAGE.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..adapter.model import Adapter
from .faces import CLIP_CROP_SIZE, FaceCrop, check_face_analysis, detection_sizes, find_face
from .images import check_pixels, split_images, to_bgr_uint8
from .types import Identity, token_problem

log = logging.getLogger(__name__)

AVERAGE_MODES = ("embeddings", "tokens")
CLIP_OUTPUTS = {"penultimate": "penultimate_hidden_states", "last": "last_hidden_state"}
CLIP_MEAN_RGB = (0.48145466, 0.4578275, 0.40821073)  # CLIP's normalisation mean: this colour becomes ~0


@dataclass(frozen=True)
class EncodeSettings:
    face_index: int = -1
    average: str = "embeddings"
    skip_images_without_face: bool = True


def clip_hidden_states(clip_vision: Any, images_rgb: torch.Tensor, layer: str) -> torch.Tensor:
    """Hidden states of core ``CLIP_VISION`` for ``[n, H, W, 3]`` images in 0..1."""
    if not hasattr(clip_vision, "encode_image"):
        raise ValueError(f"clip_vision: expected a CLIP_VISION model (core 'Load CLIP Vision'), "
                         f"got {type(clip_vision).__name__}")
    if layer not in CLIP_OUTPUTS:
        raise ValueError(f"adapter: unknown clip_layer '{layer}' (expected one of {', '.join(CLIP_OUTPUTS)})")
    with torch.no_grad():  # the executor runs nodes in inference mode; programmatic callers may not
        output = clip_vision.encode_image(images_rgb)
    hidden = output[CLIP_OUTPUTS[layer]]
    return hidden.float().cpu()


def uncond_clip_hidden(clip_vision: Any, layer: str) -> torch.Tensor:
    """CLIP hidden states of the negative side (``[1, tokens, width]``): the mean-grey image."""
    blank = torch.tensor(CLIP_MEAN_RGB).view(1, 1, 1, 3).expand(1, CLIP_CROP_SIZE, CLIP_CROP_SIZE, 3).contiguous()
    return clip_hidden_states(clip_vision, blank, layer)


def prepare_face_embeds(embeddings: np.ndarray, mode: str) -> torch.Tensor:
    """``[n, 512]`` ArcFace vectors as the adapter reads them (unit length or raw)."""
    embeds = torch.from_numpy(np.asarray(embeddings, dtype=np.float32))
    if mode == "normalized":
        return torch.nn.functional.normalize(embeds, dim=-1)
    if mode == "raw":
        return embeds
    raise ValueError(f"adapter: unknown face_embedding mode '{mode}' (expected 'normalized' or 'raw')")


def average_embeddings(face_embeds: torch.Tensor, mode: str) -> torch.Tensor:
    mean = face_embeds.mean(dim=0, keepdim=True)
    return torch.nn.functional.normalize(mean, dim=-1) if mode == "normalized" else mean


def _check_adapter(adapter: Any) -> None:
    if not isinstance(adapter, Adapter):
        raise ValueError(f"adapter: expected an INFINITEID_ADAPTER, got {type(adapter).__name__}")
    if adapter.mapper is None:
        raise ValueError(f"adapter: '{adapter.name}' has no mappers (key/value weights only), so it cannot encode "
                         "a face; load an adapter file that includes the identity encoder's mappers")


def _check_tokens(tokens: torch.Tensor, adapter: Adapter) -> torch.Tensor:
    if tokens.dim() != 3 or tokens.shape[-1] != adapter.token_dim:
        raise ValueError(f"adapter: '{adapter.name}' mappers give tokens of shape {tuple(tokens.shape)} but its "
                         f"key/value weights read {adapter.token_dim}-d tokens; the adapter file is inconsistent")
    problem = token_problem(tokens)
    if problem:
        raise ValueError(f"adapter: '{adapter.name}' produced tokens with {problem}; the adapter file is damaged")
    return tokens


def collect_faces(face_analysis: Any, images: list[torch.Tensor], settings: EncodeSettings,
                  progress: Any = None) -> tuple[list[FaceCrop], dict[int, str]]:
    """Chosen faces of all usable images and, by index, why the others were skipped."""
    sizes = detection_sizes(face_analysis)
    crops: list[FaceCrop] = []
    skipped: dict[int, str] = {}
    several = len(images) > 1
    for i, img in enumerate(images):
        found = find_face(face_analysis, to_bgr_uint8(img), i, settings.face_index, sizes)
        if isinstance(found, str):
            if not (settings.skip_images_without_face and several):
                hint = ". Enable skip_images_without_face to ignore such images" if several else ""
                raise ValueError(f"image: {found}{hint}")
            log.warning("InfiniteIDEncode: skipping image: %s", found)
            skipped[i] = found
        else:
            crops.append(found)
        if progress is not None:
            progress.update(1)
    if not crops:
        reasons = "; ".join(skipped.values())
        raise ValueError(f"image: no usable face in any of the {len(images)} image(s): {reasons}")
    return crops, skipped


def _progress(total: int) -> Any:
    try:
        import comfy.utils

        return comfy.utils.ProgressBar(total)
    except Exception:  # noqa: BLE001 - no host (plain scripts): no progress reporting
        return None


def encode_identity(face_analysis: Any, clip_vision: Any, adapter: Adapter, image: Any,
                    settings: EncodeSettings = EncodeSettings()) -> tuple[Identity, torch.Tensor]:
    """The identity of the person in ``image`` and the aligned face crops used."""
    if settings.average not in AVERAGE_MODES:
        raise ValueError(f"average: '{settings.average}' is not one of {', '.join(AVERAGE_MODES)}")
    _check_adapter(adapter)
    check_face_analysis(face_analysis)
    images = split_images(image)
    check_pixels(images)
    info = adapter.info
    layer = info.get("clip_layer", "penultimate")
    embed_mode = info.get("face_embedding", "normalized")

    # The negative side first: it also tells whether CLIP vision fits the adapter before
    # any face work is done.
    uncond_hidden = uncond_clip_hidden(clip_vision, layer)
    width = info.get("clip_width")
    if width is not None and uncond_hidden.shape[-1] != int(width):
        raise ValueError(f"clip_vision: this CLIP vision model gives {uncond_hidden.shape[-1]}-wide hidden states but "
                         f"adapter '{adapter.name}' expects {int(width)}-wide ones; load the CLIP vision model the "
                         f"adapter was trained with (CLIP-ViT-H-14 has 1280)")

    crops, skipped = collect_faces(face_analysis, images, settings, _progress(len(images)))
    face_embeds = prepare_face_embeds(np.stack([c.embedding for c in crops]), embed_mode)
    crop_batch = torch.from_numpy(np.stack([c.crop_rgb for c in crops])).float() / 255.0
    hidden = clip_hidden_states(clip_vision, crop_batch, layer)

    if settings.average == "embeddings":
        cond = adapter.encode_tokens(average_embeddings(face_embeds, embed_mode), hidden.mean(dim=0, keepdim=True))
    else:
        cond = adapter.encode_tokens(face_embeds, hidden).mean(dim=0, keepdim=True)
    uncond = adapter.encode_tokens(torch.zeros_like(face_embeds[:1]), uncond_hidden)
    cond, uncond = _check_tokens(cond, adapter), _check_tokens(uncond, adapter)

    identity = Identity(
        cond=cond, uncond=uncond,
        features={"face_embeds": face_embeds, "clip_hidden": hidden, "uncond_clip_hidden": uncond_hidden},
        info={
            "adapter": adapter.name, "adapter_format": info.get("format", ""), "images": len(images),
            "used": [c.index for c in crops], "skipped": sorted(skipped),
            "boxes": {str(c.index): [round(v, 1) for v in c.bbox] for c in crops},
            "faces_found": {str(c.index): c.faces_found for c in crops},
            "det_size": {str(c.index): list(c.det_size) for c in crops},
            "average": settings.average, "face_index": settings.face_index,
        })
    log.info("InfiniteIDEncode: identity from %d of %d image(s) (%s tokens of %d, adapter '%s')",
             len(crops), len(images), cond.shape[1], cond.shape[2], adapter.name)
    return identity, crop_batch
