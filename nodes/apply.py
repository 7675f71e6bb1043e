"""``InfiniteIDApply``: patch a MODEL for dual-stream Infinite-ID inference."""
from __future__ import annotations

from ..adapter.lora import apply_adapter_lora
from ..attention.functional import ADAIN_MODES, ATTENTION_MODES
from ..host.errors import node_error
from ..identity.types import check_identity
from ..model_patch.install import apply_patch, check_identity_adapter
from ..model_patch.settings import PatchSettings
from ..unet.layers import parse_block_list
from .inputs import checked_inputs

NODE = "InfiniteIDApply"


def _percent(default: float, tooltip: str) -> tuple:
    """A schedule window bound: an expert input (the paper injects over the whole run)."""
    return ("FLOAT", {"default": default, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": tooltip, "advanced": True})


class InfiniteIDApply:
    DESCRIPTION = ("Patch an SDXL MODEL for Infinite-ID: the identity stream's self-attention mixes in the text "
                   "stream's keys and values (mixed attention), its cross-attention adds identity attention to text "
                   "attention (merge), and AdaIN-mean carries the prompt's style. On current ComfyUI any sampler runs "
                   "both streams on the result (KSampler, SamplerCustom, detailers); 'InfiniteID Sampler' also "
                   "outputs the text latent, and is needed on ComfyUI older than December 2024.")
    CATEGORY = "InfiniteID"
    SEARCH_ALIASES = ["face id", "identity", "apply identity", "face swap", "personalize", "personalise",
                      "pulid", "instantid", "ipadapter face", "faceid", "photomaker", "infinite id"]
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "An SDXL model (checkpoint, LoRA-patched or not)."}),
            "adapter": ("INFINITEID_ADAPTER", {"tooltip": "From 'InfiniteID Adapter Loader'."}),
            "identity": ("INFINITEID_IDENTITY", {"tooltip": "From 'InfiniteID Encode', 'Mix' or 'Interpolate'."}),
            "weight": ("FLOAT", {"default": 1.0, "min": -1.0, "max": 3.0, "step": 0.05,
                                 "tooltip": "Strength of the identity cross-attention. 0 gives the plain text result; "
                                            "lower it if images look burned."}),
            "attention_mode": (list(ATTENTION_MODES), {
                               "default": "mixed", "advanced": True,
                               "tooltip": "mixed: the paper's method (own + text-stream keys/values). mutual: text-stream "
                                          "keys/values only (ablation). off: no mixing, no text stream computed."}),
            "cross_attention_merge": ("BOOLEAN", {
                                      "default": True, "advanced": True,
                                      "tooltip": "Sum identity and text cross-attention (paper). Off: identity attention "
                                                 "replaces text attention, blended by weight (ablation)."}),
            "adain": (list(ADAIN_MODES), {"default": "off",
                      "tooltip": "mean: shift identity keys/values to the text stream's mean (use for stylised "
                                 "prompts). full: mean and std (stronger style, weaker identity)."}),
            "start_percent": _percent(0.0, "Sampling progress at which identity injection starts."),
            "end_percent": _percent(1.0, "Sampling progress at which identity injection ends."),
            "mix_start_percent": _percent(0.0, "Sampling progress at which mixed attention starts."),
            "mix_end_percent": _percent(1.0, "Sampling progress at which mixed attention ends. The text stream is not "
                                             "computed after it, which saves time."),
            "blocks": ("STRING", {"default": "all", "advanced": True,
                                  "tooltip": "Blocks to patch: 'all', or a list such as 'input, middle_0, output_0'. "
                                             "Blocks: input_4,5,7,8 middle_0 output_0..5."}),
        }, "optional": {
            "lora_strength": ("FLOAT", {"default": 1.0, "min": -2.0, "max": 2.0, "step": 0.05, "advanced": True,
                              "tooltip": "Strength of the adapter's own U-Net LoRA, applied only when the adapter file "
                                         "carries one (IP-Adapter FaceID-Plus-v2 was trained with it). It changes "
                                         "both streams; 0 leaves the model's weights untouched."}),
        }}

    @checked_inputs(NODE)
    def apply(self, model, adapter, identity, weight, attention_mode, cross_attention_merge, adain,
              start_percent, end_percent, mix_start_percent, mix_end_percent, blocks, lora_strength=1.0):
        with node_error(NODE):
            check_identity(identity, "identity")
            check_identity_adapter(identity, adapter)
            settings = PatchSettings(
                weight=weight, attention_mode=attention_mode, merge=cross_attention_merge, adain=adain,
                start_percent=start_percent, end_percent=end_percent, mix_start_percent=mix_start_percent,
                mix_end_percent=mix_end_percent, blocks=frozenset(parse_block_list(blocks)))
            model = apply_adapter_lora(model, adapter, lora_strength)
            return (apply_patch(model, adapter, identity, settings),)


NODE_CLASS_MAPPINGS = {NODE: InfiniteIDApply}
NODE_DISPLAY_NAME_MAPPINGS = {NODE: "InfiniteID Apply"}
