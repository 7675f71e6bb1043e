"""SDXL-shaped U-Nets with random weights, for benchmarks (nothing downloaded).

- ``sdxl``: real size, for a GPU.
- ``sdxl03``: SDXL-proportioned, for the CPU: SDXL's widths times 0.3 (96/192/384
  channels, head dim 48, all 70 transformer blocks, context 640). At a 72x72 latent
  every layer keeps SDXL-at-1024's ratio of tokens to channels (6.75 vs 6.4 at the first
  transformer level, 0.84 vs 0.8 at the second), so attention, linear layers and
  convolutions take the shares of the compute they take in SDXL at 1024x1024, at about
  1/40 of the cost.
"""
from __future__ import annotations

import torch

PROPORTIONED = {"model_channels": 96, "num_head_channels": 48, "context_dim": 640}


def sdxl_unet_config(proportioned: bool = False) -> dict:
    """The unet_config ComfyUI's model detection gives SDXL base 1.0 (or its 0.3-width twin)."""
    config = {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
        "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
        "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
        "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }
    if proportioned:
        config.update(PROPORTIONED)
    return config


@torch.no_grad()
def random_init_(module: torch.nn.Module, seed: int = 0) -> None:
    """Seeded weights with unit-ish activations (ComfyUI's ops leave weights uninitialised)."""
    torch.manual_seed(seed)
    for param in module.parameters():
        if param.dim() > 1:
            torch.nn.init.normal_(param, std=param.shape[1] ** -0.5 if param.dim() == 2 else 0.02)
        else:
            param.zero_()


@torch.no_grad()
def build_random_sdxl(dtype: torch.dtype = torch.float16, seed: int = 0, proportioned: bool = False):
    """``(ModelPatcher, Adapter)``: SDXL-shaped U-Net and a FaceID-Plus-v2-shaped adapter, random."""
    import comfy.model_management as mm
    import comfy.supported_models

    from infinite_id.adapter.kv import IdentityKV
    from infinite_id.adapter.model import Adapter
    from infinite_id.host.compat import core_model_patcher_class, eager_weights
    from infinite_id.unet.layers import SDXL_LAYERS
    from infinite_id.unet.walk import cross_attention_widths

    device = mm.get_torch_device()
    config = comfy.supported_models.SDXL(sdxl_unet_config(proportioned))
    if proportioned:  # BASE.__init__ forces SDXL's 64-channel heads
        config.unet_config["num_head_channels"] = PROPORTIONED["num_head_channels"]
    if hasattr(config, "set_inference_dtype"):
        config.set_inference_dtype(dtype, None)
    else:
        config.unet_config["dtype"] = dtype
    with eager_weights():
        model = config.get_model({}, device=device)
    random_init_(model.diffusion_model, seed)
    model.diffusion_model.to(dtype)
    patcher = core_model_patcher_class()(model, load_device=device, offload_device=mm.unet_offload_device())
    widths = cross_attention_widths(model.diffusion_model)
    token_dim = PROPORTIONED["context_dim"] if proportioned else 2048
    kv = IdentityKV(token_dim, [widths[key][0] for key in SDXL_LAYERS], dtype=dtype, device=device)
    for param in kv.parameters():
        torch.nn.init.normal_(param, std=token_dim ** -0.5)
    return patcher, Adapter(kv=kv, name="random-sdxl-adapter")
