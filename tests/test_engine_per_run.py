"""Per-run work stays out of the sampling loop; the patch asks nothing of the memory manager.

The identity's image keys/values are projected once when sampling starts. These tests
poison the adapter weights and the identity tokens right after the first U-Net call has
begun: any projection, or any copy of the tokens to a device, made during the loop
would read the poison and turn the result into NaN.
"""
from __future__ import annotations

import copy

import comfy.model_management as mm
import torch

from infinite_id.demo.tiny_identity import build_tiny_adapter, random_identity
from infinite_id.model_patch import run_state as run_module
from infinite_id.model_patch.install import apply_patch, find_patch, per_call_wrapper
from infinite_id.model_patch.run_state import RunState
from infinite_id.model_patch.settings import PatchSettings
from infinite_id.nodes.sampler import InfiniteIDSampler
from infinite_id.sampling.dual_stream import prepare_run
from infinite_id.unet.layers import SDXL_LAYERS


def conds():
    g = torch.Generator().manual_seed(0)
    one = lambda: [[torch.randn(1, 77, 64, generator=g), {"pooled_output": torch.randn(1, 32, generator=g)}]]
    return one(), one()


def sample(model, sampler="euler_ancestral", steps=3, rows=2):
    pos, neg = conds()
    with torch.inference_mode():
        identity, text = InfiniteIDSampler().sample(model, 4, steps, 5.0, sampler, "normal", pos, neg,
                                                    {"samples": torch.zeros(rows, 4, 16, 16)})
    return identity["samples"], text["samples"]


def test_nothing_reads_adapter_weights_or_tokens_during_the_loop(tiny_unet, monkeypatch):
    adapter, identity = build_tiny_adapter(tiny_unet, seed=1), random_identity(seed=2, n=2)
    clean = sample(apply_patch(tiny_unet, adapter, identity, PatchSettings(adain="mean")))

    poisoned_adapter, poisoned_identity = copy.deepcopy(adapter), copy.deepcopy(identity)
    model = apply_patch(tiny_unet, poisoned_adapter, poisoned_identity, PatchSettings(adain="mean"))
    projections = []
    real_project = run_module.project_identity
    monkeypatch.setattr(run_module, "project_identity", lambda *a, **k: projections.append(1) or real_project(*a, **k))

    def poison(module, args):
        with torch.inference_mode(False), torch.no_grad():
            for p in poisoned_adapter.kv.parameters():
                p.fill_(float("nan"))
            poisoned_identity.cond.fill_(float("nan"))
            poisoned_identity.uncond.fill_(float("nan"))

    handle = tiny_unet.model.diffusion_model.register_forward_pre_hook(poison)
    try:
        identity_latent, text_latent = sample(model)
    finally:
        handle.remove()
    assert projections == [1]  # once for the run
    assert torch.isfinite(identity_latent).all()
    # NaN weights read anywhere in the loop would make the result NaN. Equal up to float
    # rounding, not bit for bit: the 2024 tree's sub-quadratic attention picks its query
    # chunk from the free memory, so two runs in one process can round differently
    # (seen when other tests ran before this one).
    for got, want in zip((identity_latent, text_latent), clean):
        assert float((got - want).abs().max() / want.abs().max()) < 1e-5


def test_keys_values_follow_the_device_and_dtype_of_the_call(tiny_unet):
    adapter, identity = build_tiny_adapter(tiny_unet, seed=1), random_identity(seed=2)
    patch = find_patch(apply_patch(tiny_unet, adapter, identity, PatchSettings()))
    state = RunState(patch, tiny_unet.model.model_sampling, 1, 1, torch.device("cpu"), torch.float32)
    layer = SDXL_LAYERS[5]
    here = state.keys_values(layer, torch.device("cpu"), torch.float32)
    other = state.keys_values(layer, torch.device("meta"), torch.float32)  # a second device
    assert other[0][0].device.type == "meta" and other[0][0].shape == here[0][0].shape
    assert state.keys_values(layer, torch.device("meta"), torch.float32) is other  # copied once per device
    half = state.keys_values(layer, torch.device("cpu"), torch.bfloat16)
    assert half[1][1].dtype == torch.bfloat16
    exact = (identity.uncond.double() @ adapter.kv.to_v[5].weight.double().t()).to(torch.bfloat16)
    assert torch.equal(half[1][1], exact)  # rounded from float32, not from a rounded value


def test_patched_model_adds_no_model_to_the_memory_manager(tiny_unet):
    adapter, identity = build_tiny_adapter(tiny_unet, seed=1), random_identity(seed=2)
    model = prepare_run(apply_patch(tiny_unet, adapter, identity, PatchSettings()), 1)
    options = model.model_options
    objects = [*options["transformer_options"]["patches_replace"]["attn1"].values(),
               *options["transformer_options"]["patches_replace"]["attn2"].values(),
               per_call_wrapper(model)]
    assert all(obj.models() == [] for obj in objects)
    if hasattr(model, "model_patches_models"):  # current hosts load these with the U-Net
        assert model.model_patches_models() == []
    mm.load_models_gpu([model])
    # Entries whose model an earlier test let go (current hosts hold models by weak
    # reference until their next cleanup) are skipped: they belong to no one now.
    modules = [loaded.model.model for loaded in mm.current_loaded_models if loaded.model is not None]
    assert model.model in modules
    assert not any(isinstance(module, type(adapter.kv)) for module in modules)


def test_run_state_is_shared_not_copied_by_clones(tiny_unet):
    adapter, identity = build_tiny_adapter(tiny_unet, seed=1), random_identity(seed=2)
    model = prepare_run(apply_patch(tiny_unet, adapter, identity, PatchSettings()), 1)
    clone = model.clone().clone()
    from infinite_id.model_patch.wrapper import RUN_KEY

    assert clone.model_options["transformer_options"][RUN_KEY] is model.model_options["transformer_options"][RUN_KEY]
