"""The patched MODEL in every core sampling path (hosts with keyed wrappers), and the
March-2024 tree's refusal of a plain KSampler.

On hosts with ``comfy.patcher_extension`` the MODEL from ``InfiniteIDApply`` runs both
streams whenever ComfyUI samples it. Each path is driven through the host's own node
classes (``KSampler``, ``KSamplerAdvanced``, ``SamplerCustom``, ``SamplerCustomAdvanced``
with core guiders) or ``comfy.sample`` and compared with ``InfiniteID Sampler``, with the
plain implementation in ``reference_dual_stream.py`` (passes from an image latent, a
two-stage split), or with core on the unpatched model (the text stream).
"""
from __future__ import annotations

import comfy.sample
import nodes
import pytest
import torch
from reference_dual_stream import Reference, RefSettings
from test_reference_dual_stream import host_state_dtype, make_conds, rel

from infinite_id.demo.tiny_identity import build_tiny_adapter, random_identity
from infinite_id.host import compat
from infinite_id.identity.regional import regional_identity
from infinite_id.model_patch.install import apply_patch
from infinite_id.model_patch.settings import PatchSettings
from infinite_id.model_patch.streams import RunRequest
from infinite_id.model_patch.wrapper import USE_THE_SAMPLER
from infinite_id.nodes.apply import InfiniteIDApply
from infinite_id.nodes.sampler import InfiniteIDSampler
from infinite_id.sampling.dual_stream import with_request

SEED, CFG, STEPS, TOL = 4, 5.0, 3, 1e-5
# The text stream against core on the unpatched model: the pack runs the text row beside the
# identity row (a batch of 2), core runs it alone, and float32 GEMMs of other shapes round
# differently. Measured 5e-6 on a 2-core CPU and 1.0e-5 to 1.2e-5 on CI's machine (inpaint,
# denoise 0.6); a wrong stream differs by more than 1e-2.
TEXT_TOL = 5e-5  # also the weight-0 model (its text row runs beside the identity row)
KEYED = compat.has_keyed_wrappers()
needs_keyed = pytest.mark.skipif(not KEYED, reason="this host has no keyed wrappers (comfy.patcher_extension): "
                                                   "a plain KSampler is refused there")


def custom_sampler_nodes():
    """Core's SamplerCustom* nodes (comfy_extras), imported as the host's own module."""
    import comfy_extras.nodes_custom_sampler as custom

    return custom


def out(result, index: int = 0) -> torch.Tensor:
    """A node's LATENT output: classic nodes return tuples, io nodes ``NodeOutput``."""
    values = result.args if hasattr(result, "args") else result
    return values[index]["samples"]


def image_latent(rows: int = 1, seed: int = 9) -> dict:
    return {"samples": torch.randn(rows, 4, 16, 16, generator=torch.Generator().manual_seed(seed))}


def ksampler(model, latent, sampler="euler", denoise=1.0, steps=STEPS, cfg=CFG, conds=None):
    pos, neg = conds or make_conds(torch.float32)
    with torch.inference_mode():
        return out(nodes.KSampler().sample(model, SEED, steps, cfg, sampler, "normal", pos, neg, latent,
                                           denoise=denoise))


