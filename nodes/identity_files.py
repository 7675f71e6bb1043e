"""``InfiniteIDSaveIdentity`` / ``InfiniteIDLoadIdentity``: identities as safetensors files.

Files live in ``models/infiniteid/identities/``; ``identity/storage.py`` holds the format.
"""
from __future__ import annotations

import hashlib
import logging

from ..host.errors import node_error
from ..identity.storage import identity_path, list_identities, load_identity, save_identity
from .inputs import checked_inputs

log = logging.getLogger(__name__)

SAVE = "InfiniteIDSaveIdentity"
LOAD = "InfiniteIDLoadIdentity"


class InfiniteIDSaveIdentity:
    DESCRIPTION = ("Save an identity (tokens and the features they came from) to models/infiniteid/identities/ as a "
                   "safetensors file, to reuse it without the reference photos.")
    CATEGORY = "InfiniteID"
    SEARCH_ALIASES = ["save face", "save identity", "export identity", "face id save"]
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "identity": ("INFINITEID_IDENTITY", {"tooltip": "The identity to save (from Encode, Mix or Interpolate)."}),
            "name": ("STRING", {"default": "identity", "tooltip": "File name (without .safetensors)."}),
            "overwrite": ("BOOLEAN", {"default": False,
                                      "tooltip": "Off: an existing file is kept and a numbered name is used."}),
        }}

    @checked_inputs(SAVE)
    def save(self, identity, name, overwrite):
        with node_error(SAVE):
            path = save_identity(identity, name, overwrite=overwrite)
        return {"ui": {"text": [path]}}


class InfiniteIDLoadIdentity:
    DESCRIPTION = "Load an identity saved by 'InfiniteID Save Identity' (shapes and values are checked)."
    CATEGORY = "InfiniteID"
    SEARCH_ALIASES = ["load face", "load identity", "saved identity", "face id load"]
    RETURN_TYPES = ("INFINITEID_IDENTITY",)
    RETURN_NAMES = ("identity",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"identity_name": (list_identities(),
                                               {"tooltip": "Files in models/infiniteid/identities/."})}}

    @classmethod
    def IS_CHANGED(cls, identity_name):
        """Reload when the file's bytes change, not only when the name does."""
        try:
            with open(identity_path(identity_name), "rb") as handle:
                return hashlib.sha256(handle.read()).hexdigest()
        except (OSError, ValueError):
            return ""

    @checked_inputs(LOAD)
    def load(self, identity_name):
        with node_error(LOAD):
            try:
                return (load_identity(identity_name),)
            except ValueError as exc:
                if "not an Infinite-ID identity file" in str(exc) and _is_adapter(identity_path(identity_name)):
                    raise ValueError(f"identity_name: '{identity_name}' is an adapter, not a saved identity. Put it "
                                     "in models/infiniteid/ and load it with 'InfiniteID Adapter Loader'.") from exc
                raise


def _is_adapter(path: str) -> bool:
    """Whether a file that is not an identity is an adapter the adapter loader would read."""
    from ..adapter.detect import detect_format
    from ..adapter.loader import read_metadata, read_state_dict

    try:
        detect_format(read_state_dict(path), read_metadata(path))
        return True
    except Exception:  # noqa: BLE001 - anything else keeps the identity message
        return False


NODE_CLASS_MAPPINGS = {SAVE: InfiniteIDSaveIdentity, LOAD: InfiniteIDLoadIdentity}
NODE_DISPLAY_NAME_MAPPINGS = {SAVE: "InfiniteID Save Identity", LOAD: "InfiniteID Load Identity"}
