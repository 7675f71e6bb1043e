"""The training photo folder: one subfolder per person, two or more photos in each.

Why the checks live here and are strict: a training run costs hours, so everything that
can be known from the folder alone (no identities, people with a single photo, files
that are not images) is reported before any model is loaded, in words that say what to
change.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MIN_PHOTOS = 2  # the reference and a *different* target photo of the same person


class TrainingDataError(ValueError):
    """The data folder cannot be trained on; the message says what to change."""


@dataclass
class Person:
    name: str
    photos: list[Path]


@dataclass
class PhotoFolder:
    root: Path
    people: list[Person]
    ignored: list[str] = field(default_factory=list)  # why some people were left out

    @property
    def photo_count(self) -> int:
        return sum(len(p.photos) for p in self.people)


def _photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def scan_photo_folder(root: str | os.PathLike) -> PhotoFolder:
    """People and their photos under ``root`` (``root/<person>/<photo>``), checked.

    People with fewer than two photos are left out with a warning; if nobody is left the
    run stops, naming what the folder holds.
    """
    root = Path(root)
    if not root.is_dir():
        raise TrainingDataError(f"data: '{root}' is not a folder. Give a folder with one subfolder per person, "
                                "each holding two or more photos of that person.")
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subfolders:
        loose = len(_photos(root))
        hint = (f" It holds {loose} photo(s) directly: move each person's photos into a subfolder named after "
                "that person." if loose else "")
        raise TrainingDataError(f"data: '{root}' has no person subfolders (it is empty or holds only files).{hint} "
                                "Expected layout: DATA/<person>/<photo>.jpg, two or more photos per person.")
    people, ignored = [], []
    for folder in subfolders:
        photos = _photos(folder)
        if len(photos) < MIN_PHOTOS:
            ignored.append(f"'{folder.name}' has {len(photos)} photo(s)")
            continue
        people.append(Person(folder.name, photos))
    for reason in ignored:
        log.warning("data: leaving out %s; training needs at least %d photos of each person (the reference and a "
                    "different target photo)", reason, MIN_PHOTOS)
    if not people:
        raise TrainingDataError(
            f"data: no person in '{root}' has {MIN_PHOTOS} or more photos ({'; '.join(ignored)}). Identity-enhanced "
            "training denoises a *different* photo of the reference person, so each person needs at least two "
            f"photos ({', '.join(IMAGE_EXTENSIONS)}).")
    return PhotoFolder(root, people, ignored)
