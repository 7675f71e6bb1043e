"""The object that travels between nodes as ``INFINITEID_ADAPTER``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .kv import IdentityKV


@dataclass
class Adapter:
    """An identity adapter: the mappers that turn face features into identity tokens and
    the per-layer image key/value projections that attend to them.

    ``mapper`` is a module called as ``mapper(face_embeds, clip_hidden)`` with
    ``face_embeds`` ``[n, 512]`` (ArcFace) and ``clip_hidden`` ``[n, tokens, width]``
    (CLIP vision hidden states); it returns ``[n, num_tokens, token_dim]``. ``info``
    records how the inputs must be prepared:

    - ``format``: ``"infinite-id"`` (native), ``"faceid-plus-v2"``, ``"demo"``;
    - ``num_tokens``, ``token_dim``;
    - ``clip_layer``: ``"penultimate"`` or ``"last"`` hidden states;
    - ``clip_width``: the CLIP vision hidden size the mapper expects;
    - ``face_embedding``: ``"normalized"`` (unit ArcFace vector) or ``"raw"``;
    - ``base_model``: ``"sdxl"``.

    ``lora`` holds the U-Net LoRA an adapter was trained with, if any (FaceID-Plus-v2),
    in its file's names ``{n}.to_q_lora.down.weight`` ...; ``adapter/lora.py`` applies it.
    """

    kv: IdentityKV
    mapper: torch.nn.Module | None = None
    name: str = "adapter"
    info: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, torch.Tensor] = field(default_factory=dict)

    def encode_tokens(self, face_embeds: torch.Tensor, clip_hidden: torch.Tensor) -> torch.Tensor:
        """Identity tokens from prepared features (see ``info`` for how to prepare them)."""
        if self.mapper is None:
            raise ValueError(f"adapter '{self.name}' has no mappers; it cannot encode an identity")
        param = next(self.mapper.parameters(), None)
        dtype = param.dtype if param is not None else face_embeds.dtype
        device = param.device if param is not None else face_embeds.device
        with torch.no_grad():
            return self.mapper(face_embeds.to(device, dtype), clip_hidden.to(device, dtype)).float().cpu()

    @property
    def token_dim(self) -> int:
        return self.kv.token_dim
