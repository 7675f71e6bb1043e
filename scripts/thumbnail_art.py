"""Labelled schematic thumbnails for the template browser: what each shipped workflow does.

Why drawings: no Infinite-ID weights exist yet, and a run on the tiny demo models gives
coloured noise, which says nothing about the workflow and looks like a broken pack. Until
real outputs exist, each card shows the workflow's idea in a picture: a reference photo
becoming the person in a scene, two people mixed, the sweep from A to B, the ablations
side by side, two people placed left and right. Drawn with Pillow only (its built-in
scalable font), so the files are the same on every machine.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SIZE = 384
BACKGROUND = (30, 32, 38)
INK = (235, 235, 235)
MUTED = (150, 155, 165)
IDENTITY = (232, 163, 61)  # the pack's identity link colour (web/infinite_id.js)
PEOPLE = {  # hair and skin of the drawn people
    "A": ((70, 45, 30), (236, 196, 160)),
    "B": ((210, 170, 80), (205, 150, 115)),
}


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _face(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], person: str | tuple, body: bool = False,
          style: str = "photo") -> None:
    """A simple portrait in ``box``: hair, face, eyes, smile; ``person`` names a look or gives (hair, skin)."""
    hair, skin = PEOPLE[person] if isinstance(person, str) else person
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) // 2
    if body:
        draw.pieslice((x0 + w * 0.1, y0 + h * 0.62, x1 - w * 0.1, y1 + h * 0.5), 180, 360, fill=(70, 110, 170))
    head = (cx - w * 0.27, y0 + h * 0.12, cx + w * 0.27, y0 + h * 0.68)
    draw.ellipse((head[0] - w * 0.04, head[1] - h * 0.05, head[2] + w * 0.04, head[3] - h * 0.12), fill=hair)
    draw.ellipse(head, fill=skin)
    draw.chord((head[0] - w * 0.02, head[1] - h * 0.06, head[2] + w * 0.02, head[1] + h * 0.22), 180, 360, fill=hair)
    eye_y = head[1] + (head[3] - head[1]) * 0.48
    for ex in (cx - w * 0.1, cx + w * 0.1):
        draw.ellipse((ex - w * 0.025, eye_y - h * 0.02, ex + w * 0.025, eye_y + h * 0.02), fill=(40, 40, 50))
    mouth_y = head[1] + (head[3] - head[1]) * 0.72
    draw.arc((cx - w * 0.09, mouth_y - h * 0.04, cx + w * 0.09, mouth_y + h * 0.04), 20, 160, fill=(150, 60, 60),
             width=max(2, w // 60))
    if style == "painted":
        for i in range(6):
            y = y0 + h * (0.1 + 0.14 * i)
            draw.arc((x0 - w * 0.3, y, x1 + w * 0.3, y + h * 0.3), 200, 340, fill=(255, 255, 255, 60), width=2)


def _frame(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], fill: tuple, outline: tuple = MUTED) -> None:
    draw.rounded_rectangle(box, radius=8, fill=fill, outline=outline, width=2)


def _arrow(draw: ImageDraw.ImageDraw, start: tuple[int, int], end: tuple[int, int], colour: tuple = IDENTITY) -> None:
    draw.line((start, end), fill=colour, width=5)
    x, y = end
    dx = 1 if end[0] >= start[0] else -1
    draw.polygon([(x + 6 * dx, y), (x - 10 * dx, y - 10), (x - 10 * dx, y + 10)], fill=colour)


def _text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, size: int = 22, fill: tuple = INK,
          anchor: str = "mm") -> None:
    draw.text(xy, text, font=_font(size), fill=fill, anchor=anchor)


def _title(draw: ImageDraw.ImageDraw, title: str, subtitle: str) -> None:
    _text(draw, (SIZE // 2, 30), title, 28)
    _text(draw, (SIZE // 2, SIZE - 26), subtitle, 18, MUTED)


def _scene(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], sky: tuple, ground: tuple) -> None:
    x0, y0, x1, y1 = box
    _frame(draw, box, sky)
    draw.rectangle((x0 + 2, y0 + (y1 - y0) * 0.68, x1 - 2, y1 - 2), fill=ground)


def _photo_to_person(draw: ImageDraw.ImageDraw, sky: tuple, ground: tuple, style: str = "photo") -> None:
    _frame(draw, (24, 120, 134, 250), (120, 125, 135))
    _face(draw, (29, 125, 129, 245), "A")
    _text(draw, (79, 270), "reference", 18, MUTED)
    _arrow(draw, (146, 185), (196, 185))
    _scene(draw, (208, 80, 360, 300), sky, ground)
    _face(draw, (224, 100, 344, 300), "A", body=True, style=style)


def raw_photo(draw: ImageDraw.ImageDraw) -> None:
    _title(draw, "One photo: the person", "any prompt · identity and text streams")
    _photo_to_person(draw, (120, 170, 220), (90, 120, 80))


def stylised_photo(draw: ImageDraw.ImageDraw) -> None:
    _title(draw, "One photo: a painting", "style prompt · AdaIN-mean")
    _photo_to_person(draw, (200, 120, 170), (120, 80, 150), style="painted")
    for i, colour in enumerate(((240, 200, 60), (80, 200, 220), (240, 110, 90))):
        draw.ellipse((222 + 22 * i, 88, 238 + 22 * i, 104), fill=colour)


def identity_mixing(draw: ImageDraw.ImageDraw) -> None:
    _title(draw, "Two people, one face", "InfiniteID Mix")
    for person, y in (("A", 70), ("B", 200)):
        _frame(draw, (24, y, 124, y + 110), (120, 125, 135))
        _face(draw, (29, y + 4, 119, y + 106), person)
        _text(draw, (140, y + 55), person, 26, IDENTITY)
    _arrow(draw, (156, 125), (206, 175))
    _arrow(draw, (156, 255), (206, 205))
    mixed = tuple((a + b) // 2 for a, b in zip(PEOPLE["A"][0], PEOPLE["B"][0])), \
        tuple((a + b) // 2 for a, b in zip(PEOPLE["A"][1], PEOPLE["B"][1]))
    _scene(draw, (218, 100, 360, 290), (120, 170, 220), (90, 120, 80))
    _face(draw, (229, 115, 349, 290), mixed, body=True)
    _text(draw, (289, 312), "A + B", 20, IDENTITY)


def interpolation_sweep(draw: ImageDraw.ImageDraw) -> None:
    _title(draw, "From A to B in one scene", "Interpolate steps 11 · one noise")
    steps = 5
    for i in range(steps):
        t = i / (steps - 1)
        look = tuple(round(a + (b - a) * t) for a, b in zip(PEOPLE["A"][0], PEOPLE["B"][0])), \
            tuple(round(a + (b - a) * t) for a, b in zip(PEOPLE["A"][1], PEOPLE["B"][1]))
        x = 16 + i * 71
        _scene(draw, (x, 120, x + 66, 236), (120, 170, 220), (90, 120, 80))
        _face(draw, (x + 3, 128, x + 63, 236), look, body=True)
        _text(draw, (x + 33, 254), f"{t:.2g}", 16, MUTED)
    _arrow(draw, (40, 300), (344, 300))
    _text(draw, (24, 300), "A", 24, IDENTITY)
    _text(draw, (362, 300), "B", 24, IDENTITY)


def ablation_grid(draw: ImageDraw.ImageDraw) -> None:
    _title(draw, "The paper's ablations", "one seed · Table 1")
    # mutual attention loses the face (M_FaceNet 0.398): drawn as a washed-out look
    labels = (("mixed", IDENTITY, "A"), ("mutual", MUTED, ((120, 110, 100), (200, 190, 180))),
              ("off", MUTED, "A"), ("text only", MUTED, None))
    for i, (label, colour, person) in enumerate(labels):
        x, y = 40 + (i % 2) * 160, 58 + (i // 2) * 138
        _scene(draw, (x, y, x + 144, y + 100), (120, 170, 220), (90, 120, 80))
        look = ((40, 40, 40), (180, 160, 150)) if person is None else person
        _face(draw, (x + 37, y + 6, x + 107, y + 100), look, body=True)
        _text(draw, (x + 72, y + 116), label, 19, colour)


def two_people(draw: ImageDraw.ImageDraw) -> None:
    _title(draw, "Two people, each in a region", "InfiniteID Regions · masks left and right")
    _scene(draw, (24, 70, 360, 300), (250, 170, 110), (220, 200, 150))
    draw.line((192, 74, 192, 296), fill=(255, 255, 255), width=2)
    for person, x in (("A", 40), ("B", 208)):
        draw.rounded_rectangle((x - 8, 78, x + 144, 292), radius=6, outline=IDENTITY, width=3)
        _face(draw, (x + 6, 96, x + 130, 296), person, body=True)
        _text(draw, (x + 68, 90), f"mask {person}", 16, (40, 40, 40))


def second_pass(draw: ImageDraw.ImageDraw) -> None:
    _title(draw, "Second pass, same person", "core KSampler · upscale · denoise 0.5")
    _scene(draw, (20, 130, 130, 250), (120, 170, 220), (90, 120, 80))
    _face(draw, (32, 140, 118, 250), "A", body=True)
    _text(draw, (75, 270), "pass 1", 18, MUTED)
    _arrow(draw, (142, 190), (192, 190))
    _text(draw, (167, 160), "x1.5", 18, IDENTITY)
    _scene(draw, (204, 70, 364, 300), (120, 170, 220), (90, 120, 80))
    _face(draw, (220, 90, 348, 300), "A", body=True)
    _text(draw, (284, 318), "hires pass", 18, MUTED)


DRAWINGS: dict[str, Callable[[ImageDraw.ImageDraw], None]] = {
    "raw_photo": raw_photo, "stylised_photo": stylised_photo, "identity_mixing": identity_mixing,
    "interpolation_sweep": interpolation_sweep, "ablation_grid": ablation_grid, "two_people": two_people,
    "second_pass": second_pass,
}


def drawing_digest() -> str:
    """A hash of this file: a thumbnail drawn by an older version of it is stale."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def draw_thumbnail(name: str) -> Image.Image:
    """The card for shipped workflow ``name`` (KeyError: a workflow without a drawing)."""
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    DRAWINGS[name](ImageDraw.Draw(image, "RGBA"))
    return image
