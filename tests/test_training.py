"""Identity-enhanced training (docs/TRAINING.md) on the tiny models, through the real host.

The objective is checked against a second implementation written here: forward hooks
on the U-Net's own cross-attention modules replace their output with attention over
the identity tokens, and the noised input and target are built from the schedule's
alphas directly. Everything else is behaviour: the loss falls, the U-Net is untouched,
the prompt has no effect, resume continues the curve, bad data is named.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import shutil

import pytest
import torch
import torch.nn.functional as F
from training_fixtures import RESOLUTION, SMALL_MAPPER, write_people

from infinite_id.demo.nodes import _clip_vision, _face_analysis
from infinite_id.demo.tiny_clip_text import build_tiny_sdxl_clip
from infinite_id.demo.tiny_sdxl import build_tiny_sdxl
from infinite_id.demo.tiny_vae import build_tiny_vae
from infinite_id.training.cache import CacheSettings, Preprocessor, build_cache, cached_uncond_clip
from infinite_id.training.dataset import scan_photo_folder
from infinite_id.training.trainer import TrainConfig, Trainer, TrainingError, TrainingModels
from infinite_id.unet.layers import SDXL_LAYERS


@pytest.fixture(scope="module")
def models():
    # Fresh models: the demo loaders' cached ones have been through other tests' inference.
    return TrainingModels(build_tiny_sdxl(0), build_tiny_vae(0), build_tiny_sdxl_clip(0), "tiny demo SDXL", "demo-hash")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, models):
    root = write_people(tmp_path_factory.mktemp("people"))
    settings = CacheSettings(resolution=RESOLUTION, models="demo")
    cache = tmp_path_factory.mktemp("cache")
    clip_vision = _clip_vision()
    data = build_cache(scan_photo_folder(root), cache, Preprocessor(_face_analysis(640), clip_vision, models.vae,
                                                                    settings), settings)
    return {"root": root, "data": data, "uncond": cached_uncond_clip(cache, clip_vision, settings), "cache": cache,
            "settings": settings}


def config(**changes) -> TrainConfig:
    base = dict(steps=4, batch_size=2, lr=1e-3, precision="fp32", resolution=RESOLUTION, save_every=0,
                preview_every=0, gradient_checkpointing=False, **SMALL_MAPPER)
    base.update(changes)
    return TrainConfig(**base)


def trainer(models, dataset, out, **changes) -> Trainer:
    return Trainer(models, dataset["data"], dataset["uncond"], config(**changes), out, holdout=[3])


def fixed_loss(t: Trainer, seed: int = 123, batches: int = 6) -> float:
    """Mean loss over the same samples, timesteps and noise every time it is called."""
    saved = t.generator.get_state()
    t.generator.manual_seed(seed)
    with torch.no_grad():
        value = sum(float(t.micro_batch_loss()) for _ in range(batches)) / batches
    t.generator.set_state(saved)
    return value


def test_loss_falls_and_unet_stays_bit_identical(models, dataset, tmp_path):
    unet = models.model.model.diffusion_model
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    t = trainer(models, dataset, tmp_path, steps=40, identity_drop=0.0, gradient_checkpointing=True)
    start = fixed_loss(t)
    t.run()
    end = fixed_loss(t)
    assert end < 0.9 * start, (start, end)
    after = unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not p.requires_grad and p.grad is None for p in unet.parameters())
    assert not any("forward" in vars(m) for m in unet.modules())  # checkpointing wrappers removed
    assert all(layer.calls > 0 for layer in t.objective.attn2.values()) and len(t.objective.attn2) == 70


def _reference_loss(t: Trainer, seed: int) -> torch.Tensor:
    """The same sample by a second route: hooks on the U-Net's attn2 modules, alphas by hand."""
    gen = torch.Generator().manual_seed(seed)
    batch = t.sampler.draw(2, gen)
    tokens = t.adapter.mapper(batch.face_embeds, batch.clip_hidden)
    base = t.models.model.model
    x0 = base.latent_format.process_in(batch.latents)
    steps = torch.randint(0, 1000, (2,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    sigmas = base.model_sampling.sigmas
    alpha_bar = (1.0 / (1.0 + sigmas ** 2))[steps].view(-1, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    unet = base.diffusion_model
    handles, n = [], 0
    for name, blocks in (("input", unet.input_blocks), ("middle", [unet.middle_block]), ("output", unet.output_blocks)):
        for index, block in enumerate(blocks):
            count = 0
            for module in block.modules():
                if type(module).__name__ == "BasicTransformerBlock":
                    i = SDXL_LAYERS.index((name, index, count))
                    attn = module.attn2
                    heads = attn.heads

                    def hook(mod, args, kwargs, output, i=i, heads=heads):
                        q = mod.to_q(args[0])
                        k, v = t.adapter.kv.to_k[i](tokens), t.adapter.kv.to_v[i](tokens)
                        split = lambda x: x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)
                        w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / split(q).shape[-1] ** 0.5, dim=-1)
                        out = (w @ split(v)).transpose(1, 2).reshape(q.shape)
                        return mod.to_out(out)
                    handles.append(attn.register_forward_hook(hook, with_kwargs=True))
                    count += 1
                    n += 1
    assert n == 70
    try:
        y = t.objective.size_conditioning(batch.sizes, RESOLUTION)
        context = torch.zeros(2, 3, 64)
        pred = unet(x_t, base.model_sampling.timestep(sigmas[steps]).float(), context=context, y=y)
    finally:
        for h in handles:
            h.remove()
    return F.mse_loss(pred, noise)


def test_objective_equals_second_implementation(models, dataset, tmp_path):
    t = trainer(models, dataset, tmp_path)
    t.generator.manual_seed(7)
    loss = t.micro_batch_loss()
    expected = _reference_loss(t, 7)
    torch.testing.assert_close(loss, expected, rtol=2e-5, atol=1e-6)


def _grads(t: Trainer, context=None, seed=11):
    t.generator.manual_seed(seed)
    t.optimizer.zero_grad(set_to_none=True)
    loss = t.micro_batch_loss(context=context)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in t.params]


