"""The native Infinite-ID adapter format (layout in docs/ADAPTER_FORMAT.md).

Why a format of our own: the paper publishes no weights and no mapper sizes, so the
file must say how it was built. A native file is a safetensors file whose metadata
carries ``format=infinite-id`` and every size the loader needs; the tensors are

- ``face_mapper.*``: ArcFace MLP ``512 -> hidden -> face_tokens * token_dim`` + LayerNorm;
- ``clip_mapper.*``: learned queries cross-attending to the CLIP hidden states
  (the same perceiver stack as FaceID-Plus, ``proj_in`` from ``clip_width``);
- ``ip.{n}.to_k.weight`` / ``ip.{n}.to_v.weight``: the per-layer image key/value
  projections, ``n = 1, 3, ..., 139`` in diffusers attention-processor order.

Identity tokens are ``c_id = concat(clip_mapper(clip), face_mapper(arcface))`` along the
token axis (docs/ADAPTER_FORMAT.md), CLIP tokens first.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
from torch import nn

from ..unet.layers import SDXL_LAYERS, adapter_layer_number
from .faceid_plus import ARCFACE_DIM, PerceiverStack
from .kv import IdentityKV
from .model import Adapter

log = logging.getLogger(__name__)

FORMAT = "infinite-id"
FORMAT_VERSION = "1"
# Widths of SDXL's 70 cross-attention layers in SDXL_LAYERS order.
SDXL_LAYER_WIDTHS: list[int] = [640 if (b, i) in {("input", 4), ("input", 5), ("output", 3), ("output", 4),
                                                   ("output", 5)} else 1280 for b, i, _ in SDXL_LAYERS]
_INT_FIELDS = ("token_dim", "clip_width", "face_tokens", "clip_tokens", "face_embedding_dim",
               "clip_mapper_heads", "clip_mapper_dim_head", "layers")


class FaceMapper(nn.Module):
    """ArcFace embedding -> ``tokens`` identity tokens (``net.0``, ``net.2``, ``norm``)."""

    def __init__(self, tokens: int, token_dim: int, hidden: int, in_dim: int = ARCFACE_DIM) -> None:
        super().__init__()
        self.tokens, self.token_dim = tokens, token_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, tokens * token_dim))
        self.norm = nn.LayerNorm(token_dim)

    def forward(self, face_embeds: torch.Tensor) -> torch.Tensor:
        return self.norm(self.net(face_embeds).reshape(-1, self.tokens, self.token_dim))


class ClipMapper(nn.Module):
    """Learned ``queries`` [1, tokens, dim] read the CLIP hidden states through a perceiver stack."""

    def __init__(self, tokens: int, token_dim: int, clip_width: int, dim: int, depth: int, heads: int,
                 dim_head: int, ff_mult: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(1, tokens, dim) / dim ** 0.5)
        self.resampler = PerceiverStack(dim, depth, dim_head, heads, clip_width, token_dim, ff_mult)

    def forward(self, clip_hidden: torch.Tensor) -> torch.Tensor:
        return self.resampler(self.queries.expand(clip_hidden.shape[0], -1, -1), clip_hidden)


class NativeMapper(nn.Module):
    """``mapper(face_embeds, clip_hidden) = concat(clip_mapper(clip_hidden), face_mapper(face_embeds))``."""

    def __init__(self, face_mapper: FaceMapper, clip_mapper: ClipMapper) -> None:
        super().__init__()
        self.face_mapper, self.clip_mapper = face_mapper, clip_mapper

    def forward(self, face_embeds: torch.Tensor, clip_hidden: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.clip_mapper(clip_hidden), self.face_mapper(face_embeds)], dim=1)


def module_from_state(factory: Callable[[str], nn.Module], state: dict[str, torch.Tensor]) -> nn.Module:
    """Build ``factory(device)`` and adopt ``state``'s tensors as its parameters (no copy).

    The module is built on the meta device and the loaded tensors are assigned, so a
    real-size adapter costs its file's memory once, and meta-device state dicts stay on
    meta (the shape-only tests). Torch older than 2.1 has no ``assign``: copy instead.
    """
    with torch.device("meta"):
        module = factory("meta")
    try:
        missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    except TypeError:  # torch < 2.1
        module = factory("cpu")
        missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"adapter weights do not fit the expected layout: missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}")
    return module.eval().requires_grad_(False)


def identity_kv_from_weights(to_k: list[torch.Tensor], to_v: list[torch.Tensor]) -> IdentityKV:
    """``IdentityKV`` adopting per-layer ``[width, token_dim]`` key/value weights (SDXL_LAYERS order)."""
    token_dim = to_k[0].shape[1]
    bad = [i for i, (k, v) in enumerate(zip(to_k, to_v)) if k.shape[1] != token_dim or k.shape != v.shape]
    if bad:
        raise ValueError(f"image key/value projection of layer {adapter_layer_number(bad[0])} has shape "
                         f"{tuple(to_k[bad[0]].shape)}/{tuple(to_v[bad[0]].shape)}; expected "
                         f"[width, {token_dim}] for both")
    widths = [k.shape[0] for k in to_k]
    state = {f"to_k.{i}.weight": k for i, k in enumerate(to_k)}
    state.update({f"to_v.{i}.weight": v for i, v in enumerate(to_v)})
    return module_from_state(lambda device: IdentityKV(token_dim, widths, dtype=to_k[0].dtype, device=device), state)


def build_native_adapter(layer_widths: list[int] | None = None, token_dim: int = 2048, clip_width: int = 1280,
                         face_tokens: int = 4, clip_tokens: int = 4, face_hidden: int = 1024,
                         clip_dim: int = 1024, clip_depth: int = 4, clip_heads: int = 16,
                         clip_dim_head: int = 64, ff_mult: int = 4, seed: int | None = None,
                         dtype: torch.dtype = torch.float32, name: str = "infinite-id") -> Adapter:
    """A freshly initialised native adapter of any size (for training, tests and demos).

    ``layer_widths`` defaults to real SDXL's. Token counts and mapper sizes are our
    decision (the paper publishes none): 4 CLIP + 4 face tokens by default.
    """
    if seed is not None:
        torch.manual_seed(seed)
    widths = list(layer_widths) if layer_widths is not None else list(SDXL_LAYER_WIDTHS)
    mapper = NativeMapper(
        FaceMapper(face_tokens, token_dim, face_hidden),
        ClipMapper(clip_tokens, token_dim, clip_width, clip_dim, clip_depth, clip_heads, clip_dim_head, ff_mult))
    kv = IdentityKV(token_dim, widths, dtype=dtype)
    info = {"format": FORMAT, "num_tokens": clip_tokens + face_tokens, "token_dim": token_dim,
            "clip_layer": "penultimate", "clip_width": clip_width, "face_embedding": "normalized",
            "base_model": "sdxl", "face_tokens": face_tokens, "clip_tokens": clip_tokens,
            "face_mapper": "mlp", "clip_mapper": "resampler", "clip_mapper_heads": clip_heads,
            "clip_mapper_dim_head": clip_dim_head, "uncond_face": "zeros", "uncond_clip_pixels": "zeros"}
    return Adapter(kv=kv, mapper=mapper.to(dtype).eval(), name=name, info=info)


def native_metadata(adapter: Adapter) -> dict[str, str]:
    """The safetensors metadata of ``adapter`` (every value a string, as safetensors requires)."""
    info = adapter.info
    mapper = adapter.mapper
    if not isinstance(mapper, NativeMapper):
        raise ValueError(f"adapter '{adapter.name}' has no native mappers (format {info.get('format')!r}); "
                         "only native adapters can be saved in the native format")
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "base_model": str(info.get("base_model", "sdxl")),
            "token_dim": str(adapter.token_dim), "clip_width": str(info["clip_width"]),
            "clip_layer": str(info.get("clip_layer", "penultimate")),
            "face_embedding": str(info.get("face_embedding", "normalized")), "face_embedding_dim": str(ARCFACE_DIM),
            "face_tokens": str(mapper.face_mapper.tokens), "clip_tokens": str(mapper.clip_mapper.queries.shape[1]),
            "face_mapper": "mlp", "clip_mapper": "resampler", "token_order": "clip,face",
            "clip_mapper_heads": str(info["clip_mapper_heads"]),
            "clip_mapper_dim_head": str(info["clip_mapper_dim_head"]), "layers": str(len(adapter.kv.to_k)),
            "uncond_face": str(info.get("uncond_face", "zeros")),
            "uncond_clip_pixels": str(info.get("uncond_clip_pixels", "zeros"))}
    return meta


def native_state_dict(adapter: Adapter) -> dict[str, torch.Tensor]:
    """Tensors of ``adapter`` under the native key names (contiguous, detached)."""
    state = {f"{k}": v for k, v in adapter.mapper.state_dict().items()}
    for i in range(len(adapter.kv.to_k)):
        n = adapter_layer_number(i)
        state[f"ip.{n}.to_k.weight"] = adapter.kv.to_k[i].weight
        state[f"ip.{n}.to_v.weight"] = adapter.kv.to_v[i].weight
    return {k: v.detach().contiguous() for k, v in state.items()}


def save_native(path: str, adapter: Adapter, extra_metadata: dict[str, str] | None = None) -> None:
    """Write ``adapter`` as a native ``.safetensors`` file.

    ``extra_metadata`` (e.g. training provenance) is stored beside the format fields,
    which it may not override; loaders ignore fields they do not know.
    """
    import safetensors.torch

    meta = native_metadata(adapter)
    clash = sorted(set(extra_metadata or {}) & set(meta))
    if clash:
        raise ValueError(f"extra metadata may not override the format fields {clash}")
    meta.update({k: str(v) for k, v in (extra_metadata or {}).items()})
    partial = f"{path}.partial"  # written whole, then renamed: a crash never leaves half a file
    safetensors.torch.save_file(native_state_dict(adapter), partial, metadata=meta)
    os.replace(partial, path)
    log.info("saved native Infinite-ID adapter '%s' (%s tokens) to %s", adapter.name,
             int(meta["face_tokens"]) + int(meta["clip_tokens"]), path)


def _metadata_ints(metadata: dict[str, str]) -> dict[str, int]:
    missing = [k for k in _INT_FIELDS if k not in metadata]
    if missing:
        raise ValueError(f"native Infinite-ID adapter metadata lacks {', '.join(missing)}; the file is damaged or "
                         "was re-saved without its metadata")
    try:
        return {k: int(metadata[k]) for k in _INT_FIELDS}
    except ValueError as exc:
        raise ValueError(f"native Infinite-ID adapter metadata has a non-integer size: {exc}") from exc


def load_native(state_dict: dict[str, torch.Tensor], metadata: dict[str, str], name: str = "adapter") -> Adapter:
    """An ``Adapter`` from a native file's tensors and metadata (tensors adopted, not copied)."""
    if metadata.get("format") != FORMAT:
        raise ValueError(f"not a native Infinite-ID adapter (metadata format={metadata.get('format')!r})")
    if metadata.get("face_mapper", "mlp") != "mlp" or metadata.get("clip_mapper", "resampler") != "resampler":
        raise ValueError(f"native adapter uses mapper kinds face_mapper={metadata.get('face_mapper')!r}, "
                         f"clip_mapper={metadata.get('clip_mapper')!r}; this version of the pack knows 'mlp' and "
                         "'resampler'. Update the pack.")
    sizes = _metadata_ints(metadata)
    if sizes["layers"] != len(SDXL_LAYERS):
        raise ValueError(f"native adapter has {sizes['layers']} layers; SDXL has {len(SDXL_LAYERS)}")
    to_k, to_v = [], []
    for i in range(len(SDXL_LAYERS)):
        n = adapter_layer_number(i)
        if f"ip.{n}.to_k.weight" not in state_dict or f"ip.{n}.to_v.weight" not in state_dict:
            raise ValueError(f"native adapter lacks the image key/value projections of layer ip.{n}")
        to_k.append(state_dict[f"ip.{n}.to_k.weight"])
        to_v.append(state_dict[f"ip.{n}.to_v.weight"])
    kv = identity_kv_from_weights(to_k, to_v)
    token_dim = sizes["token_dim"]
    if kv.token_dim != token_dim:
        raise ValueError(f"native adapter metadata says token_dim={token_dim} but its projections take {kv.token_dim}")
    mapper_state = {k: v for k, v in state_dict.items() if k.startswith(("face_mapper.", "clip_mapper."))}
    face_hidden = mapper_state["face_mapper.net.0.weight"].shape[0]
    clip_dim = mapper_state["clip_mapper.queries"].shape[2]
    depth = len({k.split(".")[3] for k in mapper_state if k.startswith("clip_mapper.resampler.layers.")})
    ff_mult = mapper_state["clip_mapper.resampler.layers.0.1.1.weight"].shape[0] // clip_dim
    mapper = module_from_state(lambda device: NativeMapper(
        FaceMapper(sizes["face_tokens"], token_dim, face_hidden, sizes["face_embedding_dim"]),
        ClipMapper(sizes["clip_tokens"], token_dim, sizes["clip_width"], clip_dim, depth, sizes["clip_mapper_heads"],
                   sizes["clip_mapper_dim_head"], ff_mult)), mapper_state)
    info = {"format": FORMAT, "num_tokens": sizes["clip_tokens"] + sizes["face_tokens"], "token_dim": token_dim,
            "clip_layer": metadata.get("clip_layer", "penultimate"), "clip_width": sizes["clip_width"],
            "face_embedding": metadata.get("face_embedding", "normalized"),
            "base_model": metadata.get("base_model", "sdxl"), "face_tokens": sizes["face_tokens"],
            "clip_tokens": sizes["clip_tokens"], "face_mapper": "mlp", "clip_mapper": "resampler",
            "clip_mapper_heads": sizes["clip_mapper_heads"], "clip_mapper_dim_head": sizes["clip_mapper_dim_head"],
            "uncond_face": metadata.get("uncond_face", "zeros"),
            "uncond_clip_pixels": metadata.get("uncond_clip_pixels", "zeros")}
    return Adapter(kv=kv, mapper=mapper, name=name, info=info)
