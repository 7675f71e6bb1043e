"""Identities saved to and loaded from ``models/infiniteid/identities/*.safetensors``.

Why safetensors only: an identity file is something people share, and a pickle can run
code when loaded; safetensors holds tensors and string metadata, nothing else. The file
holds ``cond``, ``uncond`` and ``features.<name>`` tensors, and metadata naming the
format, the adapter the tokens were made with and the token shapes, so a loader can
refuse a damaged or foreign file with a reason instead of failing deep inside sampling.
A regional identity (InfiniteID Regions) also holds ``region.<i>.mask`` tensors and a
``regions`` metadata entry (each person's token span, weight and input name); such files
are version 2, plain identities stay version 1.
"""
from __future__ import annotations

import json
import logging
import os
import re

import torch

from ..host.folders import IDENTITY_FILE_FORMAT, identities_folder
from .types import Identity, check_identity, token_problem

log = logging.getLogger(__name__)

FORMAT = IDENTITY_FILE_FORMAT
VERSION = "1"
REGIONAL_VERSION = "2"
EXTENSION = ".safetensors"
_NAME = re.compile(r"^[\w\-. ]+$")
# File systems allow 255 bytes per name; the stem leaves room for "_00001", the extension
# and the ".tmp" of the atomic write, so a long name is refused here, not by the OS.
MAX_STEM_BYTES = 200


def _shape_text(tensor: torch.Tensor) -> str:
    return ",".join(str(d) for d in tensor.shape)


def _safe_name(name: str) -> str:
    name = (name or "").strip()
    if name.lower().endswith(EXTENSION):
        name = name[: -len(EXTENSION)]
    if not name or not _NAME.match(name) or name.strip(".") == "":
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise ValueError(f"name: {shown!r} is not a usable file name (letters, digits, spaces, '-', '_', '.')")
    if len(name.encode("utf-8")) > MAX_STEM_BYTES:
        raise ValueError(f"name: '{name[:40]}...' is {len(name.encode('utf-8'))} bytes long; file names may have "
                         f"at most {MAX_STEM_BYTES} (the file system's limit is 255 per name). Use a shorter name")
    return name


def save_identity(identity: Identity, name: str, folder: str | None = None, overwrite: bool = False) -> str:
    """Write ``identity`` as ``<folder>/<name>.safetensors``; returns the path written.

    Without ``overwrite`` an existing file is kept and a numbered name is used instead.
    """
    from safetensors.torch import save_file

    check_identity(identity, "identity")  # a file must never hold tokens that a load would refuse
    folder = folder or identities_folder()
    os.makedirs(folder, exist_ok=True)
    stem = _safe_name(name)
    path = os.path.join(folder, stem + EXTENSION)
    counter = 1
    while not overwrite and os.path.exists(path):
        path = os.path.join(folder, f"{stem}_{counter:05d}{EXTENSION}")
        counter += 1
    tensors = {"cond": identity.cond, "uncond": identity.uncond}
    tensors.update({f"features.{key}": value for key, value in identity.features.items()
                    if isinstance(value, torch.Tensor)})
    tensors.update({f"region.{i}.mask": region.mask for i, region in enumerate(identity.regions)})
    tensors = {key: value.detach().float().cpu().contiguous().clone() for key, value in tensors.items()}
    info = identity.info
    metadata = {
        "format": FORMAT, "version": REGIONAL_VERSION if identity.regions else VERSION,
        "adapter": str(info.get("adapter", "")), "adapter_format": str(info.get("adapter_format", "")),
        "cond_shape": _shape_text(identity.cond), "uncond_shape": _shape_text(identity.uncond),
        "info": json.dumps(info, default=str),
    }
    if identity.regions:
        metadata["regions"] = json.dumps([{"start": r.tokens.start, "stop": r.tokens.stop, "weight": r.weight,
                                           "name": r.name} for r in identity.regions])
    tmp = path + ".tmp"
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except OSError as exc:  # disk full, read-only folder, permissions: say where, keep no half file
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise ValueError(f"name: could not write {path} ({exc.strerror or exc}); check the folder and free "
                         f"space") from exc
    log.info("InfiniteIDSaveIdentity: saved %s (%s tokens)", path, metadata["cond_shape"])
    return path