def test_prompt_has_no_effect_on_outputs_or_gradients(models, dataset, tmp_path):
    t = trainer(models, dataset, tmp_path)
    gen = torch.Generator().manual_seed(0)
    loss_a, grads_a = _grads(t, torch.randn(2, 7, 64, generator=gen) * 3)
    loss_b, grads_b = _grads(t, torch.randn(2, 5, 64, generator=gen) * 3)
    loss_c, grads_c = _grads(t)  # what training uses: no prompt at all
    assert torch.equal(loss_a, loss_b) and torch.equal(loss_a, loss_c)
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(grads_a, grads_b, grads_c))
    # The identity does matter (so the test above could fail): another batch, another loss.
    loss_d, _ = _grads(t, seed=12)
    assert not torch.equal(loss_a, loss_d)
    assert any(g.abs().sum() > 0 for g in grads_a[-140:])  # the key/value projections get gradients


def test_gradient_checkpointing_gives_the_same_gradients(models, dataset, tmp_path):
    from infinite_id.training.objective import gradient_checkpointing

    t = trainer(models, dataset, tmp_path, gradient_checkpointing=False)
    loss_plain, grads_plain = _grads(t)
    t.config.gradient_checkpointing = True
    loss_ckpt, grads_ckpt = _grads(t)
    torch.testing.assert_close(loss_ckpt, loss_plain)
    for a, b in zip(grads_ckpt, grads_plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    with gradient_checkpointing(models.model.model.diffusion_model) as wrapped:
        assert wrapped == 11 + 17  # SDXL: 11 SpatialTransformers, 17 ResBlocks (6 input, 2 middle, 9 output)


def _losses(folder):
    with open(folder / "loss.csv", newline="") as f:
        return [(int(r["step"]), r["loss"]) for r in csv.DictReader(f)]


def test_resume_continues_the_same_loss_curve(models, dataset, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    trainer(models, dataset, straight, steps=6, accumulate=2, save_every=3).run()
    first = trainer(models, dataset, split, steps=3, accumulate=2)
    first.run()
    # A crash after step 3's checkpoint may leave later rows in the log: resume drops them.
    with open(split / "loss.csv", "a") as f:
        f.write("4,9.999,0.001,0,0\n")
    second = trainer(models, dataset, split, steps=6, accumulate=2)
    second.resume()
    assert second.step == 3
    second.run()
    assert _losses(split) == _losses(straight) and len(_losses(split)) == 6
    with pytest.raises(TrainingError, match="resolution 64 -> 128"):
        trainer(models, dataset, split, steps=6, resolution=128).resume()


def test_saved_adapter_loads_in_the_loader_and_samples(models, dataset, tmp_path, runner):
    import folder_paths
    from identity_prompts import as_image, image_node
    from prompts import base_prompt, infinite_id_nodes, sampler_inputs
    from safetensors import safe_open
    from training_fixtures import person_photo

    from infinite_id.host.executor import capture

    t = trainer(models, dataset, tmp_path / "run", steps=2)
    final = t.run()
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    shutil.copy(final, adapters / "trained.safetensors")
    with safe_open(str(adapters / "trained.safetensors"), "pt") as f:
        meta, stored = f.metadata(), f.get_tensor("ip.1.to_k.weight")
    assert meta["format"] == "infinite-id" and meta["training_steps"] == "2" and stored.dtype == torch.float16
    assert meta["training_base_model_sha256"] == "demo-hash" and meta["training_people"] == "3"
    assert meta["training_photos"] == "9" and meta["training_resolution"] == "64"

    saved = folder_paths.folder_names_and_paths.get("infiniteid")
    folder_paths.folder_names_and_paths["infiniteid"] = ([str(adapters)], {".safetensors"})
    getattr(folder_paths, "filename_list_cache", {}).pop("infiniteid", None)
    try:
        prompt = base_prompt(width=64, height=64)
        prompt.update(infinite_id_nodes())
        prompt["adapter"] = {"class_type": "InfiniteIDAdapterLoader", "inputs": {"adapter_name": "trained.safetensors"}}
        prompt.update({"fa": {"class_type": "InfiniteIDDemoFaceAnalysis", "inputs": {}},
                       "cv": {"class_type": "InfiniteIDDemoCLIPVision", "inputs": {}},
                       "img": image_node(as_image(person_photo(3, 0))),
                       "enc": {"class_type": "InfiniteIDEncode", "inputs": {
                           "face_analysis": ["fa", 0], "clip_vision": ["cv", 0], "adapter": ["adapter", 0],
                           "image": ["img", 0], "face_index": -1, "average": "embeddings",
                           "skip_images_without_face": True}}})
        prompt["apply"]["inputs"]["identity"] = ["enc", 0]
        prompt["iid"] = {"class_type": "InfiniteIDSampler", "inputs": {"model": ["apply", 0], **sampler_inputs(steps=2)}}
        prompt["out"] = capture("iid", adapter=["adapter", 0], identity=["iid", 0], text=["iid", 1])
        got = runner.run(prompt)["iid"]
    finally:
        getattr(folder_paths, "filename_list_cache", {}).pop("infiniteid", None)
        if saved is not None:
            folder_paths.folder_names_and_paths["infiniteid"] = saved
    loaded = got["adapter"]
    assert loaded.info["format"] == "infinite-id"
    for a, b in zip(loaded.kv.to_k, t.adapter.kv.to_k):  # saved as float16 by default
        torch.testing.assert_close(a.weight.float(), b.weight.detach().float(), rtol=1e-3, atol=1e-4)
    identity, text = got["identity"]["samples"], got["text"]["samples"]
    assert identity.shape == (1, 4, 8, 8) and torch.isfinite(identity).all()
    assert not torch.allclose(identity, text)  # the trained identity changes the image


def test_weights_touched_in_inference_mode_still_train(dataset, tmp_path):
    """ComfyUI runs nodes under inference_mode: a U-Net patched there must still train."""
    model = build_tiny_sdxl(0)
    unet = model.model.diffusion_model
    with torch.inference_mode():
        for module in list(unet.modules())[:40]:
            for name, param in list(module._parameters.items()):
                module._parameters[name] = torch.nn.Parameter(param.clone(), requires_grad=False)
    assert any(p.is_inference() for p in unet.parameters())
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    t = Trainer(TrainingModels(model), dataset["data"], dataset["uncond"], config(steps=1), tmp_path, holdout=[3])
    assert not any(p.is_inference() for p in unet.parameters())
    t.run()
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())


def test_out_of_memory_names_the_settings_to_lower(models, dataset, tmp_path):
    t = trainer(models, dataset, tmp_path, batch_size=2)
    unet = models.model.model.diffusion_model

    def fail(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    handle = unet.register_forward_pre_hook(fail)
    try:
        with pytest.raises(TrainingError) as info:
            t.run()
    finally:
        handle.remove()
    message = str(info.value)
    for words in ("out of GPU memory", "batch size 2", "resolution 64", "--batch-size", "--accumulate",
                  "--resolution", "--gradient-checkpointing"):
        assert words in message


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps(models, dataset, tmp_path, precision):
    t = trainer(models, dataset, tmp_path, steps=2, precision=precision, gradient_checkpointing=True)
    t.run()
    rows = _losses(tmp_path)
    assert len(rows) == 2 and all(0 < float(loss) < 10 for _, loss in rows)
    assert all(p.dtype == torch.float32 for p in t.params)  # full-precision master weights


def test_warm_start_from_faceid_plus_v2(models, dataset, tmp_path):
    from test_adapter_formats import faceid_state

    from infinite_id.adapter.loader import load_adapter_state
    from infinite_id.unet.walk import cross_attention_widths

    widths = cross_attention_widths(models.model.model.diffusion_model)
    proj, ip = faceid_state([widths[k][0] for k in SDXL_LAYERS], dim=64, hidden=64, clip=32, lora=False, seed=5)
    source = load_adapter_state({"image_proj": proj, "ip_adapter": ip}, name="faceid.bin")
    t = Trainer(models, dataset["data"], dataset["uncond"], config(), tmp_path, holdout=[3], init=source)
    assert torch.equal(t.adapter.kv.to_k[5].weight, ip["11.to_k_ip.weight"])
    assert torch.equal(t.adapter.kv.to_v[69].weight, ip["139.to_v_ip.weight"])
    assert torch.equal(t.adapter.mapper.face_mapper.net[0].weight, proj["proj.0.weight"])
    assert t.metadata()["training_warm_start"] == "faceid.bin"


# ----------------------------------------------------------------------------- bad data

def test_empty_folder_and_loose_photos_are_explained(tmp_path):
    from infinite_id.training.dataset import TrainingDataError

    with pytest.raises(TrainingDataError, match="no person subfolders"):
        scan_photo_folder(tmp_path)
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(TrainingDataError, match="holds 1 photo\\(s\\) directly: move each person's photos"):
        scan_photo_folder(tmp_path)
    with pytest.raises(TrainingDataError, match="is not a folder"):
        scan_photo_folder(tmp_path / "missing")


def test_one_photo_per_person_is_refused(tmp_path, caplog):
    from infinite_id.training.dataset import TrainingDataError

    write_people(tmp_path, people=2, photos=1)
    with pytest.raises(TrainingDataError) as info:
        scan_photo_folder(tmp_path)
    assert "'person0' has 1 photo(s)" in str(info.value) and "at least two" in str(info.value)
    write_people(tmp_path / "more", people=1, photos=2)
    shutil.move(str(tmp_path / "more" / "person0"), str(tmp_path / "person9"))
    with caplog.at_level(logging.WARNING):
        folder = scan_photo_folder(tmp_path)
    assert [p.name for p in folder.people] == ["person9"] and "leaving out 'person0' has 1 photo(s)" in caplog.text


def test_corrupt_photos_are_skipped_counted_and_named(tmp_path, models, caplog):
    from infinite_id.training.dataset import TrainingDataError

    root = write_people(tmp_path / "data", people=2, photos=3)
    (root / "person0" / "photo1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / "person0" / "extra.jpg").write_bytes(b"not a jpeg at all")
    (root / "person1" / "photo0.png").write_bytes(b"")
    (root / "person1" / "photo1.png").write_bytes(b"GIF89a")
    settings = CacheSettings(resolution=RESOLUTION, models="demo")
    pre = Preprocessor(_face_analysis(640), _clip_vision(), models.vae, settings)
    with caplog.at_level(logging.INFO):
        data = build_cache(scan_photo_folder(root), tmp_path / "cache", pre, settings)
    assert len(data.skipped) == 4 and {p.source.name for p in data.photos} == {"photo0.png", "photo2.png"}
    assert "photo1.png: not a readable image" in caplog.text and "extra.jpg: not a readable image" in caplog.text
    assert "leaving out 1 person(s) with fewer than two usable photos: person1" in caplog.text
    assert "4 usable photos" not in caplog.text and "2 usable photos of 1 people" in caplog.text
    assert "4 skipped" in caplog.text
    for photo in ("photo0.png", "photo2.png"):
        (root / "person0" / photo).write_bytes(b"garbage")
    with pytest.raises(TrainingDataError, match="no person in .* has two usable photos"):
        build_cache(scan_photo_folder(root), tmp_path / "cache", pre, settings)


def test_photos_without_a_face_are_skipped(tmp_path, models):
    import numpy as np
    from PIL import Image

    root = write_people(tmp_path / "data", people=1, photos=3)
    Image.fromarray(np.full((256, 256, 3), 90, np.uint8)).save(root / "person0" / "photo3.png")
    settings = CacheSettings(resolution=RESOLUTION, models="demo")
    pre = Preprocessor(_face_analysis(640), _clip_vision(), models.vae, settings)
    data = build_cache(scan_photo_folder(root), tmp_path / "cache", pre, settings)
    assert len(data.photos) == 3 and "no face found" in next(iter(data.skipped.values()))


# ----------------------------------------------------------------------------- command line

def test_train_command_demo_end_to_end_and_resume(tmp_path, host_info, caplog):
    from infinite_id.cli import main

    data = write_people(tmp_path / "data", people=3, photos=2)
    out = tmp_path / "run"
    argv = ["train", "--demo", "--data", str(data), "--output", str(out), "--steps", "2", "--preview-every", "2",
            "--preview-steps", "2", "--save-every", "1", "--precision", "fp32"]
    assert main(argv, host_info) == 0
    assert (out / "infinite-id.safetensors").is_file() and (out / "infinite-id-000001.safetensors").is_file()
    assert (out / "previews" / "step-000002.png").is_file() and len(_losses(out)) == 2
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(argv[:7] + ["4", "--preview-every", "0", "--resume", "--precision", "fp32"], host_info) == 0
    assert "resumed at step 2 of 4" in caplog.text and "0 newly processed" in caplog.text
    assert [s for s, _ in _losses(out)] == [1, 2, 3, 4]


def test_train_command_reports_bad_input(tmp_path, host_info, caplog):
    from infinite_id.cli import main

    (tmp_path / "empty").mkdir()
    with caplog.at_level(logging.ERROR):
        assert main(["train", "--demo", "--data", str(tmp_path / "empty")], host_info) == 2
    assert "no person subfolders" in caplog.text
    data = write_people(tmp_path / "data", people=1, photos=2)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["train", "--data", str(data), "--checkpoint", "sd_xl_base_1.0.safetensors",
                     "--output", str(tmp_path / "o")], host_info) == 2
    assert "'sd_xl_base_1.0.safetensors' was not found. Put it in" in caplog.text and "checkpoints" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["train", "--demo", "--data", str(data), "--resolution", "60"], host_info) == 2
    assert "multiple of 8" in caplog.text


def test_config_is_plain_data():
    assert dataclasses.asdict(TrainConfig())["identity_drop"] == 0.1
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="fp8")
