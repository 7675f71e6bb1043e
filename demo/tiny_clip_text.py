"""A tiny SDXL dual text encoder (CLIP-L + CLIP-G) built with ComfyUI's own CLIP classes.

Why: the pack's tests and ``--demo`` need a real ``comfy.sd.CLIP`` so that core
``CLIPTextEncode``, the real SDXL tokenizer (shipped in the host tree), ComfyUI's
prompt-weight handling and its model management all run exactly as they do with a
checkpoint, on CPU and with nothing downloaded. Only the widths shrink: each encoder has
hidden size 32 (so the U-Net context is 32 + 32 = 64, ``TINY_CONTEXT_DIM``), and CLIP-G's
text projection gives the pooled vector of 32 (``TINY_POOLED_DIM``). The vocabulary stays
at 49408 so the real tokenizer's ids are valid. Every weight is filled from a seeded
generator, because ComfyUI's ``ops`` leave weights uninitialised.

The JSON configs are the host's own ``sd1_clip_config.json`` / ``clip_config_bigg.json``
with only the size fields replaced, so host-specific keys (for example ``eos_token_id``,
which changed between 2024 and today) stay whatever the host expects.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
from typing import TYPE_CHECKING, Any

import torch

from ..host.compat import eager_weights
from .tiny_sdxl import TINY_CONTEXT_DIM, TINY_POOLED_DIM, init_weights_

if TYPE_CHECKING:  # pragma: no cover
    import comfy.sd

log = logging.getLogger(__name__)

TINY_CLIP_L_HIDDEN = TINY_CONTEXT_DIM - TINY_POOLED_DIM  # 32
TINY_CLIP_G_HIDDEN = TINY_POOLED_DIM  # 32; its projection (hidden -> hidden) is the pooled vector
# Three layers: SDXL reads the penultimate layer (layer_idx -2), and SDClipModel asserts
# abs(layer_idx) < num_layers.
TINY_TEXT_LAYERS = 3
TINY_TEXT_HEADS = 2

# Size fields replaced in the host's configs; everything else is kept as the host has it.
_TINY_CLIP_L = {
    "hidden_size": TINY_CLIP_L_HIDDEN,
    "intermediate_size": 4 * TINY_CLIP_L_HIDDEN,
    "num_attention_heads": TINY_TEXT_HEADS,
    "num_hidden_layers": TINY_TEXT_LAYERS,
    "projection_dim": TINY_CLIP_L_HIDDEN,
}
_TINY_CLIP_G = {
    "hidden_size": TINY_CLIP_G_HIDDEN,
    "intermediate_size": 4 * TINY_CLIP_G_HIDDEN,
    "num_attention_heads": TINY_TEXT_HEADS,
    "num_hidden_layers": TINY_TEXT_LAYERS,
    "projection_dim": TINY_CLIP_G_HIDDEN,
}


def tiny_text_configs() -> tuple[dict[str, Any], dict[str, Any]]:
    """The host's CLIP-L and CLIP-G configs with tiny sizes (needs the host on sys.path)."""
    import comfy.sd1_clip

    comfy_dir = os.path.dirname(os.path.realpath(comfy.sd1_clip.__file__))
    with open(os.path.join(comfy_dir, "sd1_clip_config.json")) as f:
        clip_l = json.load(f)
    with open(os.path.join(comfy_dir, "clip_config_bigg.json")) as f:
        clip_g = json.load(f)
    clip_l.update(_TINY_CLIP_L)
    clip_g.update(_TINY_CLIP_G)
    return clip_l, clip_g


@functools.cache
def _tiny_sdxl_clip_model_class() -> type:
    """``SDXLClipModel`` whose two encoders read tiny configs instead of the full-size ones.

    ``SDXLClipModel.__init__`` (and ``SDXLClipG``'s) hard-code the real config files, so
    only ``__init__`` is replaced; it builds the same two ``SDClipModel``s with the same
    arguments as the host's SDXL classes. Encoding, clip options and state-dict loading
    are inherited unchanged.
    """
    import comfy.sd1_clip
    import comfy.sdxl_clip

    class TinySDXLClipModel(comfy.sdxl_clip.SDXLClipModel):
        def __init__(
            self,
            clip_l_config: str,
            clip_g_config: str,
            device: Any = "cpu",
            dtype: torch.dtype | None = None,
            model_options: dict | None = None,
        ) -> None:
            torch.nn.Module.__init__(self)
            # Current ComfyUI's comfy.sd.CLIP passes model_options to every text encoder and
            # SDClipModel reads "<model_name>_model_config" from it; the 2024 tree has neither
            # (the CLIP passes no model_options there), so forward them only when given.
            def opts(name: str) -> dict:
                return {} if model_options is None else {"model_options": {**model_options, "model_name": name}}

            self.clip_l = comfy.sd1_clip.SDClipModel(
                layer="hidden", layer_idx=-2, device=device, dtype=dtype,
                layer_norm_hidden_state=False, textmodel_json_config=clip_l_config, **opts("clip_l"),
            )
            # As SDXLClipG: penultimate layer, pad id 0, projected pooled output.
            self.clip_g = comfy.sd1_clip.SDClipModel(
                layer="hidden", layer_idx=-2, device=device, dtype=dtype,
                layer_norm_hidden_state=False, textmodel_json_config=clip_g_config,
                special_tokens={"start": 49406, "end": 49407, "pad": 0},
                return_projected_pooled=True, **opts("clip_g"),
            )
            self.dtypes = {dtype}  # read by current ComfyUI's comfy.sd.CLIP; harmless in 2024

    return TinySDXLClipModel


def build_tiny_sdxl_clip(seed: int = 0) -> comfy.sd.CLIP:
    """Return a real ``comfy.sd.CLIP`` around a tiny, seeded SDXL dual text encoder."""
    import comfy.sd
    import comfy.sdxl_clip
    import comfy.supported_models_base

    clip_l, clip_g = tiny_text_configs()
    with tempfile.TemporaryDirectory(prefix="tiny_sdxl_clip_") as tmp:
        # Paths, not dicts: the 2024 SDClipModel only opens a file (current also takes a dict).
        paths = {}
        for name, config in (("clip_l_config", clip_l), ("clip_g_config", clip_g)):
            paths[name] = os.path.join(tmp, f"{name}.json")
            with open(paths[name], "w") as f:
                json.dump(config, f)
        target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, _tiny_sdxl_clip_model_class())
        target.params = paths
        # The 2024 CLIPTextModel.__init__ writes an identity into text_projection in place,
        # which autograd refuses on a leaf parameter; ComfyUI builds models inside its
        # executor's inference mode, here no_grad does the same job.
        with torch.no_grad(), eager_weights():
            clip = comfy.sd.CLIP(target, embedding_directory=None)
    init_weights_(clip.cond_stage_model, seed)
    log.debug("tiny SDXL CLIP built (seed %d, dtype %s)", seed, next(clip.cond_stage_model.parameters()).dtype)
    return clip
