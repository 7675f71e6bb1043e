"""A second, plain implementation of Infinite-ID dual-stream sampling, for tests only.

It shares nothing with the pack's patch code. Each model evaluation is done as separate
U-Net passes through the host's ``BaseModel.apply_model``:

1. a text pass on the text-stream latent, during which forward hooks on every
   transformer layer's ``attn1.to_k`` / ``attn1.to_v`` record the self-attention keys
   and values ``K_t``, ``V_t``;
2. an identity pass on the identity-stream latent, during which the ``forward`` of every
   ``attn1`` / ``attn2`` module is temporarily replaced by the equations of
   docs/METHOD_NOTES.md ("Per layer"), written with ``torch.nn.functional.scaled_dot_product_attention`` and
   reading the recorded ``K_t``, ``V_t``.

Each pass holds the cond rows then the uncond rows; classifier-free guidance, the
noise scaling and the euler / heun loops are written out here from the k-diffusion
formulas. Only the sigmas, the initial noise and the latent scaling come from the host.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Adapter order of the 70 cross-attention layers (diffusers' processor order: down
# blocks, up blocks, then the middle block), written out independently of the pack.
ADAPTER_ORDER = (
    [("input", 4, t) for t in range(2)] + [("input", 5, t) for t in range(2)]
    + [("input", 7, t) for t in range(10)] + [("input", 8, t) for t in range(10)]
    + [("output", b, t) for b in (0, 1, 2) for t in range(10)]
    + [("output", b, t) for b in (3, 4, 5) for t in range(2)]
    + [("middle", 0, t) for t in range(10)]
)


@dataclass
class RefSettings:
    weight: float = 1.0
    attention_mode: str = "mixed"   # mixed | mutual | off
    merge: bool = True
    adain: str = "off"              # off | mean | full
    start_percent: float = 0.0      # window of the image cross-attention
    end_percent: float = 1.0
    mix_start_percent: float = 0.0
    mix_end_percent: float = 1.0


def transformer_layers(unet: torch.nn.Module) -> dict:
    """``(block, index, t) -> BasicTransformerBlock`` by walking the real module tree."""
    layers = {}
    groups = [("input", unet.input_blocks), ("middle", [unet.middle_block]), ("output", unet.output_blocks)]
    for name, blocks in groups:
        for index, block in enumerate(blocks):
            t = 0
            for module in block.modules():
                if type(module).__name__ == "BasicTransformerBlock":
                    layers[(name, index, t)] = module
                    t += 1
    return layers


def mha(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head softmax attention on ``[b, tokens, heads * d]`` tensors."""
    b, nq, c = q.shape
    d = c // heads

    def split(x):
        return x.reshape(x.shape[0], x.shape[1], heads, d).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(b, nq, c)


