"""Sweeps with one noise for every row, and one text-stream row for many identity rows.

An identity that holds several identities (an interpolation sweep, an identity batch) is
sampled by default with the noise core KSampler draws for row 0 alone, so the rows
differ only by identity; their text streams would then be identical, so one text row is
computed per condition chunk and every identity row mixes with it (n + 1 rows per chunk
instead of 2n). Each row must equal sampling its identity alone with the same seed.
"""
from __future__ import annotations

import nodes
import pytest
import torch
from test_sampling_contract import _force_cond_uncond_split, unet_rows

from infinite_id.demo.tiny_identity import build_tiny_adapter, random_identity
from infinite_id.identity.types import Identity
from infinite_id.model_patch.install import apply_patch
from infinite_id.model_patch.settings import PatchSettings
from infinite_id.sampling.dual_stream import sample_dual_stream

SEED, CFG, ROWS = 6, 5.0, 3
TOL = 1e-5


def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max())


def conds():
    g = torch.Generator().manual_seed(0)
    one = lambda: [[torch.randn(1, 77, 64, generator=g), {"pooled_output": torch.randn(1, 32, generator=g)}]]
    return one(), one()


def run(model, adapter, identity, settings, sampler, rows, steps=3, batch_noise="auto"):
    pos, neg = conds()
    patched = apply_patch(model, adapter, identity, PatchSettings(**settings))
    with torch.inference_mode():
        out = sample_dual_stream(patched, SEED, steps, CFG, sampler, "normal", pos, neg,
                                 {"samples": torch.zeros(rows, 4, 16, 16)}, batch_noise=batch_noise)
    return out.identity["samples"], out.text["samples"]


def row(identity: Identity, i: int) -> Identity:
    return Identity(cond=identity.cond[i:i + 1], uncond=identity.uncond[i:i + 1])


@pytest.fixture(scope="module")
def adapter(tiny_unet):
    return build_tiny_adapter(tiny_unet, seed=1)


@pytest.fixture(scope="module")
def sweep():
    return random_identity(seed=2, n=ROWS)


CASES = [("mixed", "off", "euler"), ("mixed", "mean", "euler_ancestral"),
         ("mutual", "off", "euler_ancestral"), ("mutual", "mean", "euler")]


@pytest.mark.parametrize("mode,adain,sampler", CASES, ids=["-".join(c) for c in CASES])
def test_every_row_equals_its_identity_alone(tiny_unet, adapter, sweep, mode, adain, sampler):
    settings = dict(weight=0.8, attention_mode=mode, adain=adain)
    with unet_rows(tiny_unet) as rows:
        identity, text = run(tiny_unet, adapter, sweep, settings, sampler, ROWS)
    assert set(rows) == {2 * (ROWS + 1)}  # cond + uncond chunks of 3 identity rows + 1 text row
    assert identity.shape == (ROWS, 4, 16, 16) and text.shape == (1, 4, 16, 16)
    for i in range(ROWS):
        alone_identity, alone_text = run(tiny_unet, adapter, row(sweep, i), settings, sampler, 1)
        assert rel(identity[i:i + 1], alone_identity) < TOL, i
        assert rel(text, alone_text) < TOL
    assert rel(identity[0], identity[1]) > 1e-2  # rows differ by identity


def test_one_text_row_equals_core_ksampler_batch_one(tiny_unet, adapter, sweep):
    _, text = run(tiny_unet, adapter, sweep, {}, "euler_ancestral", ROWS)
    pos, neg = conds()
    with torch.inference_mode():
        core = nodes.common_ksampler(tiny_unet, SEED, 3, CFG, "euler_ancestral", "normal", pos, neg,
                                     {"samples": torch.zeros(1, 4, 16, 16)})[0]["samples"]
    assert rel(text, core) < TOL


def test_weight_zero_every_identity_row_equals_the_text_row(tiny_unet, adapter, sweep):
    identity, text = run(tiny_unet, adapter, sweep, dict(weight=0.0, adain="mean"), "euler", ROWS)
    for i in range(ROWS):
        assert rel(identity[i:i + 1], text) < TOL


