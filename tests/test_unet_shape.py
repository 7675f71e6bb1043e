"""The one SDXL-shape check (``unet.walk.sdxl_widths``), used by Apply and by the trainer."""
from __future__ import annotations

import pytest
import torch

from infinite_id.demo.tiny_identity import build_tiny_adapter, random_identity
from infinite_id.demo.tiny_sdxl import build_tiny_sdxl
from infinite_id.nodes.apply import InfiniteIDApply
from infinite_id.unet.layers import SDXL_LAYERS
from infinite_id.unet.walk import cross_attention_widths, sdxl_widths

APPLY = dict(weight=1.0, attention_mode="mixed", cross_attention_merge=True, adain="mean", start_percent=0.0,
             end_percent=1.0, mix_start_percent=0.0, mix_end_percent=1.0, blocks="all")


@pytest.fixture(scope="module")
def without_middle():
    """A real host MODEL whose middle block has no transformer layers (10 of SDXL's 70 gone)."""
    model = build_tiny_sdxl(seed=3)
    model.model.diffusion_model.middle_block = torch.nn.Identity()
    return model


def test_an_sdxl_shaped_unet_gives_every_layer(tiny_unet):
    widths = sdxl_widths(tiny_unet.model.diffusion_model)
    assert widths == cross_attention_widths(tiny_unet.model.diffusion_model)
    assert all(key in widths for key in SDXL_LAYERS)


def test_missing_layers_are_named(without_middle):
    with pytest.raises(ValueError) as info:
        sdxl_widths(without_middle.model.diffusion_model)
    assert str(info.value) == ("not SDXL-shaped: 10 of SDXL's 70 cross-attention layers are missing (first: "
                               "('middle', 0, 0)). Infinite-ID adapters are for SDXL models.")


def test_apply_names_its_model_input(tiny_unet, without_middle):
    adapter = build_tiny_adapter(tiny_unet, seed=1)
    with pytest.raises(ValueError, match=r"^InfiniteIDApply: model: not SDXL-shaped: 10 of SDXL's 70 "
                                         r"cross-attention layers are missing \(first: \('middle', 0, 0\)\)"):
        InfiniteIDApply().apply(without_middle, adapter, random_identity(seed=2), **APPLY)
