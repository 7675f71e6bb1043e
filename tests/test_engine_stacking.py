"""Other packs' patches on a MODEL patched by InfiniteIDApply, in both orders.

The cubiq face packs (IPAdapter, InstantID, PuLID) stack on an existing cross-attention
replacement with ``.add(callback, **kwargs)``; ``stand_in_pack`` follows that protocol.
A pack applied after Apply must stack on Infinite-ID's layers, run inside its sigma
window only, reach both streams (as it would applied before), and stay out of other
branches of the graph that use the same Apply output. Replacements that would silently
switch part of the method off are refused before sampling, naming the node order.
"""
from __future__ import annotations

import nodes
import pytest
import torch
from stand_in_pack import apply_stand_in

from infinite_id.demo.tiny_identity import build_tiny_adapter, random_identity
from infinite_id.host import compat
from infinite_id.model_patch.install import apply_patch
from infinite_id.model_patch.replacements import CrossAttentionPatch
from infinite_id.model_patch.settings import PatchSettings
from infinite_id.nodes.sampler import InfiniteIDSampler
from infinite_id.unet.layers import SDXL_LAYERS

SEED, STEPS, CFG = 5, 2, 5.0
TOL = 1e-5
ORDER_TOL = 1e-4


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def latent():
    return {"samples": torch.zeros(1, 4, 16, 16)}


def conds():
    g = torch.Generator().manual_seed(0)
    one = lambda: [[torch.randn(1, 77, 64, generator=g), {"pooled_output": torch.randn(1, 32, generator=g)}]]
    return one(), one()


def dual(model):
    pos, neg = conds()
    with torch.inference_mode():
        identity, text = InfiniteIDSampler().sample(model, SEED, STEPS, CFG, "euler", "normal", pos, neg, latent())
    return identity["samples"], text["samples"]


def core(model):
    pos, neg = conds()
    with torch.inference_mode():
        return nodes.common_ksampler(model, SEED, STEPS, CFG, "euler", "normal", pos, neg, latent())[0]["samples"]


@pytest.fixture(scope="module")
def parts(tiny_unet):
    return build_tiny_adapter(tiny_unet, seed=1), random_identity(seed=2)


@pytest.fixture(scope="module")
def applied(tiny_unet, parts):
    return apply_patch(tiny_unet, *parts, PatchSettings())


@pytest.fixture(scope="module")
def plain(applied):
    return dual(applied)


@pytest.fixture(scope="module")
def stacked_after(applied):
    return dual(apply_stand_in(applied))


def test_pack_applied_after_stacks_on_our_layers(applied, plain, stacked_after):
    model = apply_stand_in(applied)
    table = model.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert all(isinstance(table[key], CrossAttentionPatch) and len(table[key].stacked) == 1 for key in SDXL_LAYERS)
    assert rel(stacked_after[0], plain[0]) > 1e-2 and rel(stacked_after[1], plain[1]) > 1e-2


def test_pack_after_equals_pack_before(tiny_unet, parts, stacked_after):
    """The pack reaches both streams in either order: after Apply it stacks, before it is chained."""
    before = dual(apply_patch(apply_stand_in(tiny_unet), *parts, PatchSettings()))
    # The sums are added in another order (text + identity + pack vs text + pack + identity).
    assert rel(stacked_after[0], before[0]) < ORDER_TOL
    assert rel(stacked_after[1], before[1]) < TOL


def test_text_stream_with_pack_after_equals_core_ksampler_with_the_pack(tiny_unet, stacked_after):
    assert rel(stacked_after[1], core(apply_stand_in(tiny_unet))) < TOL


def test_pack_at_weight_zero_changes_nothing(applied, plain):
    identity, text = dual(apply_stand_in(applied, weight=0.0))
    assert rel(identity, plain[0]) < TOL and rel(text, plain[1]) < TOL


def test_pack_outside_its_sigma_window_changes_nothing(applied, plain):
    # STEPS=2 with the normal schedule evaluates at sigma ~14.6 and ~0.03: a window over
    # the middle of the schedule contains neither.
    identity, text = dual(apply_stand_in(applied, start_percent=0.3, end_percent=0.6))
    assert rel(identity, plain[0]) < TOL and rel(text, plain[1]) < TOL


