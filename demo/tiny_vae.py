"""A tiny SDXL-shaped VAE built with ComfyUI's own ``comfy.sd.VAE`` and ``AutoencoderKL``.

Why: tests and ``--demo`` need core ``VAEEncode`` / ``VAEDecode`` (ComfyUI's batching,
memory estimates, device moves and pixel pre/post-processing) to run for real, on CPU
and without a downloaded VAE. The autoencoder keeps SDXL's interface (4 latent
channels, 8x downscale: four resolution levels, three down/upsamplings) and shrinks the
widths to 32 channels at every level (ComfyUI's GroupNorm uses 32 groups) with one res
block per level. Weights come from a seeded generator (ComfyUI's ops leave them
uninitialised) and reach the VAE through its own state-dict loading, as a file would.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..host.compat import eager_weights
from .tiny_sdxl import init_weights_

if TYPE_CHECKING:  # pragma: no cover
    import comfy.sd

log = logging.getLogger(__name__)

TINY_VAE_LATENT_CHANNELS = 4
TINY_VAE_DOWNSCALE = 8


def tiny_vae_config() -> dict[str, Any]:
    """``config`` for ``comfy.sd.VAE``: ``AutoencoderKL(**config["params"])`` on both hosts."""
    ddconfig = {
        "double_z": True,
        "z_channels": TINY_VAE_LATENT_CHANNELS,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        # ComfyUI's Normalize is GroupNorm(32 groups): every width must be a multiple of 32.
        "ch": 32,
        "ch_mult": [1, 1, 1, 1],  # 4 levels -> 3 downsamplings -> 8x, like SDXL's [1, 2, 4, 4]
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    return {"params": {"ddconfig": ddconfig, "embed_dim": TINY_VAE_LATENT_CHANNELS}}


def build_tiny_vae(seed: int = 0) -> comfy.sd.VAE:
    """Return a real ``comfy.sd.VAE`` with a tiny, seeded AutoencoderKL."""
    import comfy.ldm.models.autoencoder
    import comfy.sd

    config = tiny_vae_config()
    # A throwaway module of the same class gives the seeded state dict; the VAE then loads
    # it the way it loads a checkpoint (both hosts require ``sd``; the 2024 tree calls
    # ``sd.keys()`` first).
    with eager_weights():
        template = comfy.ldm.models.autoencoder.AutoencoderKL(**config["params"])
    init_weights_(template, seed)
    sd = {k: v.detach().clone() for k, v in template.state_dict().items()}
    vae = comfy.sd.VAE(sd=sd, config=config)
    log.debug("tiny VAE built (seed %d, dtype %s)", seed, vae.vae_dtype)
    return vae
