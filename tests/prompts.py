"""API-format prompt builders shared by the tests (tiny demo loaders + core nodes)."""
from __future__ import annotations


def base_prompt(positive: str = "a photo of a person on a beach", negative: str = "blurry",
                width: int = 128, height: int = 128, batch: int = 1) -> dict:
    """Checkpoint, prompts and an empty latent; node ids are fixed for later links."""
    return {
        "ckpt": {"class_type": "InfiniteIDDemoCheckpoint", "inputs": {"seed": 0}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}},
    }


def sampler_inputs(seed: int = 5, steps: int = 3, cfg: float = 5.0, sampler: str = "euler",
                   scheduler: str = "normal") -> dict:
    return {"seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler,
            "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0], "denoise": 1.0}


def infinite_id_nodes(model_link=("ckpt", 0), identity_count: int = 1, **apply_inputs) -> dict:
    settings = {"weight": 1.0, "attention_mode": "mixed", "cross_attention_merge": True, "adain": "off",
                "start_percent": 0.0, "end_percent": 1.0, "mix_start_percent": 0.0, "mix_end_percent": 1.0,
                "blocks": "all"}
    settings.update(apply_inputs)
    return {
        "adapter": {"class_type": "InfiniteIDDemoAdapter", "inputs": {"seed": 1}},
        "identity": {"class_type": "InfiniteIDDemoIdentity", "inputs": {"seed": 2, "count": identity_count}},
        "apply": {"class_type": "InfiniteIDApply", "inputs": {"model": list(model_link), "adapter": ["adapter", 0],
                                                              "identity": ["identity", 0], **settings}},
    }
