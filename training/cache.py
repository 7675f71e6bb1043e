"""Preprocessing, done once: faces, ArcFace embeddings, CLIP hidden states, VAE latents.

Why a disk cache: insightface, CLIP vision and the VAE would otherwise run on every
photo in every epoch, and together they cost more than the adapter's own step. Each
photo becomes one small safetensors file named by a hash of its bytes and of the
settings that shape its tensors (resolution, CLIP layer, the models used), so a second
run, or a run after adding photos, only processes what is new. A photo without a usable
face or that cannot be read is recorded as skipped (a ``.skip`` note), counted and
logged, and never retried for the same settings.

Several processes may fill one cache at once (the ranks of a ``torchrun`` job, which
split the photos between them, or two runs sharing ``--cache``): every file is written
under a name no other process uses (``<name>.<pid>-<random>.tmp``) and renamed into
place, an atomic step on one file system, so a reader sees a complete file or none,
and a killed process leaves at most a ``.tmp`` file that nothing reads.

What is stored per photo (the paper's pair: reference features from one photo, the
denoising target from another photo of the same person):

- ``face_embedding`` [512]: raw ArcFace output of the aligned face (the adapter's
  ``face_embedding`` mode is applied at training time, as at inference);
- ``clip_hidden`` [tokens, width]: CLIP vision hidden states of the 224 px aligned face
  crop, float16;
- ``latent`` [4, R/8, R/8]: the VAE latent of the whole photo, resized so its short side
  is ``R`` and centre-cropped to ``R x R``; plus SDXL's size conditioning (original size
  and crop offset) as metadata.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..identity.encode import clip_hidden_states
from ..identity.faces import detection_sizes, find_face
from .dataset import PhotoFolder, TrainingDataError
from .distributed import DistContext

log = logging.getLogger(__name__)

CACHE_VERSION = "1"


@dataclass(frozen=True)
class CacheSettings:
    resolution: int
    clip_layer: str = "penultimate"
    models: str = ""  # names of the checkpoint / CLIP vision / face pack: a new model means a new cache


@dataclass
class CachedPhoto:
    person: int
    path: Path  # the cache file
    source: Path


@dataclass
class CachedData:
    people: list[str]
    photos: list[CachedPhoto]
    skipped: dict[str, str]  # source path -> why

    def by_person(self) -> dict[int, list[CachedPhoto]]:
        groups: dict[int, list[CachedPhoto]] = {}
        for photo in self.photos:
            groups.setdefault(photo.person, []).append(photo)
        return groups


def read_photo(path: Path) -> np.ndarray:
    """An ``H x W x 3`` RGB uint8 array; EXIF rotation applied, alpha and gray handled.

    Raises ``ValueError`` with PIL's reason for files that are not readable images.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except Exception as exc:
        raise ValueError(f"not a readable image ({type(exc).__name__}: {exc})") from exc


def square_crop(rgb: np.ndarray, resolution: int) -> tuple[torch.Tensor, dict[str, int]]:
    """Resize so the short side is ``resolution``, centre-crop to a square; SDXL size conditioning.

    Returns a ``[1, R, R, 3]`` float image in 0..1 and ``height``/``width`` (original
    size), ``crop_h``/``crop_w`` (crop offset in the resized image), the values SDXL's
    micro-conditioning was trained with.
    """
    from PIL import Image

    height, width = rgb.shape[:2]
    scale = resolution / min(height, width)
    new_w, new_h = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    resized = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.LANCZOS))
    top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
    crop = resized[top:top + resolution, left:left + resolution]
    image = torch.from_numpy(np.ascontiguousarray(crop)).float().div(255.0).unsqueeze(0)
    return image, {"height": height, "width": width, "crop_h": top, "crop_w": left}