def test_a_one_row_latent_gives_the_whole_sweep(tiny_unet, adapter, sweep):
    full, _ = run(tiny_unet, adapter, sweep, {}, "euler", ROWS)
    one, _ = run(tiny_unet, adapter, sweep, {}, "euler", 1)
    assert one.shape == full.shape and rel(one, full) < TOL


def test_low_memory_split_and_mixing_window(tiny_unet, adapter, sweep, monkeypatch):
    settings = dict(mix_end_percent=0.5, adain="mean")
    batched = run(tiny_unet, adapter, sweep, settings, "euler_ancestral", ROWS)
    _force_cond_uncond_split(monkeypatch)
    with unet_rows(tiny_unet) as rows:
        split = run(tiny_unet, adapter, sweep, settings, "euler_ancestral", ROWS)
    assert rows[:2] == [ROWS + 1, ROWS + 1] and ROWS in rows  # then identity rows only, after the window
    assert rel(split[0], batched[0]) < TOL and rel(split[1], batched[1]) < TOL


def test_per_row_noise_keeps_todays_sweeps(tiny_unet, adapter, sweep):
    """``batch_noise`` per row: a noise per row and a text row per identity row, as before."""
    with unet_rows(tiny_unet) as rows:
        identity, text = run(tiny_unet, adapter, sweep, {}, "euler", ROWS, batch_noise="per row")
    assert set(rows) == {2 * 2 * ROWS} and text.shape[0] == ROWS
    pos, neg = conds()
    with torch.inference_mode():
        core = nodes.common_ksampler(tiny_unet, SEED, 3, CFG, "euler", "normal", pos, neg,
                                     {"samples": torch.zeros(ROWS, 4, 16, 16)})[0]["samples"]
    assert rel(text, core) < TOL
    assert rel(text[0], text[1]) > 1e-2  # different noises: different pictures


def test_shared_noise_for_one_person_batches(tiny_unet, adapter):
    """One identity, batch 2, shared on request: two equal images and one text row."""
    identity, text = run(tiny_unet, adapter, random_identity(seed=2), {}, "euler", 2, batch_noise="shared")
    assert text.shape[0] == 1 and rel(identity[0], identity[1]) < TOL


def test_unknown_batch_noise_is_refused(tiny_unet, adapter, sweep):
    with pytest.raises(ValueError, match=r"InfiniteIDSampler: batch_noise: must be one of \('auto', 'shared', "
                                         r"'per row'\), not 'same'"):
        run(tiny_unet, adapter, sweep, {}, "euler", ROWS, batch_noise="same")


def test_guider_shares_noise_like_the_sampler(tiny_unet, adapter, sweep):
    """SamplerCustomAdvanced's NOISE input draws a noise per row; the guider shares row 0's."""
    import comfy.samplers

    from infinite_id.host import compat
    from infinite_id.sampling.guider import make_guider

    if not compat.has_guider():
        pytest.skip("this host has no GUIDER / SamplerCustomAdvanced (March-2024 ComfyUI)")
    expected, _ = run(tiny_unet, adapter, sweep, {}, "euler_ancestral", ROWS)
    pos, neg = conds()
    patched = apply_patch(tiny_unet, adapter, sweep, PatchSettings())
    latent = torch.zeros(ROWS, 4, 16, 16)
    guider = make_guider(patched, pos, neg, CFG)
    sigmas = compat.compute_sigmas(patched, 3, "euler_ancestral", "normal", 1.0)
    with torch.inference_mode(), unet_rows(tiny_unet) as rows:
        got = guider.sample(compat.prepare_noise(latent, SEED), latent, comfy.samplers.sampler_object("euler_ancestral"),
                            sigmas, seed=SEED)
    assert set(rows) == {2 * (ROWS + 1)}
    assert rel(got, expected) < TOL
