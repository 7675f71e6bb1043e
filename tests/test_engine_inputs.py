"""Bad inputs to Apply and the samplers end in a message that names the node and input."""
from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from infinite_id.demo.tiny_identity import build_tiny_adapter, random_identity
from infinite_id.host.errors import node_error  # noqa: F401  (the nodes' error layer under test)
from infinite_id.identity.types import Identity
from infinite_id.nodes.apply import InfiniteIDApply
from infinite_id.nodes.sampler import InfiniteIDSampler

ROOT = Path(__file__).resolve().parent.parent
APPLY = dict(weight=1.0, attention_mode="mixed", cross_attention_merge=True, adain="off", start_percent=0.0,
             end_percent=1.0, mix_start_percent=0.0, mix_end_percent=1.0, blocks="all")


def conds():
    g = torch.Generator().manual_seed(0)
    one = lambda: [[torch.randn(1, 77, 64, generator=g), {"pooled_output": torch.randn(1, 32, generator=g)}]]
    return one(), one()


@pytest.fixture(scope="module")
def adapter(tiny_unet):
    return build_tiny_adapter(tiny_unet, seed=1)


@pytest.fixture(scope="module")
def patched(tiny_unet, adapter):
    return InfiniteIDApply().apply(tiny_unet, adapter, random_identity(seed=2), **APPLY)[0]


def sample(model, latent):
    pos, neg = conds()
    with torch.inference_mode():
        return InfiniteIDSampler().sample(model, 1, 2, 5.0, "euler", "normal", pos, neg, latent)


@pytest.mark.parametrize("name,value", [("lora_strength", float("nan")), ("weight", float("inf")),
                                        ("start_percent", float("nan"))])
def test_non_finite_switches_are_refused_at_apply(tiny_unet, adapter, name, value):
    settings = {**APPLY, name: value}
    with pytest.raises(ValueError, match=rf"^InfiniteIDApply: {name}: must be a (finite )?number"):
        InfiniteIDApply().apply(tiny_unet, adapter, random_identity(seed=2), **settings)


@pytest.mark.parametrize("samples,message", [
    (torch.zeros(1, 4, 1, 16, 16), r"^InfiniteIDSampler: latent_image: expected an image latent \[batch, channels, "
                                   r"height, width\], got a 5-D latent"),
    (torch.zeros(0, 4, 16, 16), r"^InfiniteIDSampler: latent_image: the latent batch is empty \(0 rows\)"),
    (torch.full((1, 4, 16, 16), float("nan")), r"^InfiniteIDSampler: latent_image contains NaN"),
])
def test_bad_latents_are_refused(patched, samples, message):
    with pytest.raises(ValueError, match=message):
        sample(patched, {"samples": samples})


def test_non_finite_result_is_reported_with_what_to_change(tiny_unet):
    adapter = build_tiny_adapter(tiny_unet, seed=1)
    with torch.no_grad():
        for p in adapter.kv.parameters():
            p.mul_(1e30)  # finite weights whose keys overflow
    model = InfiniteIDApply().apply(tiny_unet, adapter, random_identity(seed=2), **APPLY)[0]
    with pytest.raises(ValueError, match=r"^InfiniteIDSampler: sampling produced NaN or infinite values\. Lower "
                                         r"'weight' on InfiniteID Apply"):
        sample(model, {"samples": torch.zeros(1, 4, 16, 16)})


def test_identity_from_another_adapter_format_is_refused_naming_both(tiny_unet, adapter):
    identity = random_identity(seed=2)
    foreign = Identity(cond=identity.cond, uncond=identity.uncond,
                       info={"adapter": "ip-adapter-faceid-plusv2_sdxl.bin", "adapter_format": "faceid-plus-v2"})
    adapter.info["format"] = "infinite-id"
    try:
        with pytest.raises(ValueError, match=r"^InfiniteIDApply: identity: it was encoded with a faceid-plus-v2 "
                                             r"adapter \('ip-adapter-faceid-plusv2_sdxl.bin'\) but the adapter "
                                             rf"connected here, '{adapter.name}', is infinite-id"):
            InfiniteIDApply().apply(tiny_unet, adapter, foreign, **APPLY)
    finally:
        adapter.info["format"] = "demo"


def test_identity_from_another_adapter_name_is_logged(tiny_unet, adapter, caplog):
    identity = random_identity(seed=2)
    other = Identity(cond=identity.cond, uncond=identity.uncond,
                     info={"mix": [{"adapter": "old-checkpoint.safetensors", "adapter_format": "demo"}]})
    with caplog.at_level(logging.WARNING):
        InfiniteIDApply().apply(tiny_unet, adapter, other, **APPLY)
    assert f"encoded with adapter 'old-checkpoint.safetensors' and is applied with '{adapter.name}'" in caplog.text


def test_abnormal_exit_after_sampling_prints_no_shutdown_traceback():
    script = textwrap.dedent(f"""
        import sys, importlib.util, torch
        spec = importlib.util.spec_from_file_location("infinite_id_bootstrap", {str(ROOT / "host" / "locate.py")!r})
        boot = importlib.util.module_from_spec(spec); sys.modules[spec.name] = boot; spec.loader.exec_module(boot)
        boot.import_host(); boot.load_pack()
        import comfy.model_management as mm
        from infinite_id.demo.tiny_sdxl import build_tiny_sdxl
        from infinite_id.demo.tiny_identity import build_tiny_adapter, random_identity
        from infinite_id.model_patch.install import apply_patch
        from infinite_id.model_patch.settings import PatchSettings
        from infinite_id.sampling.dual_stream import prepare_run
        unet = build_tiny_sdxl(0)
        model = prepare_run(apply_patch(unet, build_tiny_adapter(unet), random_identity(), PatchSettings()), 1)
        mm.load_models_gpu([model])
        raise SystemExit(3)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "meta_path" not in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("name", ["sampler_name", "scheduler"])
def test_unknown_sampler_or_scheduler_is_refused(patched, name):
    pos, neg = conds()
    args = dict(seed=1, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal")
    args[name] = "sample_5"
    with pytest.raises(ValueError, match=rf"^InfiniteIDSampler: {name}: 'sample_5' is not one of this ComfyUI's"):
        InfiniteIDSampler().sample(patched, positive=pos, negative=neg, latent_image={"samples": torch.zeros(1, 4, 16, 16)},
                                   **args)
