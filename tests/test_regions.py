"""Regional identities through the real host: each person's image attention only inside their mask.

The reference computation here is independent of the pack's: masks are drawn on the
pixel grid of the coarsest token grid, so which tokens a mask covers (fully, or not at
all) follows from the latent's shape alone; image keys/values come straight from the
adapter's weights, and attention is written out per head in float64.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from test_shared_noise import conds, rel

from infinite_id.demo.tiny_identity import build_tiny_adapter
from infinite_id.identity.mixing import interpolate
from infinite_id.identity.regional import regional_identity
from infinite_id.identity.types import Identity
from infinite_id.model_patch import replacements
from infinite_id.model_patch.install import apply_patch
from infinite_id.model_patch.replacements import STEP_KEY
from infinite_id.model_patch.settings import PatchSettings
from infinite_id.sampling.dual_stream import sample_dual_stream
from infinite_id.unet.layers import SDXL_LAYERS

SEED, CFG, TOL = 6, 5.0, 1e-5
LATENT = (12, 20)           # non-square, odd grids below: 6x10, then 3x5 tokens
MASK = (48, 80)             # 16x16 mask pixels per token of the coarsest (3x5) grid


def columns(first: int, last: int, rows: int = 1) -> torch.Tensor:
    """A mask covering coarse token columns ``first..last`` (each 16 mask pixels wide)."""
    mask = torch.zeros(rows, *MASK)
    mask[:, :, first * 16:(last + 1) * 16] = 1.0
    return mask


def run(model, adapter, identity, settings=None, sampler="euler", rows=1, steps=3, latent=LATENT, **kw):
    pos, neg = conds()
    patched = apply_patch(model, adapter, identity, PatchSettings(**(settings or {})))
    with torch.inference_mode():
        out = sample_dual_stream(patched, SEED, steps, CFG, sampler, "normal", pos, neg,
                                 {"samples": torch.zeros(rows, 4, *latent)}, **kw)
    return out.identity["samples"], out.text["samples"]


@pytest.fixture(scope="module")
def adapter(tiny_unet):
    return build_tiny_adapter(tiny_unet, seed=1)


def person(seed: int, tokens: int = 4) -> Identity:
    """Random cond and uncond tokens (uncond not zero, so both guidance sides show the masks)."""
    g = torch.Generator().manual_seed(seed)
    return Identity(cond=torch.randn(1, tokens, 64, generator=g), uncond=0.5 * torch.randn(1, tokens, 64, generator=g))


@pytest.fixture(scope="module")
def alice():
    return person(2)


@pytest.fixture(scope="module")
def bob():
    return person(3, tokens=6)


SETTINGS = [dict(weight=0.8), dict(weight=0.8, adain="mean", mix_end_percent=0.5),
            dict(weight=0.6, merge=False, attention_mode="mutual")]


@pytest.mark.parametrize("settings", SETTINGS, ids=["mixed", "adain-window", "replace-mutual"])
def test_mask_of_ones_equals_the_unmasked_identity(tiny_unet, adapter, alice, settings):
    regional = regional_identity([("identity_1", alice, torch.ones(1, 30, 50), 1.0)])
    masked, _ = run(tiny_unet, adapter, regional, settings)
    plain, _ = run(tiny_unet, adapter, alice, settings)
    assert rel(masked, plain) < TOL


def test_mask_of_zeros_equals_weight_zero_for_that_person(tiny_unet, adapter, alice, bob):
    right = columns(3, 4)
    zero_mask = regional_identity([("identity_1", alice, torch.zeros(1, *MASK), 1.0), ("identity_2", bob, right, 1.0)])
    zero_weight = regional_identity([("identity_1", alice, columns(0, 1), 0.0), ("identity_2", bob, right, 1.0)])
    bob_alone = regional_identity([("identity_1", bob, right, 1.0)])
    a, _ = run(tiny_unet, adapter, zero_mask, dict(adain="mean"))
    b, _ = run(tiny_unet, adapter, zero_weight, dict(adain="mean"))
    c, text = run(tiny_unet, adapter, bob_alone, dict(adain="mean"))
    assert rel(a, b) < TOL and rel(a, c) < TOL
    assert rel(a, text) > 1e-3  # bob did act


def test_weights_zero_everywhere_give_the_text_stream(tiny_unet, adapter, alice, bob):
    regional = regional_identity([("identity_1", alice, columns(0, 1), 0.0), ("identity_2", bob, columns(3, 4), 0.0)])
    identity, text = run(tiny_unet, adapter, regional, dict(attention_mode="off"))
    assert rel(identity, text) < TOL


# ---------------------------------------------------------------------------------- hook level
def reference_image_attention(q, tokens, layer, adapter, heads):
    """softmax(q k^T / sqrt(d)) v per head, float64, keys/values from the adapter's weights."""
    i = SDXL_LAYERS.index(layer)
    w_k, w_v = adapter.kv.to_k[i].weight.double(), adapter.kv.to_v[i].weight.double()
    k, v = tokens.double() @ w_k.t(), tokens.double() @ w_v.t()
    rows, length, channels = q.shape
    d = channels // heads
    qh = q.double().view(rows, length, heads, d).transpose(1, 2)
    kh = k.expand(rows, -1, -1).reshape(rows, -1, heads, d).transpose(1, 2)
    vh = v.expand(rows, -1, -1).reshape(rows, -1, heads, d).transpose(1, 2)
    weights = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (weights @ vh).transpose(1, 2).reshape(rows, length, channels)


