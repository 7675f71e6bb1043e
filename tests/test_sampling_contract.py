"""The dual-stream sampling contract (docs/METHOD_NOTES.md, README "Nodes") on the real host.

The text stream must be exactly core ``KSampler`` (any sampler, batched or split CFG,
with ControlNet, LoRA and other packs' attention patches), the patch must cooperate with
ComfyUI's cloning and memory estimate, and the guider must match the sampler node.
Everything runs on the tiny SDXL-topology U-Net with 16x16 latents.
"""
from __future__ import annotations

import asyncio
import contextlib
import inspect
from pathlib import Path

import comfy.model_management as mm
import nodes
import pytest
import torch
from prompts import base_prompt, infinite_id_nodes, sampler_inputs

from infinite_id.adapter.kv import IdentityKV
from infinite_id.demo.tiny_identity import build_tiny_adapter, random_identity
from infinite_id.demo.tiny_sdxl import TINY_CONTEXT_DIM, TINY_POOLED_DIM, init_weights_, tiny_sdxl_unet_config
from infinite_id.host.executor import capture
from infinite_id.model_patch.install import MEMORY_FACTOR, PatchSettings, apply_patch, per_call_wrapper
from infinite_id.nodes.apply import InfiniteIDApply
from infinite_id.nodes.sampler import InfiniteIDSampler
from infinite_id.unet.layers import SDXL_LAYERS

TOL = 1e-5
SEED = 5
STEPS = 2  # the second step runs after mix_end_percent=0.5 (sigma 0.03 < 1.6)


# ----------------------------------------------------------------------------- helpers

def _cond(gen: torch.Generator) -> list:
    return [[torch.randn(1, 77, TINY_CONTEXT_DIM, generator=gen),
             {"pooled_output": torch.randn(1, TINY_POOLED_DIM, generator=gen)}]]


def _prompts(seed: int = 0) -> tuple[list, list]:
    gen = torch.Generator().manual_seed(seed)
    return _cond(gen), _cond(gen)


def _latent(batch: int = 1) -> dict:
    return {"samples": torch.zeros(batch, 4, 16, 16)}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def core_ksampler(model, positive, negative, latent, seed=SEED, steps=STEPS, cfg=5.0, sampler="euler",
                  scheduler="normal") -> torch.Tensor:
    with torch.inference_mode():
        return nodes.common_ksampler(model, seed, steps, cfg, sampler, scheduler, positive, negative,
                                     latent)[0]["samples"]


def dual(model, positive, negative, latent, seed=SEED, steps=STEPS, cfg=5.0, sampler="euler",
         scheduler="normal") -> tuple[torch.Tensor, torch.Tensor]:
    """``InfiniteIDSampler``'s (identity, text) latents."""
    with torch.inference_mode():
        identity, text = InfiniteIDSampler().sample(model, seed, steps, cfg, sampler, scheduler, positive,
                                                    negative, latent)
    return identity["samples"], text["samples"]


@contextlib.contextmanager
def unet_rows(model_patcher):
    """Record the batch size of every U-Net forward of ``model_patcher``'s diffusion model."""
    rows: list[int] = []
    handle = model_patcher.model.diffusion_model.register_forward_pre_hook(
        lambda module, args: rows.append(int(args[0].shape[0])))
    try:
        yield rows
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def adapter(tiny_unet):
    return build_tiny_adapter(tiny_unet, seed=1)


@pytest.fixture(scope="module")
def identity():
    return random_identity(seed=2)


@pytest.fixture(scope="module")
def patched(tiny_unet, adapter, identity):
    return apply_patch(tiny_unet, adapter, identity, PatchSettings())


@pytest.fixture(scope="module")
def prompts():
    return _prompts(0)


@pytest.fixture(scope="module")
def plain(tiny_unet, patched, prompts):
    """Reference results without ControlNet/LoRA/other patches (batch 1, euler, cfg 5)."""
    pos, neg = prompts
    with unet_rows(tiny_unet) as rows:
        identity, text = dual(patched, pos, neg, _latent(1))
    return {"identity": identity, "text": text, "rows": rows, "core": core_ksampler(tiny_unet, pos, neg, _latent(1))}


# ----------------------------------------------------------------------------- 1. any sampler

