"""``InfiniteIDAdapterLoader``: load an identity adapter from ``models/infiniteid``.

The file list (``adapter/listing.py``) leaves out ``identities/`` (saved identities share the
folder tree, but are not adapters) and always offers the expected default file.
"""
from __future__ import annotations

import os

from ..adapter.listing import DEFAULT_ADAPTER, adapter_files, is_identity_file
from ..adapter.loader import load_adapter_file
from ..host.errors import node_error
from ..host.folders import ADAPTERS, IDENTITIES_SUBFOLDER, folder_paths_for, missing_file_message
from .inputs import checked_inputs

NODE = "InfiniteIDAdapterLoader"


class InfiniteIDAdapterLoader:
    DESCRIPTION = ("Load an Infinite-ID adapter from models/infiniteid: a native Infinite-ID .safetensors file or "
                   "IP-Adapter FaceID-Plus-v2 for SDXL (ip-adapter-faceid-plusv2_sdxl.bin). The format is recognised "
                   "from the file's contents, so any file name works; other adapters are refused with a message "
                   "saying what they are.")
    CATEGORY = "InfiniteID"
    SEARCH_ALIASES = ["face id", "faceid", "ipadapter face", "ip-adapter faceid", "load adapter", "identity adapter",
                      "faceid plus v2"]
    RETURN_TYPES = ("INFINITEID_ADAPTER",)
    RETURN_NAMES = ("adapter",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "adapter_name": (adapter_files(), {
                "tooltip": "An adapter file in models/infiniteid (.safetensors, or a legacy .bin read without "
                           "running code). Native Infinite-ID and IP-Adapter FaceID-Plus-v2 SDXL files work. "
                           f"{DEFAULT_ADAPTER} is always listed; if it is not installed, running says where it goes."}),
        }}

    @checked_inputs(NODE)
    def load(self, adapter_name: str):
        import folder_paths

        with node_error(NODE):
            path = folder_paths.get_full_path(ADAPTERS, adapter_name) if adapter_name else None
            if path is None or not os.path.isfile(path):
                folder = folder_paths_for(ADAPTERS)[0]
                raise ValueError("input 'adapter_name': " + missing_file_message(
                    adapter_name or "(no adapter selected)", folder,
                    "native Infinite-ID adapters or ip-adapter-faceid-plusv2_sdxl.bin"))
            if is_identity_file(path):
                raise ValueError(f"input 'adapter_name': '{adapter_name}' is a saved identity (written by "
                                 "'InfiniteID Save Identity'), not an adapter. Load it with 'InfiniteID Load "
                                 f"Identity' from models/infiniteid/{IDENTITIES_SUBFOLDER}/.")
            try:
                return (load_adapter_file(path),)
            except ValueError as exc:
                raise ValueError(f"input 'adapter_name' ('{adapter_name}'): {exc}") from exc


NODE_CLASS_MAPPINGS = {NODE: InfiniteIDAdapterLoader}
NODE_DISPLAY_NAME_MAPPINGS = {NODE: "InfiniteID Adapter Loader"}
