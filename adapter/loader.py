"""Load an adapter file of any supported format into an ``Adapter``.

Why one entry point: the node, the training script and tests all load files the same
way, with the same safety rule (no pickle code execution: ``.bin`` files go only through
``torch.load(weights_only=True)``, which ComfyUI's ``load_torch_file(safe_load=True)``
uses on every supported host) and the same format detection by keys and shapes.

FaceID-Plus-v2 inputs, from the reference pipeline (tencent-ailab/IP-Adapter,
``ip_adapter/ip_adapter_faceid.py``, ``IPAdapterFaceIDPlus.get_image_embeds``) and its
wiki page "IP-Adapter-Face": the ArcFace embedding is insightface's ``normed_embedding``
(unit length; the wiki stresses that the normalised embedding is required); CLIP is
OpenCLIP ViT-H/14 on the ArcFace-aligned 224 px face crop, ``hidden_states[-2]``
(penultimate, 1280-d, 257 tokens); the unconditional tokens come from a zero ArcFace
embedding and the CLIP hidden states of an all-zero *normalised* pixel tensor
(``torch.zeros_like(clip_image)``); SDXL uses ``shortcut=True`` ("v2") with ``s_scale`` 1.
"""
from __future__ import annotations

import logging
import os

from ..unet.layers import SDXL_LAYERS, adapter_layer_number
from .detect import FACEID_PLUS_V2, NATIVE, Detected, UnsupportedAdapterError, detect_format
from .faceid_plus import FaceIDPlusProjection, faceid_plus_config
from .lora import extract_lora
from .model import Adapter
from .native import identity_kv_from_weights, load_native, module_from_state

log = logging.getLogger(__name__)


def read_metadata(path: str) -> dict[str, str]:
    """Safetensors header metadata (``{}`` for other files or files without any)."""
    if not path.lower().endswith(".safetensors"):
        return {}
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as f:
        return dict(f.metadata() or {})


def read_state_dict(path: str) -> dict:
    """Tensors of ``path`` through the host's loader, never unpickling code."""
    import comfy.utils

    try:
        sd = comfy.utils.load_torch_file(path, safe_load=True)
    except Exception as exc:  # pickle refusals, truncated files, foreign formats
        kind = type(exc).__name__
        raise ValueError(f"could not read '{os.path.basename(path)}' as a weights file ({kind}: {exc}). Legacy "
                         ".bin files are read with torch.load(weights_only=True), which refuses files that "
                         "contain code; the file may also be truncated. Re-download it or use a "
                         ".safetensors version.") from exc
    if not isinstance(sd, dict):
        raise UnsupportedAdapterError(f"'{os.path.basename(path)}' holds a {type(sd).__name__}, not a dict of "
                                      "tensors; it is not an adapter")
    return sd


def load_adapter_file(path: str) -> Adapter:
    """Read, recognise and build the adapter stored at ``path``."""
    adapter = load_adapter_state(read_state_dict(path), read_metadata(path), name=os.path.basename(path))
    log.info("loaded %s adapter '%s': %s tokens of %s, LoRA tensors: %d", adapter.info["format"], adapter.name,
             adapter.info["num_tokens"], adapter.info["token_dim"], len(adapter.lora))
    return adapter


def check_finite_tensors(tensors: dict, name: str, prefix: str = "") -> None:
    """Refuse a file whose weights hold NaN or inf, naming the first such tensor.

    Why at load: a non-finite key/value or LoRA weight turns every image black (NaN)
    with no error anywhere downstream; the file is damaged and only the loader can say
    which one. Meta-device tensors (shape-only tests) carry no values and are skipped.
    """
    import torch

    for key, value in tensors.items():
        if isinstance(value, dict):
            check_finite_tensors(value, name, f"{prefix}{key}.")
        elif (isinstance(value, torch.Tensor) and value.is_floating_point() and not value.is_meta
              and not bool(torch.isfinite(value).all())):
            bad = int((~torch.isfinite(value)).sum())
            raise ValueError(f"'{name}' is damaged: tensor '{prefix}{key}' holds {bad} NaN or infinite value(s) of "
                             f"{value.numel()}; download the file again (or, for your own training, use an earlier "
                             f"checkpoint)")


def load_adapter_state(sd: dict, metadata: dict | None = None, name: str = "adapter") -> Adapter:
    """An ``Adapter`` from loaded tensors; works on meta-device tensors too (nothing is copied)."""
    kind = "known"
    try:
        found = detect_format(sd, metadata)
        kind = found.kind
        check_finite_tensors(found.image_proj, name, "image_proj." if found.layout != "native" else "")
        check_finite_tensors(found.ip_adapter, name, "ip_adapter." if found.layout != "native" else "")
        if found.kind == NATIVE:
            return load_native(found.ip_adapter, metadata or {}, name=name)
        if found.kind == FACEID_PLUS_V2:
            return _faceid_plus_v2(found, name)
    except (KeyError, IndexError, AttributeError, RuntimeError, TypeError) as exc:
        # A recognised layout with a missing or misshapen tensor: say so instead of crashing.
        raise UnsupportedAdapterError(f"'{name}' looks like a {kind} adapter but is incomplete or damaged "
                                      f"({type(exc).__name__}: {exc}); download it again") from exc
    raise UnsupportedAdapterError(f"unhandled adapter format {found.kind!r}")  # detect_format knows no others


def _faceid_plus_v2(found: Detected, name: str) -> Adapter:
    """FaceID-Plus-v2 SDXL: ``image_proj`` -> mapper, ``{n}.to_k_ip/to_v_ip`` -> the 70 layers, LoRA kept aside.

    ``ip_adapter`` numbers ``n = 2 * i + 1`` belong to ``SDXL_LAYERS[i]`` (diffusers order:
    down blocks = ComfyUI input 4, 5, 7, 8; up blocks = output 0..5; middle block last
    = ComfyUI ``("middle", 0)``).
    """
    config = faceid_plus_config(found.image_proj)
    mapper = module_from_state(lambda device: FaceIDPlusProjection(**config), found.image_proj)
    to_k = [found.ip_adapter[f"{adapter_layer_number(i)}.to_k_ip.weight"] for i in range(len(SDXL_LAYERS))]
    to_v = [found.ip_adapter[f"{adapter_layer_number(i)}.to_v_ip.weight"] for i in range(len(SDXL_LAYERS))]
    kv = identity_kv_from_weights(to_k, to_v)
    lora = extract_lora(found.ip_adapter)
    if not lora:
        log.warning("adapter '%s' carries no LoRA. FaceID-Plus-v2 was trained with one: load "
                    "ip-adapter-faceid-plusv2_sdxl_lora.safetensors with 'LoraLoaderModelOnly' for full fidelity.",
                    name)
    info = {"format": FACEID_PLUS_V2, "num_tokens": config["num_tokens"], "token_dim": config["dim"],
            "clip_layer": "penultimate", "clip_width": config["clip_width"], "face_embedding": "normalized",
            "base_model": "sdxl", "shortcut": True, "s_scale": 1.0, "layout": found.layout,
            "uncond_face": "zeros", "uncond_clip_pixels": "zeros", "has_lora": bool(lora)}
    return Adapter(kv=kv, mapper=mapper, name=name, info=info, lora=lora)

