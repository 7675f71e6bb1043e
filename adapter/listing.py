"""Which files in ``models/infiniteid`` are adapters: the list the loader offers and the
saved identities it must not mistake for adapters.

Shared by the Adapter Loader node and ``python . doctor``; kept below both so that neither
reaches into the other.
"""
from __future__ import annotations

import os

from ..host.folders import ADAPTERS, IDENTITIES_SUBFOLDER, IDENTITY_FILE_FORMAT, folder_paths_for
from .loader import read_metadata

DEFAULT_ADAPTER = "ip-adapter-faceid-plusv2_sdxl.bin"


def adapter_files() -> list[str]:
    """Files in every ``infiniteid`` folder except saved identities; the default name first when absent.

    The default is always offered, as the face-analysis loader offers ``antelopev2``: a
    shipped workflow then passes ComfyUI's "value not in list" check and the user reaches
    the loader's message naming the file and its folder.
    """
    import folder_paths

    folder_paths_for(ADAPTERS)  # make sure the folder is registered before listing it
    prefix = IDENTITIES_SUBFOLDER + "/"
    names = [name for name in folder_paths.get_filename_list(ADAPTERS)
             if not name.replace(os.sep, "/").startswith(prefix)]
    return names if DEFAULT_ADAPTER in names else [DEFAULT_ADAPTER] + names


def is_identity_file(path: str) -> bool:
    """A file written by 'InfiniteID Save Identity' (its safetensors metadata says so)."""
    try:
        return read_metadata(path).get("format") == IDENTITY_FILE_FORMAT
    except Exception:  # noqa: BLE001 - an unreadable header is the loader's to report
        return False