def iid_sampler(model, latent, sampler="euler", denoise=1.0, steps=STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    pos, neg = make_conds(torch.float32)
    with torch.inference_mode():
        identity, text = InfiniteIDSampler().sample(model, SEED, steps, CFG, sampler, "normal", pos, neg, latent,
                                                    denoise)
    return identity["samples"], text["samples"]


def advanced(model, latent, add_noise: bool, start: int, end: int, leftover: bool, steps: int = 4):
    pos, neg = make_conds(torch.float32)
    with torch.inference_mode():
        return out(nodes.KSamplerAdvanced().sample(
            model, "enable" if add_noise else "disable", SEED, steps, CFG, "euler", "normal", pos, neg, latent,
            start, end, "enable" if leftover else "disable"))


@pytest.fixture(scope="module")
def adapter(tiny_unet):
    return build_tiny_adapter(tiny_unet, seed=1)


@pytest.fixture(scope="module")
def patched(tiny_unet, adapter):
    return apply_patch(tiny_unet, adapter, random_identity(seed=2), PatchSettings(weight=0.8))


# ----------------------------------------------------------------------------- core KSampler

@needs_keyed
@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m_sde"])
def test_ksampler_equals_infinite_id_sampler(patched, sampler):
    latent = {"samples": torch.zeros(2, 4, 16, 16)}
    core = ksampler(patched, latent, sampler)
    identity, _ = iid_sampler(patched, latent, sampler)
    assert core.shape == (2, 4, 16, 16)
    assert rel(core, identity) < TOL


@needs_keyed
def test_an_image_latent_starts_both_streams_from_it(tiny_unet, adapter, patched):
    """denoise 0.5 from an image latent equals the plain two-pass implementation started
    from that latent; the text stream is core KSampler's img2img of it on the unpatched model."""
    latent = image_latent()
    core = ksampler(patched, latent, denoise=0.5)
    identity, text = iid_sampler(patched, latent, denoise=0.5)
    assert rel(core, identity) < TOL
    assert rel(text, ksampler(tiny_unet, latent, denoise=0.5)) < TEXT_TOL
    sigmas = compat.compute_sigmas(patched, STEPS, "euler", "normal", 0.5)
    pos, neg = make_conds(torch.float32)
    ref_id, _ = Reference(tiny_unet, adapter.kv, random_identity(seed=2), RefSettings(weight=0.8)).sample(
        compat.prepare_noise(latent["samples"], SEED), latent["samples"], sigmas, "euler", CFG, pos, neg,
        state_dtype=host_state_dtype(torch.float32))
    assert rel(core, ref_id) < TOL
    assert rel(core, text) > 1e-2


@needs_keyed
@pytest.mark.parametrize("sampler", ["euler_ancestral", "ddim"])  # ddim re-noises the kept area with its own draw
def test_inpaint_mask(tiny_unet, patched, sampler):
    latent = image_latent()
    mask = torch.zeros(1, 16, 16)
    mask[:, 4:12, 4:12] = 1.0
    latent = nodes.SetLatentNoiseMask().set_mask(latent, mask)[0]
    core = ksampler(patched, latent, sampler, denoise=0.6)
    identity, text = iid_sampler(patched, latent, sampler, denoise=0.6)
    assert rel(core, identity) < TOL
    assert rel(text, ksampler(tiny_unet, latent, sampler, denoise=0.6)) < TEXT_TOL
    outside = mask.expand(1, 4, 16, 16) == 0  # kept from the latent by both streams
    assert torch.allclose(core[outside], latent["samples"][outside], atol=1e-5)


@needs_keyed
def test_a_sweep_shares_noise_and_one_text_row(tiny_unet, adapter):
    sweep = apply_patch(tiny_unet, adapter, random_identity(seed=2, n=3), PatchSettings())
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    core = ksampler(sweep, latent, "euler_ancestral")
    identity, text = iid_sampler(sweep, latent, "euler_ancestral")
    assert core.shape == (3, 4, 16, 16) and text.shape == (1, 4, 16, 16)
    assert rel(core, identity) < TOL
    assert rel(core[0], core[1]) > 1e-2


@needs_keyed
def test_a_regional_identity(tiny_unet, adapter):
    left, right = torch.zeros(1, 64, 64), torch.zeros(1, 64, 64)
    left[:, :, :32], right[:, :, 32:] = 1.0, 1.0
    people = [("identity_1", random_identity(seed=2), left, 1.0), ("identity_2", random_identity(seed=3), right, 0.7)]
    model = apply_patch(tiny_unet, adapter, regional_identity(people), PatchSettings())
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    assert rel(ksampler(model, latent), iid_sampler(model, latent)[0]) < TOL


# ----------------------------------------------------------------------------- KSamplerAdvanced

@needs_keyed
def test_two_stage_ksampler_advanced(tiny_unet, adapter, patched):
    """Stage 1 (leftover noise) is the first half of the run; stage 2 (add_noise off)
    starts both streams from stage 1's identity latent: the plain implementation from
    there, its text stream core KSamplerAdvanced on the unpatched model from there."""
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    first = advanced(patched, latent, True, 0, 2, leftover=True)
    request = RunRequest(node="test")
    second = advanced(with_request(patched, request), {"samples": first}, False, 2, 4, leftover=False)
    assert rel(request.text, advanced(tiny_unet, {"samples": first}, False, 2, 4, leftover=False)) < TEXT_TOL
    sigmas = compat.compute_sigmas(patched, 4, "euler", "normal", 1.0)[2:]
    pos, neg = make_conds(torch.float32)
    ref_id, _ = Reference(tiny_unet, adapter.kv, random_identity(seed=2), RefSettings(weight=0.8)).sample(
        torch.zeros_like(first), first, sigmas, "euler", CFG, pos, neg, state_dtype=host_state_dtype(torch.float32))
    assert rel(second, ref_id) < TOL
    one_stage = advanced(patched, latent, True, 0, 4, leftover=False)
    assert rel(one_stage, ksampler(patched, latent, steps=4)) < TOL


# ----------------------------------------------------------------------------- custom sampling, comfy.sample

@needs_keyed
def test_sampler_custom_and_comfy_sample(patched):
    custom = custom_sampler_nodes()
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    pos, neg = make_conds(torch.float32)
    identity, _ = iid_sampler(patched, latent, "euler_ancestral")
    sampler = out_object(custom.KSamplerSelect.execute("euler_ancestral"))
    sigmas = out_object(custom.BasicScheduler.execute(patched, "normal", STEPS, 1.0))
    with torch.inference_mode():
        result = custom.SamplerCustom.execute(patched, True, SEED, CFG, pos, neg, sampler, sigmas, latent)
        third_party = comfy.sample.sample(patched, comfy.sample.prepare_noise(latent["samples"], SEED), STEPS, CFG,
                                          "euler_ancestral", "normal", pos, neg, latent["samples"], seed=SEED)
    assert rel(out(result, 0), identity) < TOL
    assert out(result, 1).shape == (1, 4, 16, 16)  # denoised_output: the identity stream's rows only
    assert rel(third_party, identity) < TOL


def out_object(result):
    return (result.args if hasattr(result, "args") else result)[0]


def _advanced(custom, guider, sampler_name: str, latent: dict) -> torch.Tensor:
    sampler = out_object(custom.KSamplerSelect.execute(sampler_name))
    sigmas = out_object(custom.BasicScheduler.execute(guider.model_patcher, "normal", STEPS, 1.0))
    noise = out_object(custom.RandomNoise.execute(SEED))
    with torch.inference_mode():
        return out(custom.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, latent))