def list_identities(folder: str | None = None) -> list[str]:
    """Identity files under ``folder`` (subfolders included), as paths relative to it."""
    folder = folder or identities_folder()
    found = []
    if os.path.isdir(folder):
        for root, _, files in os.walk(folder, followlinks=True):
            for file in files:
                if file.lower().endswith(EXTENSION):
                    found.append(os.path.relpath(os.path.join(root, file), folder).replace(os.sep, "/"))
    return sorted(found)


def identity_path(name: str, folder: str | None = None) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"identity_name: no identity file chosen; save one with 'InfiniteID Save Identity' into "
                         f"{folder or identities_folder()}")
    if "\0" in name:
        raise ValueError(f"identity_name: {name!r} contains a NUL character; choose a file from the list")
    folder = os.path.realpath(folder or identities_folder())
    path = os.path.realpath(os.path.join(folder, name))
    if os.path.commonpath([folder, path]) != folder:
        raise ValueError(f"identity_name: '{name}' points outside {folder}")
    if not os.path.isfile(path):
        raise ValueError(f"identity_name: '{name}' was not found in {folder}")
    return path


def load_identity(name: str, folder: str | None = None) -> Identity:
    """Read and validate an identity file (format, token shapes, finite values)."""
    from safetensors import safe_open

    path = identity_path(name, folder)
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:
        raise ValueError(f"identity_name: '{name}' is not a readable safetensors file ({exc})") from exc
    if metadata.get("format") != FORMAT:
        raise ValueError(f"identity_name: '{name}' is not an Infinite-ID identity file (format "
                         f"'{metadata.get('format', 'none')}'); save identities with 'InfiniteID Save Identity'")
    cond, uncond = tensors.get("cond"), tensors.get("uncond")
    if cond is None or uncond is None:
        raise ValueError(f"identity_name: '{name}' lacks its 'cond' or 'uncond' tokens")
    for key, tensor in (("cond", cond), ("uncond", uncond)):
        if tensor.dim() != 3 or _shape_text(tensor) != metadata.get(f"{key}_shape"):
            raise ValueError(f"identity_name: '{name}' has {key} tokens of shape {tuple(tensor.shape)} but its "
                             f"metadata says {metadata.get(f'{key}_shape')}; the file is damaged")
        problem = token_problem(tensor)
        if problem:
            raise ValueError(f"identity_name: '{name}' has {problem} in its {key} tokens; the file is damaged")
    if cond.shape != uncond.shape:
        raise ValueError(f"identity_name: '{name}' has cond tokens {tuple(cond.shape)} but uncond tokens "
                         f"{tuple(uncond.shape)}; the file is damaged")
    try:
        info = json.loads(metadata.get("info", "{}"))
    except json.JSONDecodeError:
        info = {}
    info["file"] = name
    features = {key[len("features."):]: value for key, value in tensors.items() if key.startswith("features.")}
    regions = _load_regions(name, metadata, tensors) if "regions" in metadata else ()
    try:
        return Identity(cond=cond, uncond=uncond, features=features, info=info, regions=regions)
    except ValueError as exc:
        raise ValueError(f"identity_name: '{name}': {exc}; the file is damaged") from exc


def _load_regions(name: str, metadata: dict, tensors: dict) -> tuple:
    from .regional import Region, check_mask

    try:
        entries = json.loads(metadata["regions"])
        regions = tuple(Region(tokens=slice(int(e["start"]), int(e["stop"])), weight=float(e["weight"]),
                               mask=check_mask(tensors[f"region.{i}.mask"], f"identity_name: '{name}' region {i + 1}"),
                               name=str(e.get("name", ""))) for i, e in enumerate(entries))
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"identity_name: '{name}' has damaged regions ({exc}); save the regional identity "
                         "again") from exc
    return regions