def adain(x: torch.Tensor, ref: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "off":
        return x
    mx, mr = x.mean(dim=1, keepdim=True), ref.mean(dim=1, keepdim=True)
    if mode == "mean":
        return x - mx + mr
    assert mode == "full"
    sx = torch.sqrt(((x - mx) ** 2).mean(dim=1, keepdim=True) + 1e-5)
    sr = torch.sqrt(((ref - mr) ** 2).mean(dim=1, keepdim=True) + 1e-5)
    return (x - mx) / sx * sr + mr


class Reference:
    """Plain two-pass dual-stream sampler around a ComfyUI ``ModelPatcher``'s model."""

    def __init__(self, model_patcher, adapter_kv=None, identity=None, settings: RefSettings | None = None):
        self.base = model_patcher.model          # BaseModel: apply_model, encode_adm, model_sampling
        self.layers = transformer_layers(self.base.diffusion_model)
        assert set(self.layers) == set(ADAPTER_ORDER), "not an SDXL-topology U-Net"
        self.kv = adapter_kv
        self.identity = identity
        self.s = settings or RefSettings()
        self.recorded: dict = {}
        ms = self.base.model_sampling
        self.mix_hi = float(ms.percent_to_sigma(self.s.mix_start_percent))
        self.mix_lo = float(ms.percent_to_sigma(self.s.mix_end_percent))
        self.id_hi = float(ms.percent_to_sigma(self.s.start_percent))
        self.id_lo = float(ms.percent_to_sigma(self.s.end_percent))
        self.eval_sigmas: list[float] = []   # every sigma the model was evaluated at

    # ------------------------------------------------------------------ conditioning
    def model_cond(self, conditioning: list, latent: torch.Tensor) -> dict:
        """What ComfyUI builds from ``[[cross_attn, {"pooled_output": ...}]]`` for SDXL."""
        (cross_attn, extra), = conditioning
        n = latent.shape[0]
        y = self.base.encode_adm(pooled_output=extra["pooled_output"],
                                 width=latent.shape[3] * 8, height=latent.shape[2] * 8)
        return {"c_crossattn": cross_attn.repeat(n, 1, 1), "y": y.repeat(n, 1)}

    # ------------------------------------------------------------------ passes
    @contextlib.contextmanager
    def _recording(self):
        handles = []
        self.recorded = {}
        for key, block in self.layers.items():
            for name in ("to_k", "to_v"):
                def hook(module, inputs, output, key=key, name=name):
                    self.recorded[(key, name)] = output.detach().clone()
                handles.append(getattr(block.attn1, name).register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @contextlib.contextmanager
    def _injecting(self, id_tokens: torch.Tensor, mixing: bool, image: bool):
        modules = []
        for i, key in enumerate(ADAPTER_ORDER):
            block = self.layers[key]
            block.attn1.forward = self._self_attention(block.attn1, key, mixing)
            block.attn2.forward = self._cross_attention(block.attn2, i, id_tokens, image)
            modules += [block.attn1, block.attn2]
        try:
            yield
        finally:
            for m in modules:
                del m.forward

    def _self_attention(self, attn, key, mixing: bool):
        s = self.s

        def forward(x, context=None, value=None, mask=None, **_):
            assert context is None and value is None and mask is None
            q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
            if mixing and s.attention_mode != "off":
                k_t, v_t = self.recorded[(key, "to_k")], self.recorded[(key, "to_v")]
                if s.attention_mode == "mixed":
                    k = torch.cat([adain(k, k_t, s.adain), k_t], dim=1)
                    v = torch.cat([adain(v, v_t, s.adain), v_t], dim=1)
                else:  # mutual
                    k, v = k_t, v_t
            return attn.to_out(mha(q, k, v, attn.heads))
        return forward

    def _cross_attention(self, attn, index: int, id_tokens: torch.Tensor, image: bool):
        s = self.s

        def forward(x, context=None, value=None, mask=None, **_):
            assert value is None and mask is None
            q = attn.to_q(x)
            text_out = mha(q, attn.to_k(context), attn.to_v(context), attn.heads)
            if not image:
                return attn.to_out(text_out)
            w_k, w_v = self.kv.to_k[index].weight, self.kv.to_v[index].weight
            tokens = id_tokens.to(w_k.device, w_k.dtype)  # where the adapter is (the GPU in a benchmark)
            image_out = mha(q, (tokens @ w_k.t()).to(q), (tokens @ w_v.t()).to(q), attn.heads)
            if s.merge:
                out = text_out + s.weight * image_out
            else:
                out = text_out + s.weight * (image_out - text_out)
            return attn.to_out(out)
        return forward

    @torch.no_grad()
    def cfg_denoised(self, x_id, x_text, sigma, pos: dict, neg: dict, cfg: float):
        """One model evaluation of both streams: a text pass, then an identity pass.

        Each pass holds the cond rows then the uncond rows of its stream, so identity
        row ``j`` reads the keys/values of text row ``j`` (cond with cond, uncond with
        uncond).
        """
        n = x_text.shape[0]
        s = float(sigma)
        self.eval_sigmas.append(s)
        # k-diffusion passes ``sigma * x.new_ones([batch])``: the latent's dtype.
        sig = sigma.to(x_text.dtype).expand(2 * n).clone()
        cond = {k: torch.cat([pos[k], neg[k]]) for k in pos}
        with self._recording():
            d_text = self.base.apply_model(torch.cat([x_text, x_text]), sig, **cond)
        text = d_text[n:] + (d_text[:n] - d_text[n:]) * cfg
        if self.kv is None:
            return None, text

        def rows(tokens):
            return tokens.expand(n, -1, -1) if tokens.shape[0] == 1 else tokens

        tokens = torch.cat([rows(self.identity.cond), rows(self.identity.uncond)])
        mixing = self.s.attention_mode != "off" and self.mix_lo <= s <= self.mix_hi
        image = self.s.weight != 0.0 and self.id_lo <= s <= self.id_hi
        with self._injecting(tokens, mixing, image):
            d_id = self.base.apply_model(torch.cat([x_id, x_id]), sig, **cond)
        ident = d_id[n:] + (d_id[:n] - d_id[n:]) * cfg
        return ident, text

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, noise, latent, sigmas, sampler: str, cfg: float, positive, negative, state_dtype=None):
        """Returns ``(identity_latent, text_latent)`` in the LATENT dict's scale.

        ``state_dtype``: the dtype the host keeps the sampler's latent in (newer hosts
        cast noise and latent to float32 whatever the model's dtype).
        """
        out_device = latent.device
        # Computes where the U-Net's weights are (the GPU once a benchmark has loaded it, else
        # the CPU), returns where the latent was.
        device = next(self.base.diffusion_model.parameters()).device
        sigmas = sigmas.float().to(device)
        noise, latent = noise.to(device), latent.to(device)
        if state_dtype is not None:
            noise, latent = noise.to(state_dtype), latent.to(state_dtype)
        pos, neg = self.model_cond(positive, latent), self.model_cond(negative, latent)
        lat = self.base.process_latent_in(latent)
        sigma_max = float(self.base.model_sampling.sigma_max)
        s0 = sigmas[0]
        if abs(float(s0) - sigma_max) <= 1e-5 * sigma_max or float(s0) > sigma_max:
            x = noise * torch.sqrt(1.0 + s0 ** 2) + lat
        else:
            x = noise * s0 + lat
        x_id, x_text = x.clone(), x.clone()
        with_id = self.kv is not None

        def model(xi, xt, sigma):
            return self.cfg_denoised(xi, xt, sigma, pos, neg, cfg)

        def to_d(x_, den, sigma):
            return (x_ - den) / sigma

        for i in range(len(sigmas) - 1):
            s, s_next = sigmas[i], sigmas[i + 1]
            den_id, den_t = model(x_id, x_text, s)
            d_t = to_d(x_text, den_t, s)
            d_id = to_d(x_id, den_id, s) if with_id else None
            dt = s_next - s
            if sampler == "euler" or float(s_next) == 0.0:
                x_text = x_text + d_t * dt
                if with_id:
                    x_id = x_id + d_id * dt
            elif sampler == "heun":
                x2_t = x_text + d_t * dt
                x2_id = x_id + d_id * dt if with_id else x2_t
                den2_id, den2_t = model(x2_id, x2_t, s_next)
                x_text = x_text + (d_t + to_d(x2_t, den2_t, s_next)) / 2 * dt
                if with_id:
                    x_id = x_id + (d_id + to_d(x2_id, den2_id, s_next)) / 2 * dt
            else:
                raise ValueError(sampler)
        out_t = self.base.process_latent_out(x_text.float()).to(out_device)
        out_id = self.base.process_latent_out(x_id.float()).to(out_device) if with_id else None
        return out_id, out_t
