"""Both streams' attention for one U-Net call, on contiguous row blocks.

A call's batch is made of chunks (cond, uncond, ... as ComfyUI batches conditions); each
chunk holds the identity stream's rows and then the text stream's rows of that chunk.
``ChunkRows`` names those two blocks as slices, so every operation here works on views
of ``q``, ``k`` and ``v``: no index gathers, no scatters. The attention kernel is passed
in (``attend(q, k, v)``), which keeps this module plain torch.

The text block has as many rows as the identity block (one text row per identity row),
or a single row that every identity row of the chunk mixes with (a shared text stream:
all identity rows start from the same noise and conditioning).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .functional import identity_self_attention_inputs

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ChunkRows:
    """The rows of one condition chunk: ``kind`` 0 is cond, 1 uncond."""

    kind: int
    identity: slice
    text: slice | None   # None when the text stream is not computed in this call


def mixed_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunks: Sequence[ChunkRows],
                         mode: str, adain: str, attend: Attend) -> torch.Tensor:
    """Self-attention of a call in which both streams are computed.

    Text rows attend to themselves (plain SDXL); identity rows attend to the keys and
    values ``identity_self_attention_inputs`` gives for ``mode``/``adain``, built from
    their own and their paired text rows'. Returns the whole call's output in row order.
    """
    pieces = []
    for chunk in chunks:
        q_id, k_id, v_id = q[chunk.identity], k[chunk.identity], v[chunk.identity]
        q_t, k_t, v_t = q[chunk.text], k[chunk.text], v[chunk.text]
        text_out = attend(q_t, k_t, v_t)
        rows = q_id.shape[0]
        if mode == "mutual" and k_t.shape[0] == 1 and rows > 1:
            # Every identity row attends to the one text row's keys: one sequence of rows x tokens queries.
            id_out = attend(q_id.reshape(1, -1, q_id.shape[-1]), k_t, v_t).view_as(q_id)
        else:
            if k_t.shape[0] != rows:
                k_t, v_t = k_t.expand(rows, -1, -1), v_t.expand(rows, -1, -1)
            keys, values = identity_self_attention_inputs(k_id, v_id, k_t, v_t, mode, adain)
            id_out = attend(q_id, keys, values)
        pieces += [id_out.to(text_out.dtype), text_out]
    return torch.cat(pieces) if len(pieces) > 1 else pieces[0]


def add_identity_attention(out: torch.Tensor, q: torch.Tensor, chunks: Sequence[ChunkRows],
                           keys_values: Sequence[tuple[torch.Tensor, torch.Tensor]], weight: float, merge: bool,
                           attend: Attend) -> torch.Tensor:
    """Merge the identity's image attention into the identity rows of ``out``, in place.

    ``keys_values[kind]`` are the identity's image keys and values for cond (0) and
    uncond (1): ``[m, tokens, channels]`` with ``m`` 1 (one identity for every row) or
    the identity block's row count (one identity per row, e.g. a sweep). ``merge``
    adds ``weight`` times the image attention to the text attention (the paper);
    without it the image attention replaces the text attention, blended by ``weight``.
    Text rows are left alone.
    """
    for chunk in chunks:
        k_img, v_img = keys_values[chunk.kind]
        q_id = q[chunk.identity]
        block = out[chunk.identity]
        image = image_attention(q_id, k_img, v_img, attend).to(block.dtype)
        if merge:
            block.add_(image, alpha=weight)
        else:
            block.lerp_(image, weight)
    return out


def image_attention(q_id: torch.Tensor, k_img: torch.Tensor, v_img: torch.Tensor, attend: Attend) -> torch.Tensor:
    """Identity rows' attention over image tokens ``[1 or rows, tokens, channels]``."""
    if k_img.shape[0] == 1 and q_id.shape[0] > 1:
        # One identity for all rows: its queries form one sequence (cross-attention is per query).
        return attend(q_id.reshape(1, -1, q_id.shape[-1]), k_img, v_img).view_as(q_id)
    return attend(q_id, k_img, v_img)


def add_regional_identity_attention(out: torch.Tensor, q: torch.Tensor, chunks: Sequence[ChunkRows],
                                    keys_values: Sequence[tuple[torch.Tensor, torch.Tensor]],
                                    spans: Sequence[slice], weights: torch.Tensor, merge: bool,
                                    attend: Attend) -> torch.Tensor:
    """Several people's image attention, each added only where their mask is, in place.

    ``spans[r]`` is person ``r``'s share of the image tokens; each person gets their own
    softmax over their own tokens, so features never flow between people. ``weights[r]``
    is ``[1 or rows, query tokens, 1]``: that person's strength per query token (mask,
    overlap normalisation and weights already folded in). ``merge`` adds
    ``weights * image``; without it each person's image attention replaces the text
    attention by that share: ``text + sum_r weights_r * (image_r - text)``.
    """
    for chunk in chunks:
        k_img, v_img = keys_values[chunk.kind]
        q_id = q[chunk.identity]
        block = out[chunk.identity]
        text = None if merge else block.clone()
        for span, weight in zip(spans, weights):
            image = image_attention(q_id, k_img[:, span], v_img[:, span], attend).to(block.dtype)
            block.addcmul_(image if merge else image - text, weight)
    return out
