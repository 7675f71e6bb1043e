"""The training objective over ComfyUI's own U-Net: identity-only cross-attention, MSE.

The paper's recipe (docs/TRAINING.md, "The recipe"): the U-Net is frozen, its text cross-attention is **deactivated**
and no prompt is used; each cross-attention layer attends to the identity tokens
through the adapter's own projections, ``Attn(Q, W'k c_id, W'v c_id)``, in place of the
text attention. The loss is the ordinary noise-prediction MSE (for v-prediction
checkpoints, the v target the model was trained with).

How the patch reaches the U-Net: ComfyUI's ``attn2`` replacements receive the
projected query and the text keys/values and return the attention output; ours ignores
the text keys/values entirely, so the output and every gradient are independent of the
context tensor the U-Net still needs to be called with (a zero vector here). Self-
attention is replaced by torch's own SDPA: some attention backends ComfyUI can select
(SageAttention, some flash-attention builds) have no backward pass, and SDPA picks
memory-efficient kernels with a backward on every GPU.

The U-Net is called directly (``diffusion_model(x, t, context, y, transformer_options)``)
rather than through ``BaseModel.apply_model``, which returns the denoised image: turning
that back into a noise prediction divides by sigma and amplifies rounding at low noise.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from ..adapter.kv import IdentityKV
from ..host import compat
from ..unet.layers import SDXL_LAYERS, LayerKey

TOKENS_KEY = "infinite_id_training_tokens"
SDXL_SIZE_EMBEDDING = 6 * 256  # SDXL's six Fourier size/crop embeddings after the pooled text vector


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention on ``[batch, tokens, heads * dim]`` tensors with torch's SDPA."""
    b, _, inner = q.shape
    split = lambda t: t.reshape(b, -1, heads, inner // heads).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(b, -1, inner)


class SdpaSelfAttention:
    """``attn1`` replacement: plain self-attention through SDPA (needs a backward pass)."""

    def __call__(self, q, k, v, extra_options):
        return sdpa(q, k, v, extra_options["n_heads"])


class IdentityCrossAttention:
    """``attn2`` replacement of one layer: attention over the identity tokens only."""

    def __init__(self, kv: IdentityKV, layer: LayerKey) -> None:
        self.kv, self.index = kv, kv.layer_index[layer]
        self.calls = 0  # read by tests: every layer must be reached

    def __call__(self, q, k, v, extra_options):
        self.calls += 1
        tokens = extra_options[TOKENS_KEY]
        k_id = self.kv.to_k[self.index](tokens).to(q.dtype)
        v_id = self.kv.to_v[self.index](tokens).to(q.dtype)
        return sdpa(q, k_id, v_id, extra_options["n_heads"])


def _checkpointed(forward):
    """``forward`` recomputed in the backward pass instead of keeping its activations.

    ``transformer_options`` is copied at call time: the U-Net rewrites its ``block``
    entry for every block, and the recomputation must see the value the first pass saw
    (else the attention replacements would be looked up for the wrong layer).
    """
    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        args = tuple(dict(a) if isinstance(a, dict) else a for a in args)
        kwargs = {k: dict(v) if isinstance(v, dict) else v for k, v in kwargs.items()}
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return run


CHECKPOINTED_MODULES = ("ResBlock", "SpatialTransformer")


@contextlib.contextmanager
def gradient_checkpointing(diffusion_model: torch.nn.Module, enabled: bool = True) -> Iterator[int]:
    """Checkpoint every ResBlock and SpatialTransformer of the U-Net while the block runs.

    Installed on the module instances and removed afterwards, so the U-Net is left as
    it was (other code sharing it sees no change after training). Yields the count.
    Hosts that add transformer residuals in place (``compat.transformer_residuals_in_place``)
    always get their SpatialTransformers checkpointed, even with ``enabled`` off: it is
    the only way autograd can differentiate them.
    """
    kinds = CHECKPOINTED_MODULES if enabled else (
        ("SpatialTransformer",) if compat.transformer_residuals_in_place() else ())
    wrapped = []
    for module in diffusion_model.modules():
        if type(module).__name__ in kinds and "forward" not in vars(module):
            module.forward = _checkpointed(module.forward)
            wrapped.append(module)
    try:
        yield len(wrapped)
    finally:
        for module in wrapped:
            del module.forward


class IdentityObjective:
    """Noise-prediction loss of the frozen U-Net conditioned on identity tokens alone."""

    def __init__(self, model_patcher: Any, kv: IdentityKV, autocast_dtype: torch.dtype | None = None) -> None:
        import comfy.model_sampling

        self.autocast_dtype = autocast_dtype  # bf16/fp16 mixed precision; None: the U-Net's own dtype

        self.base = model_patcher.model
        self.unet = self.base.diffusion_model
        self.model_sampling = compat.model_sampling(model_patcher)
        if isinstance(self.model_sampling, comfy.model_sampling.V_PREDICTION):
            self.prediction = "v"
        elif isinstance(self.model_sampling, comfy.model_sampling.EPS):
            self.prediction = "eps"
        else:
            raise ValueError(f"checkpoint: this model predicts with {type(self.model_sampling).__name__}; training "
                             "supports SDXL checkpoints that predict noise (eps) or v")
        self.attn2 = {key: IdentityCrossAttention(kv, key) for key in SDXL_LAYERS}
        self.patches = {"attn1": {key: SdpaSelfAttention() for key in SDXL_LAYERS}, "attn2": self.attn2}
        first = self.unet.input_blocks[4][1].transformer_blocks[0].attn2
        self.context_dim = first.to_k.in_features
        label = getattr(self.unet, "label_emb", None)
        adm = label[0][0].in_features if label is not None else SDXL_SIZE_EMBEDDING
        self.pooled_dim = adm - SDXL_SIZE_EMBEDDING

    @property
    def num_timesteps(self) -> int:
        return int(self.model_sampling.sigmas.shape[0])

    def size_conditioning(self, sizes: list[dict[str, int]], resolution: int) -> torch.Tensor:
        """SDXL's ``y`` vector: a zero pooled text vector (no prompt) and the photo's size/crop."""
        rows = [self.base.encode_adm(pooled_output=torch.zeros(1, self.pooled_dim), width=s["width"],
                                     height=s["height"], crop_w=s["crop_w"], crop_h=s["crop_h"],
                                     target_width=resolution, target_height=resolution) for s in sizes]
        return torch.cat(rows)

    def loss(self, latents: torch.Tensor, tokens: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
             context: torch.Tensor | None = None, rows: slice | None = None, total: int | None = None
             ) -> torch.Tensor:
        """MSE of the U-Net's prediction for ``latents`` noised at random timesteps.

        ``latents`` are already in the model's latent space (``process_in``). Timesteps and
        noise come from ``generator`` (CPU), so a resumed run draws what the original would.
        ``context`` exists for the tests that prove it is ignored; training passes none.
        ``rows`` of a global batch of ``total`` (data-parallel ranks): the timesteps and
        noise of the whole global batch are drawn and this rank's rows taken, as in
        ``PairSampler.draw``.
        """
        batch, device = latents.shape[0], latents.device
        total = total or batch
        rows = rows or slice(0, batch)
        steps = torch.randint(0, self.num_timesteps, (total,), generator=generator)[rows]
        noise = torch.randn((total, *latents.shape[1:]), generator=generator, dtype=torch.float32)[rows].to(device)
        ms = self.model_sampling
        sigma = ms.sigmas.to(device)[steps.to(device)].float()
        x0 = latents.float()
        noisy = ms.calculate_input(sigma, x0 + noise * sigma.view(-1, 1, 1, 1))
        if context is None:
            context = torch.zeros(batch, 1, self.context_dim, device=device)
        dtype = self._input_dtype()
        noisy = noisy.to(dtype)
        options = {"patches_replace": self.patches, TOKENS_KEY: tokens}
        with torch.autocast(device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            pred = self.unet(noisy, ms.timestep(sigma).float(), context=context.to(device, dtype),
                             y=y.to(device, dtype), transformer_options=options)
        if self.prediction == "eps":
            target = noise
        else:
            scale = (sigma ** 2 + 1).rsqrt().view(-1, 1, 1, 1)
            target = (noise - sigma.view(-1, 1, 1, 1) * x0) * scale
        return F.mse_loss(pred.float(), target)

    def _input_dtype(self) -> torch.dtype:
        """Under autocast, float32 inputs (autocast casts per op); else the U-Net's compute dtype."""
        if self.autocast_dtype is not None:
            return torch.float32
        cast = getattr(self.base, "manual_cast_dtype", None)
        return cast if cast is not None else self.base.get_dtype()
