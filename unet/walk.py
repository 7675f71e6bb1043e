"""One walk over a ComfyUI U-Net's transformer layers, keyed as ComfyUI keys them.

ComfyUI numbers a block's transformer layers in module order and sends attention
replacements ``(block, block_index, transformer_index)``; adapters, the LoRA loader, the
trainer and the model patch all need the same numbering, so it is computed here only.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from .layers import SDXL_LAYERS, LayerKey


def transformer_layers(diffusion_model: torch.nn.Module) -> Iterator[tuple[LayerKey, str, torch.nn.Module]]:
    """``(key, state-dict path, module)`` of every transformer layer (a module with ``attn1`` and ``attn2``)."""
    groups = (("input", "input_blocks.{}", getattr(diffusion_model, "input_blocks", [])),
              ("middle", "middle_block", [getattr(diffusion_model, "middle_block", torch.nn.Identity())]),
              ("output", "output_blocks.{}", getattr(diffusion_model, "output_blocks", [])))
    for name, prefix, blocks in groups:
        for index, block in enumerate(blocks):
            t = 0
            for sub, module in block.named_modules():
                if hasattr(module, "attn1") and hasattr(module, "attn2"):
                    yield (name, index, t), f"{prefix.format(index)}.{sub}", module
                    t += 1


def cross_attention_widths(diffusion_model: torch.nn.Module) -> dict[LayerKey, tuple[int, int]]:
    """``(inner width, context width)`` of every cross-attention layer."""
    return {key: (module.attn2.to_q.out_features, module.attn2.to_k.in_features)
            for key, _, module in transformer_layers(diffusion_model)}


def sdxl_widths(diffusion_model: torch.nn.Module) -> dict[LayerKey, tuple[int, int]]:
    """:func:`cross_attention_widths` of a U-Net that has all of SDXL's layers.

    The one SDXL-shape check, shared by the model patch (a MODEL given to Apply) and the
    trainer (its checkpoint): a ``ValueError`` naming how many layers are missing and
    the first, which the caller prefixes with its input's name.
    """
    widths = cross_attention_widths(diffusion_model)
    missing = [key for key in SDXL_LAYERS if key not in widths]
    if missing:
        raise ValueError(f"not SDXL-shaped: {len(missing)} of SDXL's {len(SDXL_LAYERS)} cross-attention layers are "
                         f"missing (first: {missing[0]}). Infinite-ID adapters are for SDXL models.")
    return widths


def transformer_paths(diffusion_model: torch.nn.Module) -> dict[LayerKey, str]:
    """State-dict path of every transformer layer."""
    return {key: path for key, path, _ in transformer_layers(diffusion_model)}
