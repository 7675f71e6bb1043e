"""Model folders the pack adds to ComfyUI, registered without dropping user paths.

``extra_model_paths.yaml`` is read before custom nodes load, so a folder name may
already exist with the user's paths; the default folder is appended to it, never put in
its place. Nothing here downloads: a missing file gives a message that names the file
and the folder it belongs in.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

ADAPTERS = "infiniteid"
INSIGHTFACE = "insightface"
# Evaluation backbones (evaluation/backbones.py, evaluation/quality.py); CLIP uses the host's "clip" folder.
FACENET = "facenet"
LPIPS = "lpips"
FID = "fid"
IDENTITIES_SUBFOLDER = "identities"
# The ``format`` entry of a saved identity's safetensors metadata (``identity/storage.py``);
# here because the adapter room must recognise such files without importing identities.
IDENTITY_FILE_FORMAT = "infinite-id-identity"

_EXTENSIONS = {
    ADAPTERS: {".safetensors", ".bin"},
    INSIGHTFACE: set(),  # insightface reads its own model folders (models/<name>/*.onnx)
    FACENET: {".pt", ".pth", ".safetensors"},
    LPIPS: {".pth", ".pt", ".safetensors"},
    FID: {".pth", ".pt", ".safetensors"},
}


def register_folders() -> None:
    """Add ``models/infiniteid``, ``models/insightface`` and the evaluation folders to ``folder_paths``."""
    import folder_paths

    for name, extensions in _EXTENSIONS.items():
        default = os.path.join(folder_paths.models_dir, name)
        entry = folder_paths.folder_names_and_paths.get(name)
        if entry is None:
            folder_paths.folder_names_and_paths[name] = ([default], set(extensions))
            continue
        paths, known = entry
        if default not in paths:
            paths.append(default)
        known.update(extensions)


def folder_paths_for(name: str) -> list[str]:
    import folder_paths

    register_folders()
    return folder_paths.get_folder_paths(name)


def identities_folder() -> str:
    """``models/infiniteid/identities`` in the first configured adapter folder."""
    return os.path.join(folder_paths_for(ADAPTERS)[0], IDENTITIES_SUBFOLDER)


def missing_file_message(filename: str, folder: str, where_from: str = "") -> str:
    hint = f" ({where_from})" if where_from else ""
    return f"'{filename}' was not found. Put it in {folder}{hint}; nothing is downloaded automatically."