@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("sampler", ["euler", "heun", "euler_ancestral", "dpmpp_2m_sde"])
def test_text_stream_equals_core_ksampler(tiny_unet, patched, prompts, sampler, batch):
    pos, neg = prompts
    # Stochastic samplers draw noise at two steps. The remaining difference is the host's
    # own rounding for a different batch size (core KSampler itself differs by ~4e-6 on
    # this chaotic tiny model when the same row runs in a bigger batch); heun's correction
    # amplifies it most near sigma_min, so heun gets one more step (9e-6 -> 4e-6).
    steps = 4 if sampler == "heun" else 3
    core = core_ksampler(tiny_unet, pos, neg, _latent(batch), sampler=sampler, steps=steps)
    identity, text = dual(patched, pos, neg, _latent(batch), sampler=sampler, steps=steps)
    assert text.shape == identity.shape == core.shape == (batch, 4, 16, 16)
    assert rel(text, core) < TOL
    assert rel(identity, text) > 1e-2  # the identity stream is not a copy of the text stream


# ----------------------------------------------------------------------------- 2. split cond/uncond

class _NoFreeMemory:
    """``comfy.model_management`` as the 2024 ``comfy.samplers`` sees it, with no free memory."""

    def __getattr__(self, name):
        return getattr(mm, name)

    @staticmethod
    def get_free_memory(dev=None, torch_free_too=False):
        return (0, 0) if torch_free_too else 0


def _force_cond_uncond_split(monkeypatch) -> None:
    """Make the host's batching decision in ``calc_cond_batch`` see no free memory, so
    that cond and uncond run as separate U-Net calls, as on a low-memory GPU. Only that
    decision is affected (attention kernels size their chunks from free memory too)."""
    import comfy.model_patcher
    import comfy.samplers

    if hasattr(comfy.model_patcher.ModelPatcher, "get_free_memory"):  # newer hosts ask the patcher
        monkeypatch.setattr(comfy.model_patcher.ModelPatcher, "get_free_memory", lambda self, device: 0)
    else:  # the 2024 host asks model_management from comfy/samplers.py
        monkeypatch.setattr(comfy.samplers, "model_management", _NoFreeMemory())


def test_split_cond_uncond_gives_the_same_result(tiny_unet, patched, prompts, monkeypatch):
    pos, neg = prompts
    n, sampler = 2, "euler_ancestral"
    with unet_rows(tiny_unet) as batched_rows:
        id_batched, text_batched = dual(patched, pos, neg, _latent(n), sampler=sampler)
    _force_cond_uncond_split(monkeypatch)
    with unet_rows(tiny_unet) as split_rows:
        id_split, text_split = dual(patched, pos, neg, _latent(n), sampler=sampler)
    calls = STEPS  # euler_ancestral: one model evaluation per step
    assert batched_rows == [2 * 2 * n] * calls, "cond and uncond should share a call when memory allows"
    assert split_rows == [2 * n] * (2 * calls), "the host did not split cond and uncond"
    assert rel(id_split, id_batched) < TOL
    assert rel(text_split, text_batched) < TOL


# ----------------------------------------------------------------------------- 3. cfg 1

def test_cfg_one_skips_uncond_and_still_mixes(tiny_unet, patched, prompts):
    pos, neg = prompts
    with unet_rows(tiny_unet) as rows:
        identity, text = dual(patched, pos, neg, _latent(1), cfg=1.0)
    assert rows and all(r == 2 for r in rows), f"expected cond-only calls of 2 rows, got {rows}"
    assert torch.isfinite(identity).all() and torch.isfinite(text).all()
    assert rel(identity, text) > 1e-2
    assert rel(text, core_ksampler(tiny_unet, pos, neg, _latent(1), cfg=1.0)) < TOL


# ----------------------------------------------------------------------------- 4. ControlNet

