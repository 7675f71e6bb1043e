"""A tiny SDXL-topology U-Net built with ComfyUI's own SDXL classes.

Why: tests and ``--demo`` must run the real host's sampling code on two CPU cores with
no weights to download. The model keeps everything about SDXL that the Infinite-ID
patch depends on (all 70 transformer blocks at their real positions: input 4, 5, 7, 8;
middle 0; output 0 to 5; the pooled/size vector ``y``; a text context) and shrinks only
the widths. Every weight is initialised from a seeded generator, because ComfyUI's
``ops`` leave weights uninitialised (``torch.empty``).
"""
from __future__ import annotations

import math

import torch

# Widths of the tiny model. Context = tiny CLIP-L (32) + tiny CLIP-G (32), as SDXL's is
# CLIP-L 768 + CLIP-G 1280; the pooled vector is CLIP-G's projection.
TINY_CONTEXT_DIM = 64
TINY_POOLED_DIM = 32
TINY_MODEL_CHANNELS = 32  # GroupNorm(32) in the U-Net needs a multiple of 32
TINY_HEAD_CHANNELS = 16
SIZE_EMBED_DIM = 6 * 256  # SDXL's six Fourier size/crop embeddings

# Where SDXL's 70 transformer blocks sit, as ComfyUI names them: (block, index) -> depth.
SDXL_TRANSFORMER_BLOCKS: dict[tuple[str, int], int] = {
    ("input", 4): 2, ("input", 5): 2, ("input", 7): 10, ("input", 8): 10,
    ("middle", 0): 10,
    ("output", 0): 10, ("output", 1): 10, ("output", 2): 10,
    ("output", 3): 2, ("output", 4): 2, ("output", 5): 2,
}


def tiny_sdxl_unet_config() -> dict:
    """The unet_config ComfyUI's model detection would give SDXL, with tiny widths."""
    return {
        "use_checkpoint": False,
        "image_size": 32,
        "out_channels": 4,
        "use_spatial_transformer": True,
        "legacy": False,
        "num_classes": "sequential",
        "adm_in_channels": TINY_POOLED_DIM + SIZE_EMBED_DIM,
        "in_channels": 4,
        "model_channels": TINY_MODEL_CHANNELS,
        "num_res_blocks": [2, 2, 2],
        "transformer_depth": [0, 0, 2, 2, 10, 10],
        "channel_mult": [1, 2, 4],
        "transformer_depth_middle": 10,
        "use_linear_in_transformer": True,
        "context_dim": TINY_CONTEXT_DIM,
        "num_head_channels": TINY_HEAD_CHANNELS,
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }


@torch.no_grad()
def init_weights_(module: torch.nn.Module, seed: int, gain: float = 1.0) -> None:
    """Deterministic fan-in scaled init of every parameter (norms get 1/0).

    ``gain`` scales the weights of linear and conv layers; values around 1 keep the
    tiny U-Net's outputs in a range where float32 comparisons stay meaningful.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, param in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        if param.dim() == 1:
            is_norm_weight = name.endswith("weight")
            param.copy_(torch.ones_like(param) if is_norm_weight else torch.randn(param.shape, generator=gen) * 0.02)
        else:
            fan_in = math.prod(param.shape[1:])
            param.copy_(torch.randn(param.shape, generator=gen) * (gain / math.sqrt(fan_in)))


def build_tiny_sdxl(seed: int = 0, dtype: torch.dtype = torch.float32, manual_cast_dtype: torch.dtype | None = None):
    """Return a ComfyUI ``ModelPatcher`` around a tiny, seeded SDXL ``BaseModel``.

    ``dtype`` is the weights' storage dtype; ``manual_cast_dtype`` the dtype they are cast
    to for computing, as ComfyUI does for fp8-stored weights (``--fp8_e4m3fn-unet``).
    """
    import comfy.model_management as mm
    import comfy.supported_models

    from ..host.compat import core_model_patcher_class, eager_weights

    model_config = comfy.supported_models.SDXL(tiny_sdxl_unet_config())
    # BASE.__init__ forces SDXL's 64-channel heads; the tiny widths need smaller heads.
    model_config.unet_config["num_head_channels"] = TINY_HEAD_CHANNELS
    if hasattr(model_config, "set_inference_dtype"):
        model_config.set_inference_dtype(dtype, manual_cast_dtype)
    else:
        model_config.unet_config["dtype"] = dtype
        model_config.manual_cast_dtype = manual_cast_dtype
    with eager_weights():
        model = model_config.get_model({}, device="cpu")
    init_weights_(model.diffusion_model, seed)
    model.diffusion_model.to(dtype)
    model.eval()
    return core_model_patcher_class()(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def count_transformer_blocks(model_patcher) -> dict[tuple[str, int], int]:
    """Count transformer blocks per (block, index) by walking the real module tree."""
    unet = model_patcher.model.diffusion_model
    counts: dict[tuple[str, int], int] = {}
    groups = [("input", unet.input_blocks), ("middle", [unet.middle_block]), ("output", unet.output_blocks)]
    for block_name, blocks in groups:
        for index, block in enumerate(blocks):
            n = sum(1 for m in block.modules() if type(m).__name__ == "BasicTransformerBlock")
            if n:
                counts[(block_name, index)] = n
    return counts
