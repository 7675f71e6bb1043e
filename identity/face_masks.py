"""Face boxes on a layout image -> one mask per person, for InfiniteID Regions.

Why boxes grown around the face: the region should hold the person's head and hair, not
just the detector's tight face box, and a layout photo (a group shot, a sketch with
faces, a previous render) is the easiest way for users to say "she stands here, he
there". Faces are ordered from the left, as ``face_index`` counts them in Encode.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from .faces import check_face_analysis, detect, detection_sizes
from .images import check_pixels, split_images, to_bgr_uint8

log = logging.getLogger(__name__)


def box_mask(height: int, width: int, box: tuple[float, float, float, float], grow: float) -> torch.Tensor:
    """A ``[height, width]`` mask of ones inside ``box`` scaled by ``grow`` about its centre."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half_w, half_h = (x1 - x0) * grow / 2, (y1 - y0) * grow / 2
    mask = torch.zeros(height, width)
    left, right = max(0, round(cx - half_w)), min(width, round(cx + half_w))
    top, bottom = max(0, round(cy - half_h)), min(height, round(cy + half_h))
    if right > left and bottom > top:
        mask[top:bottom, left:right] = 1.0
    return mask


def face_masks(analysis: Any, image: Any, count: int, grow: float) -> tuple[list[torch.Tensor], list[int]]:
    """``count`` masks ``[batch, H, W]``: mask k covers the k-th face from the left of each
    image (zeros in images with fewer faces); also the number of faces per image."""
    check_face_analysis(analysis)
    images = split_images(image)
    check_pixels(images)
    sizes = detection_sizes(analysis)
    masks = [[] for _ in range(count)]
    found = []
    for index, img in enumerate(images):
        height, width = int(img.shape[0]), int(img.shape[1])
        faces, _ = detect(analysis, to_bgr_uint8(img), sizes)
        ordered = sorted(faces, key=lambda f: float(f.bbox[0] + f.bbox[2]))
        found.append(len(ordered))
        if len(ordered) > count:
            log.info("InfiniteIDFaceMasks: image %d has %d faces; masks for the %d leftmost", index, len(ordered),
                     count)
        for k in range(count):
            box = tuple(float(v) for v in ordered[k].bbox[:4]) if k < len(ordered) else None
            masks[k].append(box_mask(height, width, box, grow) if box else torch.zeros(height, width))
    if not any(found):
        raise ValueError(f"image: no face found in the layout image(s); detection sizes tried: "
                         f"{', '.join(str(s[0]) for s in sizes)}. Use a layout with visible faces, or draw the "
                         "regions with core mask nodes (SolidMask + MaskComposite)")
    shapes = {tuple(m.shape) for m in masks[0]}
    if len(shapes) > 1:
        raise ValueError("image: the layout images differ in size; give one size (masks form one batch)")
    return [torch.stack(rows) for rows in masks], found