@needs_keyed
def test_sampler_custom_advanced_with_core_guiders(tiny_unet, patched):
    custom = custom_sampler_nodes()
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    pos, neg = make_conds(torch.float32)
    identity, _ = iid_sampler(patched, latent, "euler_ancestral")
    cfg_guider = out_object(custom.CFGGuider.execute(patched, pos, neg, CFG))
    assert rel(_advanced(custom, cfg_guider, "euler_ancestral", latent), identity) < TOL
    # Basic and DualCFG guiders: the text stream is the guider's own result on the unpatched model.
    for make in (lambda m: custom.BasicGuider.execute(m, pos),
                 lambda m: custom.DualCFGGuider.execute(m, pos, pos, neg, CFG, 2.0, "regular")):
        request = RunRequest(node="test")
        got = _advanced(custom, out_object(make(with_request(patched, request))), "euler", latent)
        plain = _advanced(custom, out_object(make(tiny_unet)), "euler", latent)
        assert rel(request.text, plain) < TEXT_TOL
        assert rel(got, plain) > 1e-2


# ----------------------------------------------------------------------------- patched vs unpatched

@needs_keyed
def test_patched_differs_and_weight_zero_without_lora_equals_unpatched(tiny_unet):
    """With an adapter that carries a U-Net LoRA (FaceID-Plus-v2's layout): only weight 0
    and lora_strength 0 together give the unpatched model's KSampler result."""
    from test_adapter_formats import _nested, faceid_state

    from infinite_id.adapter.loader import load_adapter_state
    from infinite_id.unet.layers import SDXL_LAYERS
    from infinite_id.unet.walk import cross_attention_widths

    widths = [cross_attention_widths(tiny_unet.model.diffusion_model)[k][0] for k in SDXL_LAYERS]
    with_lora = load_adapter_state(_nested(*faceid_state(widths, seed=4)))
    assert with_lora.lora
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    unpatched = ksampler(tiny_unet, latent)
    settings = dict(attention_mode="mixed", cross_attention_merge=True, adain="off", start_percent=0.0,
                    end_percent=1.0, mix_start_percent=0.0, mix_end_percent=1.0, blocks="all")
    for weight, lora, close in ((1.0, 1.0, False), (0.0, 1.0, False), (1.0, 0.0, False), (0.0, 0.0, True)):
        identity = random_identity(seed=2, token_dim=with_lora.token_dim)
        model = InfiniteIDApply().apply(tiny_unet, with_lora, identity, weight=weight, lora_strength=lora,
                                        **settings)[0]
        assert (rel(ksampler(model, latent), unpatched) < TEXT_TOL) == close, (weight, lora)


# ----------------------------------------------------------------------------- the March-2024 tree

@pytest.mark.skipif(KEYED, reason="this host has keyed wrappers: a plain KSampler runs both streams")
def test_plain_ksampler_is_refused_on_hosts_without_keyed_wrappers(patched):
    with pytest.raises(RuntimeError) as info:
        ksampler(patched, {"samples": torch.zeros(1, 4, 16, 16)})
    assert str(info.value) == USE_THE_SAMPLER
    assert "Update ComfyUI" in USE_THE_SAMPLER and "'InfiniteID Sampler'" in USE_THE_SAMPLER
