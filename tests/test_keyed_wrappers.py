"""Keyed wrappers on current hosts: step caches, later wrappers, and every refusal.

Core EasyCache (a ``DIFFUSION_MODEL`` wrapper keeping a cache per condition chunk) and
LazyCache (a ``PREDICT_NOISE`` wrapper on the sampler's whole batch) are applied before
and after ``InfiniteIDApply``. Both act on both streams alike: with weight 0 the
identity stream still equals the text stream while steps are skipped, the order of the
nodes does not matter, and every U-Net call keeps its full batch (the text stream is
computed to the last step when another per-call wrapper is present).
"""
from __future__ import annotations

import contextlib

import comfy.samplers
import pytest
import torch
from test_any_sampler import custom_sampler_nodes, ksampler, out, out_object
from test_reference_dual_stream import make_conds, rel

from infinite_id.demo.tiny_identity import build_tiny_adapter, random_identity
from infinite_id.host import compat
from infinite_id.model_patch.install import apply_patch, per_call_wrapper
from infinite_id.model_patch.settings import PatchSettings
from infinite_id.model_patch.streams import RunRequest
from infinite_id.model_patch.wrapper import APPLY_KEY, OUTSIDE_SAMPLING
from infinite_id.sampling.dual_stream import with_request

pytestmark = pytest.mark.skipif(not compat.has_keyed_wrappers(),
                                reason="this host has no keyed wrappers (comfy.patcher_extension)")

STEPS, TOL = 8, 1e-5
LATENT = {"samples": torch.zeros(1, 4, 16, 16)}
SAMPLING = "sampling with the Infinite-ID MODEL"


@pytest.fixture(scope="module")
def adapter(tiny_unet):
    return build_tiny_adapter(tiny_unet, seed=1)


def patch(model, adapter, **settings):
    return apply_patch(model, adapter, random_identity(seed=2), PatchSettings(**settings))


def cache(kind: str, model):
    """Core's EasyCache or LazyCache node, set to skip as often as it can."""
    import comfy_extras.nodes_easycache as easycache

    node = easycache.EasyCacheNode if kind == "EasyCache" else easycache.LazyCacheNode
    return out_object(node.execute(model, reuse_threshold=3.0, start_percent=0.0, end_percent=1.0, verbose=False))


@contextlib.contextmanager
def unet_rows(model_patcher):
    """The batch of every U-Net evaluation that really ran (its first block's input): a
    cache that skips a step returns before it, even inside the U-Net's ``forward``."""
    rows: list[int] = []
    first = model_patcher.model.diffusion_model.input_blocks[0][0]  # the input convolution
    handle = first.register_forward_pre_hook(lambda module, args: rows.append(int(args[0].shape[0])))
    try:
        yield rows
    finally:
        handle.remove()


def both_streams(model) -> tuple[torch.Tensor, torch.Tensor]:
    request = RunRequest(node="test")
    identity = ksampler(with_request(model, request), LATENT, steps=STEPS)
    return identity, request.text


# ----------------------------------------------------------------------------- step caches

@pytest.mark.parametrize("kind", ["EasyCache", "LazyCache"])
def test_step_cache_acts_on_both_streams_in_either_order(tiny_unet, adapter, kind):
    settings = dict(weight=0.0, mix_end_percent=0.5)  # the window ends mid-run
    with unet_rows(tiny_unet) as uncached_rows:
        uncached = ksampler(patch(tiny_unet, adapter, **settings), LATENT, steps=STEPS)
    with unet_rows(tiny_unet) as rows:
        after, after_text = both_streams(cache(kind, patch(tiny_unet, adapter, **settings)))
    before, _ = both_streams(patch(cache(kind, tiny_unet), adapter, **settings))
    assert len(rows) < len(uncached_rows)  # steps were skipped
    if kind == "EasyCache":  # inside the per-call wrapper: every call keeps both streams' rows
        assert set(rows) == {4}
    assert rel(after, after_text) < TOL  # weight 0: the cache treats both streams alike
    assert rel(after, before) < TOL
    assert torch.isfinite(after).all() and rel(after, uncached) > 0


@pytest.mark.parametrize("kind", ["EasyCache", "LazyCache"])
def test_step_cache_with_identity_runs_in_either_order(tiny_unet, adapter, kind):
    after, text = both_streams(cache(kind, patch(tiny_unet, adapter, weight=1.0)))
    before, _ = both_streams(patch(cache(kind, tiny_unet), adapter, weight=1.0))
    assert rel(after, before) < TOL
    assert rel(after, text) > 1e-2


# ----------------------------------------------------------------------------- later wrappers

