"""A real-size SDXL U-Net with random weights, for benchmarks on a GPU (nothing downloaded)."""
from __future__ import annotations

import torch


def sdxl_unet_config() -> dict:
    """The unet_config ComfyUI's model detection gives SDXL base 1.0."""
    return {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
        "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
        "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
        "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }


@torch.no_grad()
def build_random_sdxl(dtype: torch.dtype = torch.float16, seed: int = 0):
    """``(ModelPatcher, Adapter)``: SDXL-size U-Net and a FaceID-Plus-v2-shaped adapter, random."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    from infinite_id.adapter.kv import IdentityKV
    from infinite_id.unet.layers import SDXL_LAYERS
    from infinite_id.unet.walk import cross_attention_widths
    from infinite_id.adapter.model import Adapter

    device = mm.get_torch_device()
    config = comfy.supported_models.SDXL(sdxl_unet_config())
    if hasattr(config, "set_inference_dtype"):
        config.set_inference_dtype(dtype, None)
    else:
        config.unet_config["dtype"] = dtype
    model = config.get_model({}, device=device)
    torch.manual_seed(seed)
    for param in model.diffusion_model.parameters():
        if param.dim() > 1:
            torch.nn.init.normal_(param, std=param.shape[1] ** -0.5 if param.dim() == 2 else 0.02)
        else:
            param.zero_()
    model.diffusion_model.to(dtype)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=mm.unet_offload_device())
    widths = cross_attention_widths(model.diffusion_model)
    kv = IdentityKV(2048, [widths[key][0] for key in SDXL_LAYERS], dtype=dtype, device=device)
    for param in kv.parameters():
        torch.nn.init.normal_(param, std=2048 ** -0.5)
    return patcher, Adapter(kv=kv, name="random-sdxl-adapter")