def _tiny_controlnet(seed: int = 3):
    """A ControlNet for the tiny U-Net, built with ComfyUI's own classes, every weight
    (zero-convs included) seeded non-zero."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.ops

    config = tiny_sdxl_unet_config()
    config.pop("out_channels")
    config.update(hint_channels=3, dtype=torch.float32, operations=comfy.ops.disable_weight_init)
    from infinite_id.host.compat import eager_weights

    with eager_weights():
        control_model = comfy.cldm.cldm.ControlNet(**config)
    init_weights_(control_model, seed)
    assert all(p.abs().sum() > 0 for p in control_model.zero_convs.parameters())
    return comfy.controlnet.ControlNet(control_model, load_device=mm.get_torch_device())


@pytest.fixture(scope="module")
def controlled_prompts(prompts):
    pos, neg = prompts
    hint = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(9))
    return nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, _tiny_controlnet(), hint, strength=1.0,
                                                            start_percent=0.0, end_percent=1.0)


@pytest.fixture(scope="module")
def controlled_core(tiny_unet, controlled_prompts):
    return core_ksampler(tiny_unet, *controlled_prompts, _latent(1))


def test_controlnet_text_stream_equals_core_and_control_changes_both_streams(
        patched, plain, controlled_prompts, controlled_core):
    identity_c, text_c = dual(patched, *controlled_prompts, _latent(1))
    assert rel(controlled_core, plain["core"]) > 1e-2  # the ControlNet does something
    assert rel(text_c, controlled_core) < TOL
    assert rel(text_c, plain["text"]) > 1e-2
    assert rel(identity_c, plain["identity"]) > 1e-2


def test_controlnet_weight_zero_identity_equals_text(tiny_unet, adapter, identity, controlled_prompts):
    cpos, cneg = controlled_prompts
    model = apply_patch(tiny_unet, adapter, identity, PatchSettings(weight=0.0))
    identity_c, text_c = dual(model, cpos, cneg, _latent(1))
    assert rel(identity_c, text_c) < TOL


def test_controlnet_residuals_follow_rows_after_the_mixing_window(
        tiny_unet, adapter, identity, controlled_prompts, controlled_core):
    """After ``mix_end_percent`` only identity rows run: the ControlNet residuals must be
    cut to those rows too (the U-Net silently drops residuals of the wrong batch). With
    weight 0 the identity stream is then plain sampling under control all the way."""
    model = apply_patch(tiny_unet, adapter, identity, PatchSettings(weight=0.0, mix_end_percent=0.5))
    with unet_rows(tiny_unet) as rows:
        identity_c, _ = dual(model, *controlled_prompts, _latent(1))
    assert rows == [4, 2]  # the second step ran identity rows only
    assert rel(identity_c, controlled_core) < TOL


# ----------------------------------------------------------------------------- 5. LoRA

def _tiny_lora(model_patcher, seed: int = 4, rank: int = 4) -> dict:
    """A LoRA state dict in the common ``lora_unet_*`` naming for the tiny U-Net's
    self-attention queries and cross-attention values."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, module in model_patcher.model.diffusion_model.named_modules():
        if not (name.endswith("attn1.to_q") or name.endswith("attn2.to_v")):
            continue
        key = "lora_unet_" + name.replace(".", "_")
        sd[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=gen) / module.in_features ** 0.5
        sd[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=gen) * 0.5 / rank ** 0.5
        sd[f"{key}.alpha"] = torch.tensor(float(rank))
    return sd


def test_lora_model_samples_and_text_stream_equals_core(tiny_unet, adapter, identity, prompts, plain):
    import comfy.sd

    pos, neg = prompts
    lora = _tiny_lora(tiny_unet)
    lora_model, _ = comfy.sd.load_lora_for_models(tiny_unet, None, lora, 1.0, 0.0)
    assert len(lora_model.patches) == len(lora) // 3 == 140  # every LoRA key found a U-Net weight
    model = apply_patch(lora_model, adapter, identity, PatchSettings())
    identity_l, text_l = dual(model, pos, neg, _latent(1))
    core_l = core_ksampler(lora_model, pos, neg, _latent(1))
    assert rel(text_l, core_l) < TOL
    assert rel(core_l, plain["core"]) > 1e-2
    assert rel(identity_l, plain["identity"]) > 1e-2
    assert rel(identity_l, text_l) > 1e-2


# ----------------------------------------------------------------------------- 6. other packs' patches

def _half_attention(q, k, v, extra_options):
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(q, k, v, extra_options["n_heads"]) * 0.5


def test_existing_attn2_replacement_is_chained(tiny_unet, adapter, identity, prompts, plain):
    pos, neg = prompts
    pre = tiny_unet.clone()
    for key in SDXL_LAYERS:
        pre.set_model_attn2_replace(_half_attention, *key)
    model = apply_patch(pre, adapter, identity, PatchSettings())
    identity_pre, text_pre = dual(model, pos, neg, _latent(1))
    core_pre = core_ksampler(pre, pos, neg, _latent(1))
    assert rel(core_pre, plain["core"]) > 1e-2  # the prior patch matters
    assert rel(text_pre, core_pre) < TOL
    assert rel(identity_pre, plain["identity"]) > 1e-2


def test_existing_attn1_replacement_is_refused(tiny_unet, adapter, identity):
    pre = tiny_unet.clone()
    pre.set_model_attn1_replace(lambda q, k, v, extra: q, "input", 4, 0)
    with pytest.raises(ValueError, match="another node .*replaces self-attention"):
        apply_patch(pre, adapter, identity, PatchSettings())


def test_applying_twice_points_to_mix(tiny_unet, adapter, identity):
    settings = dict(weight=1.0, attention_mode="mixed", cross_attention_merge=True, adain="off", start_percent=0.0,
                    end_percent=1.0, mix_start_percent=0.0, mix_end_percent=1.0, blocks="all")
    once = InfiniteIDApply().apply(tiny_unet, adapter, identity, **settings)[0]
    with pytest.raises(ValueError, match="InfiniteID Mix"):
        InfiniteIDApply().apply(once, adapter, identity, **settings)


