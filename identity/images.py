"""ComfyUI IMAGE input -> one BGR uint8 array per photo, with the input checks.

Why: the IMAGE socket carries whatever the upstream node made. Shapes, channel counts
and NaN are checked here, before insightface sees anything, so a bad image gives a
message naming the ``image`` input and the image's index instead of an OpenCV error.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch


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
    channels = image.shape[-1]
    if channels in (1, 2):  # gray, gray + alpha
        image = image[..., :1].expand(*image.shape[:-1], 3)
    elif channels == 4:
        image = image[..., :3]
    elif channels != 3:
        raise ValueError(f"image: {channels} colour channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")
    return list(image.float().unbind(0))


def check_finite(images: Sequence[torch.Tensor]) -> None:
    for i, img in enumerate(images):
        if not torch.isfinite(img).all():
            raise ValueError(f"image: image {i} contains NaN or infinite values; the node that produced it failed")


def to_bgr_uint8(img: torch.Tensor) -> np.ndarray:
    """insightface reads OpenCV's BGR order; ComfyUI's IMAGE is RGB in 0..1."""
    rgb = (img.detach().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1])
