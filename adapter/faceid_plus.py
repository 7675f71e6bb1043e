"""The projection model of IP-Adapter FaceID-Plus-v2, written from its published architecture.

Why it is here: FaceID-Plus-v2 for SDXL is the public adapter closest to Infinite-ID's
identity encoder (ArcFace + CLIP ViT-H penultimate hidden states -> identity tokens), so
the pack can run it until native weights are trained. Module and parameter names are
chosen so that the file's ``image_proj`` state dict loads with its original key names:

- ``proj.0`` / ``proj.2``: ArcFace MLP ``512 -> 1024 -> num_tokens * dim`` (GELU between);
- ``norm``: LayerNorm over each of the ``num_tokens`` tokens;
- ``perceiver_resampler``: ``proj_in`` (CLIP width -> dim), ``layers.{i}.0`` attention
  (``norm1``, ``norm2``, ``to_q``, ``to_kv``, ``to_out``), ``layers.{i}.1`` feed-forward
  (``0`` LayerNorm, ``1`` and ``3`` bias-free Linears), ``proj_out``, ``norm_out``.

The resampler's queries are the ArcFace tokens; they attend to the CLIP hidden states and
to themselves. "v2" adds a shortcut: ``tokens = x + s_scale * resampler(x, clip)``.
The attention building blocks are shared with the native CLIP mapper (``native.py``).
"""
from __future__ import annotations

import torch
from torch import nn

ARCFACE_DIM = 512
FACEID_HEAD_DIM = 64  # the reference uses 64-wide heads, heads = dim // 64


class PerceiverAttention(nn.Module):
    """Latent queries attend to ``[features ; latents]`` (keys and values from both)."""

    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        inner = dim_head * heads
        self.dim_head, self.heads = dim_head, heads
        self.norm1 = nn.LayerNorm(dim)   # for the features
        self.norm2 = nn.LayerNorm(dim)   # for the latents
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.dim_head).transpose(1, 2)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        features, latents = self.norm1(features), self.norm2(latents)
        q = self._split(self.to_q(latents))
        k, v = (self._split(t) for t in self.to_kv(torch.cat([features, latents], dim=1)).chunk(2, dim=-1))
        # Scaling q and k by dim_head**-0.25 each before the product keeps fp16 logits finite.
        s = self.dim_head ** -0.25
        weights = torch.softmax(((q * s) @ (k * s).transpose(-1, -2)).float(), dim=-1).to(v.dtype)
        out = (weights @ v).transpose(1, 2).reshape(latents.shape[0], latents.shape[1], -1)
        return self.to_out(out)


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    """Pre-norm MLP; indices 0 (norm), 1 and 3 (bias-free Linears) are part of the key names."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


class PerceiverStack(nn.Module):
    """``proj_in`` -> ``depth`` x (attention + feed-forward, both residual) -> ``proj_out`` -> ``norm_out``.

    The queries come from the caller (ArcFace tokens for FaceID-Plus, learned queries for
    the native CLIP mapper), so the same stack serves both.
    """

    def __init__(self, dim: int, depth: int, dim_head: int, heads: int, embedding_dim: int,
                 output_dim: int, ff_mult: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), feed_forward(dim, ff_mult)])
            for _ in range(depth))

    def forward(self, latents: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        features = self.proj_in(features)
        for attention, ff in self.layers:
            latents = latents + attention(features, latents)
            latents = latents + ff(latents)
        return self.norm_out(self.proj_out(latents))


class FaceIDPlusProjection(nn.Module):
    """``mapper(face_embeds [n, 512], clip_hidden [n, T, clip_width]) -> [n, num_tokens, dim]``.

    Real FaceID-Plus-v2 SDXL: ``dim=2048, num_tokens=4, clip_width=1280, depth=4,
    heads=32, ff_mult=4, id_hidden=1024``. Every size is a parameter so tests can build a
    tiny one. ``shortcut`` is what makes it "v2"; ``s_scale`` weighs the CLIP branch
    (the reference's default is 1.0).
    """

    def __init__(self, dim: int = 2048, num_tokens: int = 4, clip_width: int = 1280, depth: int = 4,
                 heads: int | None = None, dim_head: int = FACEID_HEAD_DIM, ff_mult: int = 4,
                 id_dim: int = ARCFACE_DIM, id_hidden: int | None = None, shortcut: bool = True,
                 s_scale: float = 1.0) -> None:
        super().__init__()
        heads = heads if heads is not None else max(1, dim // dim_head)
        id_hidden = id_hidden if id_hidden is not None else 2 * id_dim
        self.dim, self.num_tokens = dim, num_tokens
        self.shortcut, self.s_scale = shortcut, s_scale
        self.proj = nn.Sequential(nn.Linear(id_dim, id_hidden), nn.GELU(), nn.Linear(id_hidden, dim * num_tokens))
        self.norm = nn.LayerNorm(dim)
        self.perceiver_resampler = PerceiverStack(dim, depth, dim_head, heads, clip_width, dim, ff_mult)

    def forward(self, face_embeds: torch.Tensor, clip_hidden: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.proj(face_embeds).reshape(-1, self.num_tokens, self.dim))
        out = self.perceiver_resampler(x, clip_hidden)
        return x + self.s_scale * out if self.shortcut else out


def faceid_plus_config(image_proj: dict[str, torch.Tensor]) -> dict:
    """Constructor arguments of ``FaceIDPlusProjection`` read from a state dict's shapes.

    Heads are not visible in the shapes; the reference always uses 64-wide heads, so
    ``heads = inner_width // 64`` (at least one head for tiny test models).
    """
    dim = image_proj["norm.weight"].shape[0]
    prefix = "perceiver_resampler."
    depth = len({k.split(".")[2] for k in image_proj if k.startswith(prefix + "layers.")})
    inner = image_proj[prefix + "layers.0.0.to_q.weight"].shape[0]
    dim_head = FACEID_HEAD_DIM if inner >= FACEID_HEAD_DIM else inner
    return {
        "dim": dim,
        "num_tokens": image_proj["proj.2.weight"].shape[0] // dim,
        "clip_width": image_proj[prefix + "proj_in.weight"].shape[1],
        "depth": depth,
        "heads": inner // dim_head,
        "dim_head": dim_head,
        "ff_mult": image_proj[prefix + "layers.0.1.1.weight"].shape[0] // dim,
        "id_dim": image_proj["proj.0.weight"].shape[1],
        "id_hidden": image_proj["proj.0.weight"].shape[0],
    }
