"""``InfiniteIDGuider``: the dual-stream sampler as a GUIDER for SamplerCustomAdvanced."""
from __future__ import annotations

from ..host.errors import node_error
from ..sampling.dual_stream import NOISE_MODES, check_model
from ..sampling.guider import make_guider
from .inputs import checked_inputs
from .sampler import BATCH_NOISE_TOOLTIP

NODE = "InfiniteIDGuider"


class InfiniteIDGuider:
    DESCRIPTION = ("CFG guider for a MODEL patched by 'InfiniteID Apply', for SamplerCustomAdvanced. Both streams use "
                   "the noise and sampler you connect there; the output is the identity stream.")
    CATEGORY = "InfiniteID"
    SEARCH_ALIASES = ["guider", "identity guider", "face id guider", "samplercustomadvanced", "dual stream"]
    RETURN_TYPES = ("GUIDER",)
    FUNCTION = "get_guider"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The MODEL from 'InfiniteID Apply'."}),
            "positive": ("CONDITIONING", {"tooltip": "The prompt, used by both streams."}),
            "negative": ("CONDITIONING", {"tooltip": "The negative prompt, used by both streams."}),
            "cfg": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": "Classifier-free guidance for both streams (paper: 5.0)."}),
        }, "optional": {
            "batch_noise": (list(NOISE_MODES), {"default": "auto", "tooltip": BATCH_NOISE_TOOLTIP, "advanced": True}),
        }}

    @checked_inputs(NODE)
    def get_guider(self, model, positive, negative, cfg, batch_noise="auto"):
        with node_error(NODE):
            check_model(model, None, NODE)
            return (make_guider(model, positive, negative, cfg, batch_noise),)


NODE_CLASS_MAPPINGS = {NODE: InfiniteIDGuider}
NODE_DISPLAY_NAME_MAPPINGS = {NODE: "InfiniteID Guider"}
