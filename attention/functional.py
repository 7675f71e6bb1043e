"""The equations of Infinite-ID inference (docs/METHOD_NOTES.md, "Per layer") as plain torch functions.

Tensors are ``[batch, tokens, channels]`` with heads still merged into channels, the
layout ComfyUI's attention replacements receive. The attention kernel itself is passed
in (``attend(q, k, v)``), so this module stays free of ComfyUI and testable alone.
"""
from __future__ import annotations

import torch

ATTENTION_MODES = ("mixed", "mutual", "off")
ADAIN_MODES = ("off", "mean", "full")


def adain_mean(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``AdaIN_m(x, y) = x - mean(x) + mean(y)``: mean over tokens, per channel.

    Shifts the identity stream's features to the text stream's mean, which carries the
    prompt's style; the spread (and with it identity detail) is left alone. Written as
    one shift added to ``x`` so that equal streams stay bit-identical in fp16/bf16 (the
    shift is then exactly 0): at weight 0 the identity stream is the text stream.
    """
    return x + (ref.mean(dim=1, keepdim=True) - x.mean(dim=1, keepdim=True))


def adain_full(x: torch.Tensor, ref: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Classic AdaIN (mean and standard deviation over tokens, per channel).

    Offered for the paper's comparison: it transfers style more strongly and loses
    identity fidelity.
    """
    mean_x, mean_r = x.mean(dim=1, keepdim=True), ref.mean(dim=1, keepdim=True)
    std_x = x.var(dim=1, keepdim=True, unbiased=False).add(eps).sqrt()
    std_r = ref.var(dim=1, keepdim=True, unbiased=False).add(eps).sqrt()
    return (x - mean_x) / std_x * std_r + mean_r


def align_statistics(x: torch.Tensor, ref: torch.Tensor, adain: str) -> torch.Tensor:
    if adain == "mean":
        return adain_mean(x, ref)
    if adain == "full":
        return adain_full(x, ref)
    return x


def identity_self_attention_inputs(
    k_id: torch.Tensor, v_id: torch.Tensor, k_text: torch.Tensor, v_text: torch.Tensor,
    mode: str, adain: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values the identity stream's self-attention attends to.

    - ``mixed``: ``[AdaIN(K_id, K_t) ; K_t]`` and ``[AdaIN(V_id, V_t) ; V_t]`` along tokens;
    - ``mutual``: the text stream's ``K_t, V_t`` only (the paper's weaker ablation);
    - ``off``: the identity stream's own ``K_id, V_id`` (plain self-attention).
    """
    if mode == "mixed":
        k = torch.cat([align_statistics(k_id, k_text, adain), k_text], dim=1)
        v = torch.cat([align_statistics(v_id, v_text, adain), v_text], dim=1)
        return k, v
    if mode == "mutual":
        return k_text, v_text
    return k_id, v_id
