"""The suite's device and memory manager, and identity keys/values on the device of each call.

These mean most on a GPU: scripts/device_check.py runs them (with the dtype and sampling
contract tests) on CUDA under each memory manager, chosen by ``INFINITEID_VRAM``. Here
on the CPU they check the same contract where every device is the CPU.
"""
from __future__ import annotations

import comfy.model_management as mm
import comfy.model_patcher
import pytest
import torch
from test_sampling_contract import _prompts

from infinite_id.demo.tiny_identity import build_tiny_adapter, random_identity
from infinite_id.demo.tiny_sdxl import build_tiny_sdxl
from infinite_id.model_patch.install import PatchSettings, apply_patch
from infinite_id.model_patch.run_state import RunState
from infinite_id.sampling.dual_stream import sample_dual_stream

ON_CUDA = mm.get_torch_device().type == "cuda"
MODE = __import__("infinite_id_bootstrap").vram_mode()
EXPECTED_STATE = {"lowvram": "LOW_VRAM", "novram": "NO_VRAM", "highvram": "HIGH_VRAM"}


def test_the_requested_memory_manager_is_in_force():
    """A run under INFINITEID_VRAM=X really runs under X (else the GPU check would measure
    the same manager four times)."""
    state = mm.vram_state.name
    if not ON_CUDA:
        assert state in ("CPU", "DISABLED") and MODE != "dynamic"
        return
    if MODE in EXPECTED_STATE:
        assert state == EXPECTED_STATE[MODE]
    dynamic = getattr(comfy.model_patcher, "ModelPatcherDynamic", None)
    built = type(build_tiny_sdxl(0))
    if MODE == "dynamic":
        assert dynamic is not None and issubclass(built, dynamic)
    elif dynamic is not None:
        assert not issubclass(built, dynamic)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_identity_keys_values_are_on_the_device_and_dtype_of_each_call(monkeypatch, dtype):
    """Every attention call gets keys/values where its ``q`` is: on the GPU under every
    memory manager (partial loading keeps some weights on the CPU, never ``q``)."""
    model = build_tiny_sdxl(0, dtype)
    patched = apply_patch(model, build_tiny_adapter(model, seed=1), random_identity(seed=2), PatchSettings())
    seen = []
    original = RunState.keys_values

    def recording(self, layer, device, call_dtype):
        kv = original(self, layer, device, call_dtype)
        seen.append((device, call_dtype, kv[0][0].device, kv[0][0].dtype, kv[1][1].device))
        return kv

    monkeypatch.setattr(RunState, "keys_values", recording)
    positive, negative = _prompts(0)
    with torch.inference_mode():
        out = sample_dual_stream(patched, 5, 2, 5.0, "euler", "normal", positive, negative,
                                 {"samples": torch.zeros(1, 4, 16, 16)})
    assert torch.isfinite(out.identity["samples"]).all()
    assert seen, "no attention call asked for the identity's keys/values"
    compute = mm.get_torch_device()
    for device, call_dtype, k_device, k_dtype, v_device in seen:
        assert torch.device(device).type == compute.type
        assert k_device == torch.device(device) and v_device == torch.device(device)
        assert k_dtype == call_dtype == dtype


def test_built_in_models_have_their_weights_under_dynamic_vram(monkeypatch):
    """Dynamic VRAM (current ComfyUI's default on NVIDIA) builds ``comfy.ops`` layers
    without weights, for a checkpoint's state dict to fill. The demo models initialise
    theirs in code: built without ``eager_weights`` they had none and the first sampling
    step failed (``'NoneType' object has no attribute 'device'``, seen on an H200)."""
    memory = pytest.importorskip("comfy.memory_management", reason="a host from before dynamic VRAM")
    if not hasattr(memory, "aimdo_enabled"):
        pytest.skip("a host from before dynamic VRAM")
    import comfy.ops

    from infinite_id.demo.tiny_clip_text import build_tiny_sdxl_clip
    from infinite_id.demo.tiny_clip_vision import build_tiny_clip_vision
    from infinite_id.demo.tiny_vae import build_tiny_vae

    monkeypatch.setattr(memory, "aimdo_enabled", True)
    assert comfy.ops.disable_weight_init.Linear(4, 4).weight is None  # what dynamic VRAM does to a layer
    models = {"unet": build_tiny_sdxl(0).model, "vae": build_tiny_vae(0).first_stage_model,
              "clip": build_tiny_sdxl_clip(0).cond_stage_model, "clip vision": build_tiny_clip_vision(0).model}
    for name, model in models.items():
        layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        assert layers and all(m.weight is not None for m in layers), name
    assert memory.aimdo_enabled  # the flag is restored after each build
