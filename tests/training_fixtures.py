"""Synthetic training data for the training tests: people drawn for the tiny insightface pack.

Each person is a seeded face pattern (``draw_face(identity=...)``); each photo of that
person puts the face at another place on another background, so reference and target
photos of one person really differ, as in the paper's pairs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from infinite_id.demo import tiny_insightface as tiny

PHOTO_SIZE = 256
RESOLUTION = 64  # training resolution for the tiny models (latent 8x8)
SMALL_MAPPER = {"face_hidden": 64, "mapper_dim": 64, "mapper_depth": 1, "mapper_heads": 2, "mapper_dim_head": 32}


def person_photo(person: int, photo: int, size: int = PHOTO_SIZE) -> np.ndarray:
    rng = np.random.default_rng(1000 * person + photo)
    rgb = np.empty((size, size, 3), np.uint8)
    rgb[...] = rng.integers(40, 220, 3)
    scale = tiny.detection_scale(size, size)
    tiny.draw_face(rgb, 4 + (3 * photo) % 9, 5 + photo % 6, scale=scale, identity=100 + person)
    return rgb


def write_people(root: Path, people: int = 4, photos: int = 3) -> Path:
    for person in range(people):
        folder = root / f"person{person}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(photos):
            Image.fromarray(person_photo(person, k)).save(folder / f"photo{k}.png")
    return root
