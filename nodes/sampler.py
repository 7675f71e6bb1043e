"""``InfiniteIDSampler``: a drop-in KSampler that runs both Infinite-ID streams."""
from __future__ import annotations

from ..host.errors import node_error
from ..sampling.dual_stream import NOISE_MODES, sample_dual_stream
from .inputs import checked_inputs

NODE = "InfiniteIDSampler"
BATCH_NOISE_TOOLTIP = (
    "shared: every row starts from the same noise (the noise of row 0), so the rows of a sweep differ only by "
    "identity and one text-stream row serves them all (faster). per row: each row gets its own noise, as core "
    "KSampler draws for a batch. auto: shared when the identity holds several identities (Interpolate steps > 1, "
    "identity batches) or the latent comes from LatentBatchSeedBehavior 'fixed'; per row otherwise.")


def check_sampler_choice(sampler_name: str, scheduler: str) -> None:
    """Names this host's sampler code knows; an API prompt may carry any text."""
    import comfy.samplers

    for name, value, known in (("sampler_name", sampler_name, comfy.samplers.KSampler.SAMPLERS),
                               ("scheduler", scheduler, comfy.samplers.KSampler.SCHEDULERS)):
        if value not in known:
            shown = ", ".join(list(known)[:8])
            raise ValueError(f"{name}: {value!r} is not one of this ComfyUI's {name.split('_')[0]}s ({shown}, ...)")


class InfiniteIDSampler:
    DESCRIPTION = ("KSampler for a MODEL patched by 'InfiniteID Apply'. Runs the identity stream and the text stream "
                   "from the same seed in one batched U-Net call per step. Outputs the identity latent (the result) "
                   "and the text latent (what plain SDXL gives for the prompt; exact while the mixing window lasts).")
    CATEGORY = "InfiniteID"
    SEARCH_ALIASES = ["ksampler", "identity sampler", "face id sampler", "dual stream", "sampler"]
    RETURN_TYPES = ("LATENT", "LATENT")
    RETURN_NAMES = ("identity_latent", "text_latent")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        import comfy.samplers

        return {"required": {
            "model": ("MODEL", {"tooltip": "The MODEL from 'InfiniteID Apply'."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True,
                             "tooltip": "One seed for both streams: the same noise core KSampler would use."}),
            "steps": ("INT", {"default": 30, "min": 1, "max": 10000, "tooltip": "Denoising steps (paper: 30)."}),
            "cfg": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": "Classifier-free guidance for both streams (paper: 5.0)."}),
            "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"tooltip": "Any ComfyUI sampler."}),
            "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"tooltip": "Any ComfyUI scheduler."}),
            "positive": ("CONDITIONING", {"tooltip": "The prompt, used by both streams."}),
            "negative": ("CONDITIONING", {"tooltip": "The negative prompt, used by both streams."}),
            "latent_image": ("LATENT", {"tooltip": "Batch n gives n images; an identity sweep of n needs n."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "As in KSampler."}),
        }, "optional": {
            "batch_noise": (list(NOISE_MODES), {"default": "auto", "tooltip": BATCH_NOISE_TOOLTIP, "advanced": True}),
        }}

    @checked_inputs(NODE)
    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0,
               batch_noise="auto"):
        with node_error(NODE):
            check_sampler_choice(sampler_name, scheduler)
            result = sample_dual_stream(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                        latent_image, denoise, node=NODE, batch_noise=batch_noise)
        return (result.identity, result.text)


NODE_CLASS_MAPPINGS = {NODE: InfiniteIDSampler}
NODE_DISPLAY_NAME_MAPPINGS = {NODE: "InfiniteID Sampler"}
