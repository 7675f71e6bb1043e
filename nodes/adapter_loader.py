"""``InfiniteIDAdapterLoader``: load an identity adapter from ``models/infiniteid``."""
from __future__ import annotations

import os

from ..adapter.loader import load_adapter_file
from ..host.folders import ADAPTERS, folder_paths_for, missing_file_message
from .errors import node_error

NODE = "InfiniteIDAdapterLoader"


class InfiniteIDAdapterLoader:
    DESCRIPTION = ("Load an Infinite-ID adapter from models/infiniteid: a native Infinite-ID .safetensors file or "
                   "IP-Adapter FaceID-Plus-v2 for SDXL (ip-adapter-faceid-plusv2_sdxl.bin). The format is recognised "
                   "from the file's contents, so any file name works; other adapters are refused with a message "
                   "saying what they are.")
    CATEGORY = "InfiniteID"
    RETURN_TYPES = ("INFINITEID_ADAPTER",)
    RETURN_NAMES = ("adapter",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        folder_paths_for(ADAPTERS)  # make sure the folder is registered before listing it
        return {"required": {
            "adapter_name": (folder_paths.get_filename_list(ADAPTERS), {
                "tooltip": "An adapter file in models/infiniteid (.safetensors, or a legacy .bin read without "
                           "running code). Native Infinite-ID and IP-Adapter FaceID-Plus-v2 SDXL files work."}),
        }}

    def load(self, adapter_name: str):
        import folder_paths

        with node_error(NODE):
            path = folder_paths.get_full_path(ADAPTERS, adapter_name) if adapter_name else None
            if path is None or not os.path.isfile(path):
                folder = folder_paths_for(ADAPTERS)[0]
                raise ValueError("input 'adapter_name': " + missing_file_message(
                    adapter_name or "(no adapter selected)", folder,
                    "native Infinite-ID adapters or ip-adapter-faceid-plusv2_sdxl.bin"))
            try:
                return (load_adapter_file(path),)
            except ValueError as exc:
                raise ValueError(f"input 'adapter_name' ('{adapter_name}'): {exc}") from exc


NODE_CLASS_MAPPINGS = {NODE: InfiniteIDAdapterLoader}
NODE_DISPLAY_NAME_MAPPINGS = {NODE: "InfiniteID Adapter Loader"}
