"""Preview images during training, drawn through the pack's own inference path.

Why the real path (``apply_patch`` + ``sample_dual_stream``, the code behind
``InfiniteID Apply`` and ``InfiniteID Sampler``): a preview then shows what a user will
get from the checkpoint, dual-stream mixing and all, not a training-only shortcut. The
person is one held out from training, so the preview shows whether the adapter
generalises rather than memorises.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..adapter.model import Adapter
from ..identity.encode import prepare_face_embeds
from ..identity.types import Identity
from ..model_patch.install import PatchSettings, apply_patch
from ..sampling.dual_stream import sample_dual_stream
from .cache import CachedPhoto, load_cached

log = logging.getLogger(__name__)


def encode_text(clip: Any, text: str) -> list:
    """``CLIPTextEncode`` of the host: ``[[cond, {"pooled_output": pooled}]]``."""
    tokens = clip.tokenize(text)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


class Previewer:
    """Writes ``previews/step-XXXXXX.png`` for one reference photo."""

    def __init__(self, model: Any, clip: Any, vae: Any, photo: CachedPhoto, uncond_clip: torch.Tensor,
                 output: Path, prompt: str, steps: int, cfg: float, resolution: int, seed: int = 0) -> None:
        self.model, self.vae, self.output = model, vae, Path(output) / "previews"
        self.positive, self.negative = encode_text(clip, prompt), encode_text(clip, "")
        tensors, _ = load_cached(photo)
        self.face, self.clip_hidden = tensors["face_embedding"][None], tensors["clip_hidden"][None].float()
        self.uncond_clip = uncond_clip.float()[None] if uncond_clip.dim() == 2 else uncond_clip.float()
        self.steps, self.cfg, self.resolution, self.seed = steps, cfg, resolution, seed
        self.source = photo.source

    def __call__(self, adapter: Adapter, step: int) -> Path:
        face = prepare_face_embeds(self.face.numpy(), adapter.info.get("face_embedding", "normalized"))
        identity = Identity(cond=adapter.encode_tokens(face, self.clip_hidden),
                            uncond=adapter.encode_tokens(torch.zeros_like(face), self.uncond_clip))
        patched = apply_patch(self.model, adapter, identity, PatchSettings())
        side = self.resolution // 8
        latent = {"samples": torch.zeros(1, 4, side, side)}
        with torch.no_grad():
            result = sample_dual_stream(patched, self.seed, self.steps, self.cfg, "euler", "normal", self.positive,
                                        self.negative, latent, node="training preview")
            image = self.vae.decode(result.identity["samples"])
        path = self.output / f"step-{step:06d}.png"
        save_png(image[0], path)
        log.info("step %d: preview of %s -> %s", step, self.source.parent.name, path)
        return path


def save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    array = (image.float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    Image.fromarray(array).save(path)
