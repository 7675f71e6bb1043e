"""ComfyUI IMAGE input -> one BGR uint8 array per photo, with the input checks.

Why: the IMAGE socket carries whatever the upstream node made. Shapes, channel counts,
dtypes, NaN and the value range are checked here, before insightface sees anything, so
a bad image gives a message naming the ``image`` input and the image's index instead of
an OpenCV error or a silently wrong face.

Value decisions (ComfyUI's IMAGE is float RGB in 0..1):

- integer and boolean tensors are refused: a uint8 image in 0..255 would otherwise be
  clamped to white, and guessing its scale hides the upstream node's bug;
- float values up to ``PIXEL_TOLERANCE`` outside 0..1 (resamplers and colour nodes
  overshoot a little) are accepted and clamped, as ComfyUI's own nodes do;
- values further out (a 0..255 or -1..1 image) are refused with the range found.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

PIXEL_TOLERANCE = 0.1


def split_images(image: Any) -> list[torch.Tensor]:
    """The ``image`` input as a list of ``[H, W, 3]`` float tensors in 0..1.

    ComfyUI IMAGE batches are one ``[B, H, W, C]`` tensor. A list of such tensors (some
    custom nodes emit one for mixed sizes) is accepted too, because each photo is
    detected and aligned on its own. RGBA loses its alpha, grayscale is replicated.
    """
    if isinstance(image, (list, tuple)):
        parts = [p for item in image for p in split_images(item)]
        if not parts:
            raise ValueError("image: the image list is empty")
        return parts
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"image: expected an IMAGE tensor [batch, height, width, channels], got {type(image).__name__}")
    if image.dim() == 3 and image.shape[-1] in (1, 2, 3, 4):
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[0] == 0 or min(image.shape[1:3]) == 0:
        raise ValueError(f"image: expected an IMAGE tensor [batch, height, width, channels], got shape "
                         f"{tuple(image.shape)}")
    if not image.dtype.is_floating_point:  # bool, integers, complex
        raise ValueError(f"image: a {str(image.dtype).replace('torch.', '')} tensor; IMAGE tensors are float RGB in "
                         f"0..1 (divide a 0..255 image by 255 in the node that made it)")
    channels = image.shape[-1]
    if channels in (1, 2):  # gray, gray + alpha
        image = image[..., :1].expand(*image.shape[:-1], 3)
    elif channels == 4:
        image = image[..., :3]
    elif channels != 3:
        raise ValueError(f"image: {channels} colour channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")
    return list(image.float().unbind(0))


def check_pixels(images: Sequence[torch.Tensor]) -> None:
    """Refuse NaN/inf and values beyond 0..1 by more than ``PIXEL_TOLERANCE`` (see the module note)."""
    for i, img in enumerate(images):
        if not torch.isfinite(img).all():
            raise ValueError(f"image: image {i} contains NaN or infinite values; the node that produced it failed")
        low, high = float(img.min()), float(img.max())
        if low < -PIXEL_TOLERANCE or high > 1.0 + PIXEL_TOLERANCE:
            hint = " (it looks like 0..255: divide by 255)" if high > 2.0 else \
                " (it looks like -1..1: map it with (x + 1) / 2)" if low < -0.5 else ""
            raise ValueError(f"image: image {i} has values from {low:.3g} to {high:.3g}; IMAGE values must lie in "
                             f"0..1{hint}")


check_finite = check_pixels  # the earlier name


def to_bgr_uint8(img: torch.Tensor) -> np.ndarray:
    """insightface reads OpenCV's BGR order; ComfyUI's IMAGE is RGB in 0..1."""
    rgb = (img.detach().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1])