def write_atomic(target: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a temporary name of this process's own, then rename it to ``target``."""
    tmp = target.with_name(f"{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def cache_key(data: bytes, settings: CacheSettings) -> str:
    digest = hashlib.sha256(data)
    digest.update(json.dumps([CACHE_VERSION, settings.resolution, settings.clip_layer, settings.models]).encode())
    return digest.hexdigest()[:32]


class Preprocessor:
    """Turns photos into cache files with the pack's own face pipeline (``identity/faces.py``)."""

    def __init__(self, face_analysis: Any, clip_vision: Any, vae: Any, settings: CacheSettings) -> None:
        self.face_analysis, self.clip_vision, self.vae, self.settings = face_analysis, clip_vision, vae, settings
        self.sizes = detection_sizes(face_analysis)

    def process(self, source: Path, target: Path) -> str | None:
        """Write ``target`` for ``source``; return why the photo is unusable instead, if it is."""
        import safetensors.torch

        try:
            rgb = read_photo(source)
        except ValueError as exc:
            return str(exc)
        found = find_face(self.face_analysis, np.ascontiguousarray(rgb[:, :, ::-1]), 0, -1, self.sizes)
        if isinstance(found, str):
            return found.replace("image 0", "the photo")
        crop = torch.from_numpy(found.crop_rgb).float().div(255.0).unsqueeze(0)
        hidden = clip_hidden_states(self.clip_vision, crop, self.settings.clip_layer)[0]
        image, size = square_crop(rgb, self.settings.resolution)
        with torch.no_grad():
            latent = self.vae.encode(image).float().cpu()[0]
        tensors = {"face_embedding": torch.from_numpy(found.embedding).float(),
                   "clip_hidden": hidden.to(torch.float16).contiguous(), "latent": latent.contiguous()}
        meta = {k: str(v) for k, v in size.items()}
        meta.update({"source": str(source), "faces_found": str(found.faces_found)})
        write_atomic(target, lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata=meta))
        return None


def source_keys(sources: Sequence[Path], settings: CacheSettings, dist: DistContext | None = None
                ) -> dict[Path, str]:
    """Each photo's cache key (unreadable files map to ``"!why"``); each rank hashes its share."""
    dist = dist or DistContext()
    keys: dict[Path, str] = {}
    for source in dist.share(list(sources)):
        try:
            keys[source] = cache_key(source.read_bytes(), settings)
        except OSError as exc:
            keys[source] = f"!cannot be read ({exc})"
    merged: dict[Path, str] = {}
    for part in dist.gather(keys):
        merged.update(part)
    return {source: merged[source] for source in sources}


def photo_keys(folder: PhotoFolder, settings: CacheSettings, dist: DistContext | None = None) -> dict[Path, str]:
    """Each photo's cache key (unreadable files map to why), read once per run."""
    return source_keys([p for person in folder.people for p in person.photos], settings, dist)


def cache_sources(sources: Sequence[Path], cache_dir: Path, preprocessor: Preprocessor | None,
                  keys: dict[Path, str], dist: DistContext | None = None, desc: str = "preprocessing photos"
                  ) -> tuple[dict[Path, Path | str], int]:
    """Cache every photo not cached yet; ``({source: cache file or why it is skipped}, newly processed)``.

    With several ranks each processes every ``world``-th photo (the split is fixed by the
    list, not by what is on disk, so no photo falls between two ranks), then all wait for
    each other and index the whole cache.
    """
    from tqdm import tqdm

    dist = dist or DistContext()
    if dist.is_main:
        cache_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    new = 0
    mine = dist.share(list(sources))
    for source in tqdm(mine, desc=desc, unit="photo", leave=False, disable=not dist.is_main):
        key = keys[source]
        if key.startswith("!"):
            continue
        target, note = cache_dir / f"{key}.safetensors", cache_dir / f"{key}.skip"
        if note.is_file() or target.is_file():
            continue
        if preprocessor is None:
            raise RuntimeError("internal: a photo is not cached and no preprocessor was given")
        reason = preprocessor.process(source, target)
        new += 1
        if reason is not None:
            write_atomic(note, lambda tmp, reason=reason: tmp.write_text(reason))
    dist.barrier()
    new = sum(dist.gather(new))
    results: dict[Path, Path | str] = {}
    missing: list[Path] = []
    for source in sources:
        key = keys[source]
        if key.startswith("!"):
            results[source] = key[1:]
            continue
        target, note = cache_dir / f"{key}.safetensors", cache_dir / f"{key}.skip"
        if note.is_file():
            results[source] = note.read_text()
        elif target.is_file():
            results[source] = target
        else:
            missing.append(source)
    if missing:
        raise TrainingDataError(
            f"cache: {len(missing)} photo(s) processed by other processes are not in '{cache_dir}' (first: "
            f"{missing[0]}). With several machines, --cache (and --output) must be on storage every machine sees.")
    return results, new


def build_cache(folder: PhotoFolder, cache_dir: Path, preprocessor: Preprocessor | None,
                settings: CacheSettings, keys: dict[Path, str] | None = None,
                dist: DistContext | None = None) -> CachedData:
    """Cache every photo of ``folder`` (only new ones are processed) and index the usable ones.

    ``preprocessor`` may be ``None`` when every photo is already cached (then no model
    is needed). People left with fewer than two usable photos are dropped with a warning.
    ``keys``: ``photo_keys`` when the caller has them already. ``dist``: the ranks of a
    data-parallel run split the photos; every rank gets the whole index.
    """
    keys = keys if keys is not None else photo_keys(folder, settings, dist)
    todo = [(i, p) for i, person in enumerate(folder.people) for p in person.photos]
    results, new = cache_sources([p for _, p in todo], cache_dir, preprocessor, keys, dist)
    photos: list[CachedPhoto] = []
    skipped: dict[str, str] = {}
    for person_index, source in todo:
        result = results[source]
        if isinstance(result, str):
            skipped[str(source)] = result
        else:
            photos.append(CachedPhoto(person_index, result, source))
    for source, reason in skipped.items():
        log.warning("skipping photo %s: %s", source, reason)
    data = CachedData([p.name for p in folder.people], photos, skipped)
    groups = data.by_person()
    too_few = [folder.people[i].name for i in range(len(folder.people)) if len(groups.get(i, [])) < 2]
    if too_few:
        log.warning("leaving out %d person(s) with fewer than two usable photos: %s", len(too_few),
                    ", ".join(too_few))
        data.photos = [p for p in photos if len(groups[p.person]) >= 2]
    usable_people = len({p.person for p in data.photos})
    log.info("training data: %d usable photos of %d people (%d newly processed, %d skipped: no face or unreadable)",
             len(data.photos), usable_people, new, len(skipped))
    if usable_people == 0:
        raise TrainingDataError(
            f"data: no person in '{folder.root}' has two usable photos after face detection; {len(skipped)} of "
            f"{folder.photo_count} photos were skipped (first: {next(iter(skipped.values()), 'none')}). Use photos "
            "where one face is clearly visible.")
    return data


def needs_models(keys: dict[Path, str], cache_dir: Path, settings: CacheSettings) -> bool:
    """Whether any photo still has to be processed (else insightface, CLIP vision and the VAE need not load)."""
    if not (cache_dir / f"uncond-{cache_key(b'uncond', settings)}.safetensors").is_file():
        return True
    return any(not key.startswith("!") and not ((cache_dir / f"{key}.safetensors").is_file()
                                                or (cache_dir / f"{key}.skip").is_file()) for key in keys.values())


def load_cached(photo: CachedPhoto, names: tuple[str, ...] | None = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Tensors (all, or only ``names``) and SDXL size conditioning of one cached photo."""
    from safetensors import safe_open

    with safe_open(str(photo.path), framework="pt", device="cpu") as f:
        tensors = {k: f.get_tensor(k) for k in (names or f.keys())}
        meta = f.metadata() or {}
    return tensors, {k: int(meta[k]) for k in ("height", "width", "crop_h", "crop_w")}


def cached_uncond_clip(cache_dir: Path, clip_vision: Any, settings: CacheSettings,
                       dist: DistContext | None = None) -> torch.Tensor:
    """The negative side's CLIP hidden states ``[tokens, width]``, computed once per settings (by rank 0)."""
    import safetensors.torch

    from ..identity.encode import uncond_clip_hidden

    dist = dist or DistContext()
    path = cache_dir / f"uncond-{cache_key(b'uncond', settings)}.safetensors"
    if dist.is_main and not path.is_file():
        if clip_vision is None:
            raise RuntimeError("internal: the uncond CLIP states are not cached and no CLIP vision model was given")
        hidden = uncond_clip_hidden(clip_vision, settings.clip_layer)[0].to(torch.float16).contiguous()
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: safetensors.torch.save_file({"clip_hidden": hidden}, str(tmp)))
    dist.barrier()
    return safetensors.torch.load_file(str(path))["clip_hidden"].float()
