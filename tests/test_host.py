"""The host itself: which one runs, the pack loads into it, the tiny U-Net samples."""
import torch

import nodes
from infinite_id.demo.tiny_sdxl import SDXL_TRANSFORMER_BLOCKS, count_transformer_blocks


def test_host_is_reported(host_info):
    assert host_info.version.startswith("ComfyUI")
    assert (host_info.path / "comfy").is_dir()


def test_tiny_unet_has_sdxl_topology(tiny_unet):
    counts = count_transformer_blocks(tiny_unet)
    assert counts == SDXL_TRANSFORMER_BLOCKS
    assert sum(counts.values()) == 70