def test_later_model_function_wrapper_is_chained(tiny_unet, adapter):
    model = patch(tiny_unet, adapter)
    calls = []

    def counting(apply_model, args):
        calls.append(int(args["input"].shape[0]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    later = model.clone()
    later.set_model_unet_function_wrapper(counting)
    assert rel(ksampler(later, LATENT, steps=2), ksampler(model, LATENT, steps=2)) < TOL
    assert calls == [4, 4]


def test_later_wrapper_that_changes_the_batch_is_refused(tiny_unet, adapter):
    later = patch(tiny_unet, adapter).clone()
    later.set_model_unet_function_wrapper(
        lambda apply_model, args: apply_model(args["input"][:2], args["timestep"][:2],
                                              **{k: v for k, v in args["c"].items() if k != "y"}, y=args["c"]["y"][:2]))
    with pytest.raises(RuntimeError, match=r"Infinite-ID expected 2 chunk\(s\) of 2 rows \(identity \+ text stream\) "
                                           r"but the U-Net call has 2 rows. Another node changed the batch"):
        ksampler(later, LATENT, steps=1)


# ----------------------------------------------------------------------------- refusals

def test_later_attention_replacement_is_refused_in_core_ksampler(tiny_unet, adapter):
    later = patch(tiny_unet, adapter).clone()
    later.set_model_attn1_replace(lambda q, k, v, extra: q, "output", 1, 3)
    with pytest.raises(ValueError, match=rf"^{SAMPLING}: model: a node applied after 'InfiniteID Apply' replaced "
                                         r"self-attention on 1 layer\(s\)"):
        ksampler(later, LATENT, steps=1)


def test_removed_model_wrapper_is_refused(tiny_unet, adapter):
    from comfy.patcher_extension import WrappersMP

    later = patch(tiny_unet, adapter).clone()
    later.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, APPLY_KEY)
    with pytest.raises(ValueError, match=rf"^{SAMPLING}: model: a node applied after 'InfiniteID Apply' removed or "
                                         r"duplicated Infinite-ID's 'infinite_id' model wrapper \(0 found\)"):
        ksampler(later, LATENT, steps=1)


def test_latent_rows_that_do_not_fit_the_identities_are_refused(tiny_unet, adapter):
    sweep = apply_patch(tiny_unet, adapter, random_identity(seed=2, n=3), PatchSettings())
    with pytest.raises(ValueError, match=rf"^{SAMPLING}: latent_image: the identity holds 3 identities .* but the "
                                         r"latent batch has 2 rows"):
        ksampler(sweep, {"samples": torch.zeros(2, 4, 16, 16)}, steps=1)


class _OwnSampler(comfy.samplers.Sampler):
    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        raise AssertionError("never reached")


def _custom(model, sampler, noise=None) -> None:
    custom = custom_sampler_nodes()
    pos, neg = make_conds(torch.float32)
    guider = out_object(custom.CFGGuider.execute(model, pos, neg, 5.0))
    sigmas = out_object(custom.BasicScheduler.execute(model, "normal", 2, 1.0))
    with torch.inference_mode():
        out(custom.SamplerCustomAdvanced.execute(noise or out_object(custom.RandomNoise.execute(1)), guider,
                                                 sampler, sigmas, LATENT))


def test_samplers_whose_noise_cannot_be_paired_are_refused(tiny_unet, adapter):
    model = patch(tiny_unet, adapter)
    with pytest.raises(ValueError, match=rf"^{SAMPLING}: sampler: _OwnSampler is not a ComfyUI KSAMPLER, so "
                                         "Infinite-ID cannot give both streams the same per-step noise. Use a core "
                                         r"sampler \(KSamplerSelect"):
        _custom(model, _OwnSampler())
    own_noise = comfy.samplers.ksampler("euler_ancestral", {"noise_sampler": lambda s, s_next: None})
    with pytest.raises(ValueError, match=rf"^{SAMPLING}: sampler: it brings its own per-step noise sampler"):
        _custom(model, own_noise)


def test_noise_that_does_not_match_the_latent_is_refused(tiny_unet, adapter):
    class TwoRows:
        seed = 1

        def generate_noise(self, latent):
            return torch.randn(2, *latent["samples"].shape[1:])

    with pytest.raises(ValueError, match=rf"^{SAMPLING}: the sampling's noise \(2, 4, 16, 16\) does not match its "
                                         r"latent \(1, 4, 16, 16\)"):
        _custom(patch(tiny_unet, adapter), comfy.samplers.sampler_object("euler"), noise=TwoRows())


def test_a_model_call_outside_sampling_is_refused(tiny_unet, adapter):
    model = patch(tiny_unet, adapter)
    options = {"wrappers": {"apply_model": {APPLY_KEY: [per_call_wrapper(model)]}}, "cond_or_uncond": [0]}
    with pytest.raises(RuntimeError) as info:
        model.model.apply_model(torch.zeros(1, 4, 16, 16), torch.ones(1), transformer_options=options)
    assert str(info.value) == OUTSIDE_SAMPLING


def test_unknown_batch_noise_is_refused_when_the_guider_is_made(tiny_unet, adapter):
    from infinite_id.sampling.guider import make_guider

    pos, neg = make_conds(torch.float32)
    with pytest.raises(ValueError, match=r"^InfiniteIDGuider: batch_noise: must be one of"):
        make_guider(patch(tiny_unet, adapter), pos, neg, 5.0, batch_noise="sometimes")


def test_no_model_function_wrapper_is_set(tiny_unet, adapter):
    assert "model_function_wrapper" not in patch(tiny_unet, adapter).model_options