# ----------------------------------------------------------------------------- 7. clone

def _patch_kvs(model_patcher) -> list[IdentityKV]:
    options = model_patcher.model_options
    replaced = options["transformer_options"]["patches_replace"]
    objects = [*replaced["attn1"].values(), *replaced["attn2"].values(), per_call_wrapper(model_patcher)]
    return [obj.patch.adapter.kv for obj in objects]


def test_clone_shares_adapter_weights(patched, adapter):
    original = {p.data_ptr() for p in adapter.kv.parameters()}
    clone = patched.clone().clone()
    kvs = _patch_kvs(clone)
    assert len(kvs) == 2 * len(SDXL_LAYERS) + 1
    for kv in kvs:
        assert kv is adapter.kv
        assert {p.data_ptr() for p in kv.parameters()} == original


# ----------------------------------------------------------------------------- 8. memory estimate

def _estimate(model_patcher, shape) -> float:
    """The estimate the host uses while sampling: with the patcher's object patches loaded."""
    mm.load_models_gpu([model_patcher])
    return float(model_patcher.model.memory_required(shape))


def test_memory_estimate_is_scaled_for_the_patched_model_only(tiny_unet, adapter, identity):
    shape = [4, 4, 16, 16]
    before = _estimate(tiny_unet, shape)
    model = apply_patch(tiny_unet, adapter, identity, PatchSettings())
    assert _estimate(model, shape) == pytest.approx(before * MEMORY_FACTOR, rel=1e-9)
    assert _estimate(tiny_unet, shape) == pytest.approx(before, rel=1e-9)


# ----------------------------------------------------------------------------- 9. guider

def _load_custom_sampler_nodes() -> None:
    import comfy.samplers

    if "SamplerCustomAdvanced" in nodes.NODE_CLASS_MAPPINGS:
        return
    path = Path(nodes.__file__).parent / "comfy_extras" / "nodes_custom_sampler.py"
    if not hasattr(comfy.samplers, "CFGGuider") or not path.is_file():
        reason = "this host has no GUIDER / SamplerCustomAdvanced (March-2024 ComfyUI)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    result = nodes.load_custom_node(str(path), module_parent="comfy_extras")
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    assert "SamplerCustomAdvanced" in nodes.NODE_CLASS_MAPPINGS


def test_guider_equals_sampler_node(runner):
    sampler, steps = "euler_ancestral", 3  # per-step noise (drawn twice) must come from the same seed too
    _load_custom_sampler_nodes()
    prompt = base_prompt()
    prompt.update(infinite_id_nodes())
    prompt["iid"] = {"class_type": "InfiniteIDSampler",
                     "inputs": {"model": ["apply", 0], **sampler_inputs(seed=7, steps=steps, sampler=sampler)}}
    prompt["guider"] = {"class_type": "InfiniteIDGuider", "inputs": {
        "model": ["apply", 0], "positive": ["pos", 0], "negative": ["neg", 0], "cfg": 5.0}}
    prompt["noise"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 7}}
    prompt["select"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}}
    prompt["sigmas"] = {"class_type": "BasicScheduler", "inputs": {
        "model": ["apply", 0], "scheduler": "normal", "steps": steps, "denoise": 1.0}}
    prompt["sca"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["select", 0], "sigmas": ["sigmas", 0],
        "latent_image": ["latent", 0]}}
    prompt["out1"] = capture("iid", latent=["iid", 0])
    prompt["out2"] = capture("sca", latent=["sca", 0])
    got = runner.run(prompt)
    from_sampler, from_guider = got["iid"]["latent"]["samples"], got["sca"]["latent"]["samples"]
    assert from_guider.shape == from_sampler.shape == (1, 4, 16, 16)
    assert rel(from_guider, from_sampler) < TOL


# ----------------------------------------------------------------------------- 10. mixing window

def test_mix_end_percent_runs_fewer_rows(tiny_unet, adapter, identity, prompts, plain):
    model = apply_patch(tiny_unet, adapter, identity, PatchSettings(mix_end_percent=0.5))
    with unet_rows(tiny_unet) as half_rows:
        identity_h, text_h = dual(model, *prompts, _latent(1))
    assert plain["rows"] == [4] * STEPS  # full window: 2 streams x (cond, uncond) at every step
    assert half_rows == [4, 2]  # after the window only the identity rows run
    assert sum(half_rows) < sum(plain["rows"])
    assert torch.isfinite(identity_h).all() and torch.isfinite(text_h).all()
