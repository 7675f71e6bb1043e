"""Tell adapter formats apart by their keys and shapes, never by file name.

Why: users rename downloads freely, and a face pack that matched file-name patterns got
"model not found" reports for years. Every file this loader cannot run is
refused with a message that says what the file *is* and where it belongs instead.

IP-Adapter files come in two layouts with the same tensors: the original ``.bin`` is a
nested dict ``{"image_proj": {...}, "ip_adapter": {...}}``; converted ``.safetensors``
files flatten it to ``image_proj.*`` / ``ip_adapter.*`` keys.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ..unet.layers import SDXL_LAYERS, adapter_layer_number
from .faceid_plus import ARCFACE_DIM

NATIVE = "infinite-id"
FACEID_PLUS_V2 = "faceid-plus-v2"
SUPPORTED = ("native Infinite-ID adapters (.safetensors with format=infinite-id metadata) and "
             "IP-Adapter FaceID-Plus-v2 for SDXL (ip-adapter-faceid-plusv2_sdxl)")
_IP_KEY = re.compile(r"^(\d+)\.to_k_ip\.weight$")


class UnsupportedAdapterError(ValueError):
    """The file is not an adapter this pack can run; the message says what it is."""


@dataclass
class Detected:
    """A recognised adapter: its format and its tensors split into the parts loaders need."""

    kind: str
    layout: str                                   # "native", "nested" or "flat"
    image_proj: dict[str, torch.Tensor] = field(default_factory=dict)
    ip_adapter: dict[str, torch.Tensor] = field(default_factory=dict)


def split_ip_adapter(sd: dict) -> tuple[dict, dict, str] | None:
    """``(image_proj, ip_adapter, layout)`` for either IP-Adapter layout, else ``None``."""
    if isinstance(sd.get("image_proj"), dict) or isinstance(sd.get("ip_adapter"), dict):
        return dict(sd.get("image_proj") or {}), dict(sd.get("ip_adapter") or {}), "nested"
    image_proj = {k[len("image_proj."):]: v for k, v in sd.items() if str(k).startswith("image_proj.")}
    ip_adapter = {k[len("ip_adapter."):]: v for k, v in sd.items() if str(k).startswith("ip_adapter.")}
    if image_proj or ip_adapter:
        return image_proj, ip_adapter, "flat"
    return None


def _refuse(what: str, advice: str) -> UnsupportedAdapterError:
    return UnsupportedAdapterError(f"this file is {what}. {advice} The InfiniteID adapter loader reads {SUPPORTED}.")


def _has(keys: list[str], *parts: str) -> bool:
    return any(part in key for key in keys for part in parts)


def _not_an_adapter(keys: list[str]) -> UnsupportedAdapterError:
    """The message for files with neither an IP-Adapter nor a native layout."""
    if _has(keys, "double_blocks.", "single_blocks.", "double_stream", "single_stream"):
        return _refuse("made for Flux (it has double_blocks/single_blocks keys), not SDXL",
                       "Use it with a Flux IP-Adapter/PuLID node; Infinite-ID runs on SDXL.")
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner."))
           for k in keys):
        return _refuse("a full Stable Diffusion checkpoint (U-Net, text encoders and VAE)",
                       "Put it in models/checkpoints and load it with 'Load Checkpoint'.")
    if _has(keys, "lora_unet_", "lora_te", ".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".lora.down.",
            "_lora.down."):
        return _refuse("a LoRA (for example FaceID-Plus-v2's separate *_lora.safetensors)",
                       "Load it with 'LoraLoaderModelOnly'. The adapter .bin itself carries its LoRA, which "
                       "'InfiniteID Apply' applies through its lora_strength input.")
    if _has(keys, "controlnet_", "control_model.", "input_hint_block"):
        return _refuse("a ControlNet (for example InstantID's ControlNet)",
                       "Put it in models/controlnet and load it with 'Load ControlNet Model'.")
    if any(k.startswith(("vision_model.", "visual.")) for k in keys):
        return _refuse("a CLIP vision encoder", "Put it in models/clip_vision and load it with 'Load CLIP Vision'.")
    if any(k.startswith(("input_blocks.", "diffusion_model.", "down_blocks.", "transformer_blocks.")) for k in keys):
        return _refuse("a diffusion model (U-Net) without adapter weights",
                       "Put it in models/diffusion_models (or models/unet) and load it with 'Load Diffusion Model'.")
    shown = ", ".join(sorted(keys)[:4])
    return _refuse(f"not a known adapter layout (first keys: {shown})",
                   "It may be damaged, or an adapter for a model family this pack does not support.")


def _ip_layers(ip_adapter: dict) -> tuple[list[int], int | None]:
    numbers = sorted(int(m.group(1)) for k in ip_adapter if (m := _IP_KEY.match(str(k))))
    in_dim = ip_adapter[f"{numbers[0]}.to_k_ip.weight"].shape[1] if numbers else None
    return numbers, in_dim


def _base_model(layers: int, in_dim: int | None) -> str:
    if layers == len(SDXL_LAYERS):
        return "SDXL"
    if layers == 16 and in_dim == 768:
        return "SD1.5 (16 cross-attention layers, 768-d context)"
    if layers == 16 and in_dim == 1024:
        return "SD2.x (16 cross-attention layers, 1024-d context)"
    return f"a model with {layers} cross-attention layers and {in_dim}-d context (not SDXL)"


def _family(image_proj: dict) -> str:
    keys = list(image_proj)
    if "perceiver_resampler.proj_in.weight" in image_proj and "proj.0.weight" in image_proj:
        return "IP-Adapter FaceID-Plus"
    if "latents" in image_proj:
        proj_in = image_proj.get("proj_in.weight")
        if proj_in is not None and proj_in.shape[1] == ARCFACE_DIM:
            return "InstantID's ip-adapter (ArcFace through a 16-query resampler; it needs InstantID's ControlNet)"
        return "IP-Adapter Plus / Plus-Face (CLIP image features only, no ArcFace projection)"
    if "proj.0.weight" in image_proj and image_proj["proj.0.weight"].shape[1] == ARCFACE_DIM:
        return "IP-Adapter FaceID (ArcFace only, without the CLIP 'Plus' branch)"
    if "proj.3.weight" in image_proj:
        return "IP-Adapter Full-Face (CLIP image embedding only, no ArcFace projection)"
    if "proj.weight" in image_proj:
        return "a plain IP-Adapter (CLIP image embedding only, no ArcFace projection)"
    return f"an IP-Adapter variant this pack does not know (image_proj keys: {', '.join(sorted(keys)[:3])})"


def _check_faceid_plus_sdxl(image_proj: dict, ip_adapter: dict, numbers: list[int], in_dim: int) -> None:
    """Damaged or inconsistent FaceID-Plus-v2 files fail here with the first problem found."""
    expected = [adapter_layer_number(i) for i in range(len(SDXL_LAYERS))]
    if numbers != expected:
        raise UnsupportedAdapterError(f"FaceID-Plus-v2 file has image projections numbered {numbers[:3]}...; "
                                      "expected 1, 3, ..., 139 (the file is damaged)")
    missing = [n for n in expected if f"{n}.to_v_ip.weight" not in ip_adapter]
    if missing:
        raise UnsupportedAdapterError(f"FaceID-Plus-v2 file lacks {missing[0]}.to_v_ip.weight (the file is damaged)")
    token_dim = image_proj["norm.weight"].shape[0]
    if token_dim != in_dim:
        raise UnsupportedAdapterError(f"FaceID-Plus-v2 file makes {token_dim}-d tokens but its image projections take "
                                      f"{in_dim}-d input (the file is damaged)")


def detect_format(sd: dict, metadata: dict | None = None) -> Detected:
    """Recognise a loaded adapter file or raise ``UnsupportedAdapterError`` saying what it is."""
    metadata = metadata or {}
    if not sd:
        raise _refuse("empty (no tensors)", "The download may have failed; download it again.")
    if metadata.get("format") == NATIVE:
        return Detected(NATIVE, "native", ip_adapter=dict(sd))
    keys = [str(k) for k in sd]
    if any(k.startswith(("face_mapper.", "clip_mapper.")) for k in keys) or "ip.1.to_k.weight" in sd:
        raise _refuse("laid out like a native Infinite-ID adapter but has no format=infinite-id metadata",
                      "It was probably re-saved by a tool that drops safetensors metadata; save it again with "
                      "the pack's save_native.")
    parts = split_ip_adapter(sd)
    if parts is None:
        raise _not_an_adapter(keys)
    image_proj, ip_adapter, layout = parts
    numbers, in_dim = _ip_layers(ip_adapter)
    if not numbers:
        if _has(list(ip_adapter), "double_blocks", "single_blocks"):
            raise _not_an_adapter(list(ip_adapter))
        raise _refuse("an IP-Adapter-style file without per-layer image projections (no N.to_k_ip.weight keys)",
                      "It may be an image-projection-only export or damaged.")
    family = _family(image_proj)
    base = _base_model(len(numbers), in_dim)
    if family == "IP-Adapter FaceID-Plus" and base == "SDXL":
        _check_faceid_plus_sdxl(image_proj, ip_adapter, numbers, in_dim)
        return Detected(FACEID_PLUS_V2, layout, image_proj, ip_adapter)
    if family == "IP-Adapter FaceID-Plus":
        raise _refuse(f"IP-Adapter FaceID-Plus(-v2) for {base}",
                      "Use the SDXL version (ip-adapter-faceid-plusv2_sdxl.bin) with an SDXL model.")
    raise _refuse(f"{family} for {base}",
                  "Use it with an IP-Adapter node pack; Infinite-ID needs an identity adapter that combines "
                  "ArcFace and CLIP features.")