def token_columns(tokens: int) -> tuple[int, int, int]:
    """Grid (rows, columns) of a layer from the latent shape alone, and its tokens per coarse column."""
    h, w = LATENT
    while h * w != tokens:
        h, w = (h + 1) // 2, (w + 1) // 2
        assert h >= 1 and w >= 1, tokens
    return h, w, w // 5


def coverage(mask_columns: tuple[int, int], tokens: int) -> torch.Tensor:
    """1 for tokens inside coarse columns ``mask_columns``, else 0 (exact: masks follow token edges)."""
    h, w, per = token_columns(tokens)
    col = torch.arange(w) // per
    inside = ((col >= mask_columns[0]) & (col <= mask_columns[1])).double()
    return inside.repeat(h)


@pytest.mark.parametrize("overlap", [False, True], ids=["apart", "overlapping"])
def test_each_person_reaches_only_their_tokens_at_every_layer(tiny_unet, adapter, alice, bob, monkeypatch, overlap):
    """Two people, left and right of a non-square latent, against the reference at every patched layer."""
    span_a, span_b = ((0, 2), (2, 3)) if overlap else ((0, 1), (3, 4))
    w_a, w_b, weight = 1.0, 0.7, 0.9
    regional = regional_identity([("identity_1", alice, columns(*span_a), w_a),
                                  ("identity_2", bob, columns(*span_b), w_b)])
    checked: dict[int, int] = {}
    original = replacements.CrossAttentionPatch.__call__

    def probe(self, q, k, v, extra):
        out = original(self, q, k, v, extra)
        state = extra.get(STEP_KEY)
        if state is None or not state.identity_active:
            return out
        text = original(self, q, k, v, {**extra, STEP_KEY: dataclasses.replace(state, identity_active=False)})
        tokens = q.shape[1]
        m_a, m_b = coverage(span_a, tokens), coverage(span_b, tokens)
        total = (m_a + m_b).clamp(min=1.0)
        for chunk in state.layout.chunks:
            side = "cond" if chunk.kind == 0 else "uncond"
            q_id = q[chunk.identity]
            image_a = reference_image_attention(q_id, getattr(alice, side), self.layer, adapter, extra["n_heads"])
            image_b = reference_image_attention(q_id, getattr(bob, side), self.layer, adapter, extra["n_heads"])
            expected = (text[chunk.identity].double()
                        + weight * w_a * (m_a / total)[None, :, None] * image_a
                        + weight * w_b * (m_b / total)[None, :, None] * image_b)
            got = out[chunk.identity].double()
            assert rel(got, expected) < 1e-4, (self.layer, tokens)
            delta = (got - text[chunk.identity].double()).abs().amax(dim=(0, 2))
            outside = (m_a + m_b) == 0
            assert float(delta[outside].max()) == 0.0, (self.layer, tokens)   # text attention only
            assert bool((delta[~outside] > 0).all()), (self.layer, tokens)
            assert torch.equal(out[chunk.text], text[chunk.text]) if chunk.text is not None else True
        checked[tokens] = checked.get(tokens, 0) + 1
        return out

    monkeypatch.setattr(replacements.CrossAttentionPatch, "__call__", probe)
    run(tiny_unet, adapter, regional, dict(weight=weight), steps=1)
    assert set(checked) == {6 * 10, 3 * 5}  # both of the tiny SDXL's transformer resolutions