def test_pack_inside_part_of_the_window(applied, plain, stacked_after):
    identity, _ = dual(apply_stand_in(applied, start_percent=0.5, end_percent=1.0))  # second step only
    assert rel(identity, plain[0]) > 1e-5 and rel(identity, stacked_after[0]) > 1e-2


def test_pack_after_does_not_leak_into_other_branches(applied, plain):
    branch_b = apply_stand_in(applied)
    table_a = applied.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert all(not table_a[key].stacked for key in SDXL_LAYERS)
    assert branch_b.model_options["transformer_options"]["patches_replace"]["attn2"][SDXL_LAYERS[0]].stacked
    identity, text = dual(applied)  # branch A, sampled after branch B was made
    assert rel(identity, plain[0]) < TOL and rel(text, plain[1]) < TOL


def test_two_packs_after_stack_in_order(applied, stacked_after):
    twice = apply_stand_in(apply_stand_in(applied), weight=0.0)
    assert len(twice.model_options["transformer_options"]["patches_replace"]["attn2"][SDXL_LAYERS[0]].stacked) == 2
    identity, _ = dual(twice)
    assert rel(identity, stacked_after[0]) < TOL


# ----------------------------------------------------------------------------- refusals before sampling

def _sample_message(model) -> str:
    with pytest.raises(ValueError) as info:
        dual(model)
    return str(info.value)


@pytest.mark.skipif(compat.has_keyed_wrappers(), reason="keyed-wrapper hosts chain a later model_function_wrapper "
                                                          "(tests/test_keyed_wrappers.py)")
def test_later_unet_wrapper_is_refused_naming_the_order(applied):
    later = applied.clone()
    later.set_model_unet_function_wrapper(lambda apply_model, args: apply_model(args["input"], args["timestep"],
                                                                              **args["c"]))
    message = _sample_message(later)
    assert message.startswith("InfiniteIDSampler: model: a node applied after 'InfiniteID Apply' replaced the U-Net "
                              "wrapper")
    assert "before 'InfiniteID Apply'" in message


def test_later_self_attention_replacement_is_refused(applied):
    later = applied.clone()
    later.set_model_attn1_replace(lambda q, k, v, extra: q, "output", 1, 3)
    message = _sample_message(later)
    assert "replaced self-attention on 1 layer(s) (first: ('output', 1, 3)" in message
    assert message.startswith("InfiniteIDSampler: model: a node applied after 'InfiniteID Apply'")


def test_later_cross_attention_replacement_without_stacking_is_refused(applied):
    later = applied.clone()
    later.set_model_attn2_replace(lambda q, k, v, extra: q, "input", 7, 0)
    assert "replaced cross-attention on 1 layer(s) (first: ('input', 7, 0)" in _sample_message(later)


def test_later_block_level_replacement_is_refused(applied):
    later = applied.clone()
    later.set_model_attn2_replace(lambda q, k, v, extra: q, "middle", 0)
    assert "block-level attn2 replacement on ('middle', 0)" in _sample_message(later)


def test_earlier_block_level_self_attention_is_refused_at_apply(tiny_unet, parts):
    pre = tiny_unet.clone()
    pre.set_model_attn1_replace(lambda q, k, v, extra: q, "input", 4)
    with pytest.raises(ValueError, match=r"another node already replaces self-attention on 1 layer\(s\) \(first: "
                                         r"\('input', 4\)"):
        apply_patch(pre, *parts, PatchSettings())


def _half_attention(q, k, v, extra_options):
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(q, k, v, extra_options["n_heads"]) * 0.5


def test_earlier_block_level_cross_attention_is_chained(tiny_unet, parts, plain):
    pre = tiny_unet.clone()
    pre.set_model_attn2_replace(_half_attention, "output", 0)
    identity, text = dual(apply_patch(pre, *parts, PatchSettings()))
    assert rel(text, core(pre)) < TOL
    assert rel(text, plain[1]) > 1e-2
