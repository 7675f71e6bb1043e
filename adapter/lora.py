"""The LoRA that IP-Adapter FaceID(-Plus-v2) was trained with, applied through ComfyUI's own patching.

Why: FaceID-Plus-v2 was trained together with a rank-128 LoRA on every attention
projection of the U-Net; without it identity fidelity drops. The adapter ``.bin``
carries it inside ``ip_adapter`` as ``{n}.to_q_lora.down.weight`` / ``.up.weight`` (and
``to_k``, ``to_v``, ``to_out``), ``n`` numbering ALL attention processors in diffusers
order: ``2 * i`` is the self-attention (attn1) and ``2 * i + 1`` the cross-attention
(attn2) of ``SDXL_LAYERS[i]``. Its scale is 1 (no alpha): ``W + up @ down``.

The tensors keep those names; ``comfy.lora.load_lora`` reads them as diffusers-style
``{x}_lora.up.weight`` on every supported host, given a key map from ``{n}.to_q`` to the
U-Net weight it patches. The host then builds its own patch objects (the tuple format
changed between hosts) and applies, offloads and removes them like any LoRA.
"""
from __future__ import annotations

import logging
import re

import torch

from ..unet.layers import SDXL_LAYERS
from ..unet.walk import transformer_paths
from .model import Adapter

log = logging.getLogger(__name__)

PROJECTIONS = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_LORA_KEY = re.compile(r"^(\d+)\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


def extract_lora(ip_adapter: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The LoRA tensors among an ``ip_adapter`` state dict (empty when it has none)."""
    lora = {k: v for k, v in ip_adapter.items() if _LORA_KEY.match(k)}
    odd = [k for k in ip_adapter if "_lora." in k and k not in lora]
    if odd:
        log.warning("ignoring %d LoRA tensors with unexpected names (first: %s)", len(odd), odd[0])
    processors = {int(_LORA_KEY.match(k).group(1)) for k in lora}
    if processors and max(processors) >= 2 * len(SDXL_LAYERS):
        raise ValueError(f"the adapter's LoRA addresses attention processor {max(processors)}, but SDXL has "
                         f"{2 * len(SDXL_LAYERS)}: this LoRA is not for SDXL")
    return lora


def lora_key_map(diffusion_model: torch.nn.Module, lora: dict[str, torch.Tensor]) -> dict[str, str]:
    """``{"{n}.to_q": "diffusion_model.<block>.attn1.to_q.weight", ...}`` for every LoRA target."""
    paths = transformer_paths(diffusion_model)
    missing = [key for key in SDXL_LAYERS if key not in paths]
    if missing:
        raise ValueError(f"this MODEL is not SDXL-shaped ({len(missing)} of 70 transformer layers missing, first "
                         f"{missing[0]}); the adapter's LoRA is for SDXL")
    key_map: dict[str, str] = {}
    for key in lora:
        n, proj = int(_LORA_KEY.match(key).group(1)), _LORA_KEY.match(key).group(2)
        attn = "attn1" if n % 2 == 0 else "attn2"
        key_map[f"{n}.{proj}"] = f"diffusion_model.{paths[SDXL_LAYERS[n // 2]]}.{attn}.{PROJECTIONS[proj]}.weight"
    return key_map


def check_lora_shapes(model_state_shapes: dict[str, torch.Size], lora: dict[str, torch.Tensor],
                      key_map: dict[str, str]) -> None:
    """Each ``up @ down`` must have the shape of the weight it patches; say which one does not."""
    for x, target in key_map.items():
        shape = model_state_shapes.get(target)
        down, up = lora[f"{x}_lora.down.weight"], lora[f"{x}_lora.up.weight"]
        if shape is None:
            raise ValueError(f"the adapter's LoRA targets {target}, which this MODEL does not have")
        if (up.shape[0], down.shape[1]) != tuple(shape[:2]) or up.shape[1] != down.shape[0]:
            raise ValueError(f"the adapter's LoRA for {target} is {up.shape[0]}x{down.shape[1]} but the MODEL's "
                             f"weight is {tuple(shape)}: adapter and model are for different base models")


def apply_adapter_lora(model_patcher, adapter: Adapter, strength: float = 1.0):
    """A clone of ``model_patcher`` with the adapter's own LoRA added at ``strength``.

    A no-op clone when the adapter carries no LoRA or ``strength`` is 0 (nothing is
    added, so the weights stay bit-identical). The LoRA changes the whole U-Net, both
    Infinite-ID streams included, exactly as the reference pipeline runs it.
    """
    lora = getattr(adapter, "lora", None) or {}
    patched = model_patcher.clone()
    if not lora or strength == 0.0:
        return patched
    import comfy.lora

    diffusion_model = model_patcher.model.diffusion_model
    key_map = lora_key_map(diffusion_model, lora)
    shapes = {k: v.shape for k, v in model_patcher.model.state_dict().items() if k in set(key_map.values())}
    check_lora_shapes(shapes, lora, key_map)
    patches = comfy.lora.load_lora(lora, key_map)
    added = patched.add_patches(patches, strength)
    if len(added) != len(patches):
        raise ValueError(f"only {len(added)} of the adapter's {len(patches)} LoRA patches fit this MODEL")
    log.info("applied the LoRA of adapter '%s' to %d U-Net weights at strength %s", adapter.name, len(added), strength)
    return patched
