"""Draw the face box and the scores onto each image (the nodes' preview output).

Why: a number alone hides the usual failure -- the detector picked the wrong face, or
none. The box shows which face was scored; an image without a face gets a red frame and
"NO FACE" so it stands out in a batch preview.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .scoring import FaceResult

OK_COLOUR = (40, 220, 40)
NO_FACE_COLOUR = (230, 30, 30)


def _font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` (Pillow >= 10.1), else its small bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def annotate(images_rgb: Sequence[np.ndarray], faces: Sequence[FaceResult], lines: Sequence[str]) -> torch.Tensor:
    """``[B, H, W, 3]`` float IMAGE: each input with its face box and its text line."""
    out = []
    for rgb, face, text in zip(images_rgb, faces, lines):
        canvas = Image.fromarray(np.ascontiguousarray(rgb))
        draw = ImageDraw.Draw(canvas)
        width, height = canvas.size
        thick = max(2, min(width, height) // 128)
        if face.found:
            x1, y1, x2, y2 = (float(v) for v in face.bbox)
            draw.rectangle([max(0.0, x1), max(0.0, y1), min(width - 1.0, x2), min(height - 1.0, y2)],
                           outline=OK_COLOUR, width=thick)
        else:
            draw.rectangle([0, 0, width - 1, height - 1], outline=NO_FACE_COLOUR, width=thick * 2)
            text = "NO FACE  " + text
        font = _font(max(10, min(width, height) // 24))
        box = draw.textbbox((3, 3), text, font=font)
        draw.rectangle([0, 0, box[2] + 3, box[3] + 3], fill=(0, 0, 0))
        draw.text((3, 3), text, fill=OK_COLOUR if face.found else NO_FACE_COLOUR, font=font)
        out.append(torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0))
    if len({t.shape for t in out}) > 1:  # a list input of mixed sizes: pad to one batch
        h, w = max(t.shape[0] for t in out), max(t.shape[1] for t in out)
        out = [torch.nn.functional.pad(t, (0, 0, 0, w - t.shape[1], 0, h - t.shape[0])) for t in out]
    return torch.stack(out)