# ---------------------------------------------------------------------------------- interplay
def test_a_sweep_in_one_region_shares_the_text_stream(tiny_unet, adapter, alice, bob):
    """Person A sweeps to B on the left while C stays on the right: each row equals that row alone."""
    carol = person(4)
    sweep = interpolate(alice, carol, [0.0, 0.5, 1.0])
    regional = regional_identity([("identity_1", sweep, columns(0, 1), 1.0), ("identity_2", bob, columns(3, 4), 1.0)])
    rows, text = run(tiny_unet, adapter, regional, dict(adain="mean"), sampler="euler_ancestral")
    assert rows.shape[0] == 3 and text.shape[0] == 1  # shared noise: one text row
    for i in range(3):
        one = Identity(cond=sweep.cond[i:i + 1], uncond=sweep.uncond[i:i + 1])
        alone = regional_identity([("identity_1", one, columns(0, 1), 1.0), ("identity_2", bob, columns(3, 4), 1.0)])
        row, _ = run(tiny_unet, adapter, alone, dict(adain="mean"), sampler="euler_ancestral")
        assert rel(rows[i:i + 1], row) < TOL, i


def test_a_latent_batch_with_the_same_or_its_own_regions(tiny_unet, adapter, alice, bob):
    left, right = columns(0, 1), columns(3, 4)
    same = regional_identity([("identity_1", alice, left, 1.0), ("identity_2", bob, right, 1.0)])
    batch, _ = run(tiny_unet, adapter, same, rows=2)
    single, _ = run(tiny_unet, adapter, same, rows=1)
    assert rel(batch[:1], single) < TOL  # row 0 has core's first noise either way
    swapped = regional_identity([("identity_1", alice, torch.cat([left, right]), 1.0),
                                 ("identity_2", bob, torch.cat([right, left]), 1.0)])
    per_row, _ = run(tiny_unet, adapter, swapped, rows=2)
    other = regional_identity([("identity_1", alice, right, 1.0), ("identity_2", bob, left, 1.0)])
    other_batch, _ = run(tiny_unet, adapter, other, rows=2)
    assert rel(per_row[:1], batch[:1]) < TOL and rel(per_row[1:], other_batch[1:]) < TOL
    assert rel(per_row[1:], batch[1:]) > 1e-3


def test_mask_batch_must_match_the_latent(tiny_unet, adapter, alice, bob):
    regional = regional_identity([("identity_1", alice, columns(0, 1, rows=3), 1.0)])
    with pytest.raises(ValueError, match=r"InfiniteIDSampler: latent_image: the regional identity's masks have a "
                                         r"batch of 3 but the latent batch has 2 rows"):
        run(tiny_unet, adapter, regional, rows=2)


def test_guider_gives_the_same_regions(tiny_unet, adapter, alice, bob):
    import comfy.samplers

    from infinite_id.host import compat
    from infinite_id.sampling.guider import make_guider

    if not compat.has_guider():
        pytest.skip("this host has no GUIDER / SamplerCustomAdvanced (March-2024 ComfyUI)")

    regional = regional_identity([("identity_1", alice, columns(0, 1), 1.0), ("identity_2", bob, columns(3, 4), 1.0)])
    patched = apply_patch(tiny_unet, adapter, regional, PatchSettings())
    pos, neg = conds()
    latent = torch.zeros(1, 4, *LATENT)
    guider = make_guider(patched, pos, neg, CFG)
    sigmas = compat.compute_sigmas(patched, 3, "euler", "normal", 1.0)
    noise = compat.prepare_noise(latent, SEED)
    with torch.inference_mode():
        out = guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, seed=SEED)
    expected, _ = run(tiny_unet, adapter, regional)
    assert rel(out, expected) < TOL
