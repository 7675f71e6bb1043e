"""Bad input that used to pass silently or end in a traceback, each checked by
its message or by the data it must leave untouched, through the real host where a
user meets it: the executor for nodes, the command functions for the CLI.

One validation layer per kind of input: block lists (``unet/layers.py``), identity tokens
(``identity/types.py``), IMAGE tensors (``identity/images.py``), adapter tensors
(``adapter/loader.py``), file names (``identity/storage.py``), workflows and ``--set``
(``workflow_io/``), evaluation identities (``evaluation/plan.py``), CLI paths.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import folder_paths
import fuzz_sources
import numpy as np
import pytest
import safetensors.torch
import torch
from eval_helpers import eval_folders, models_dir  # noqa: F401
from identity_prompts import as_image, encode_nodes, face_rgb, image_node
from PIL import Image
from prompts import base_prompt, infinite_id_nodes, sampler_inputs

from infinite_id.adapter.loader import load_adapter_file
from infinite_id.adapter.native import build_native_adapter, save_native
from infinite_id.cli import evaluate as eval_cli
from infinite_id.cli import run_workflow as run_cli
from infinite_id.demo import tiny_eval
from infinite_id.host.errors import InfiniteIDError
from infinite_id.host.executor import PromptError, capture
from infinite_id.host.folders import ADAPTERS
from infinite_id.identity.images import check_pixels, split_images, to_bgr_uint8
from infinite_id.identity.mixing import interpolate
from infinite_id.identity.storage import FORMAT, load_identity
from infinite_id.identity.types import TOKEN_LIMIT, Identity
from infinite_id.nodes.identity_files import InfiniteIDLoadIdentity
from infinite_id.unet.layers import SDXL_BLOCKS, parse_block_list
from infinite_id.workflow_io.files import apply_overrides, load_workflow
from infinite_id.workflow_io.ui_to_api import ui_to_api

PACK = Path(__file__).resolve().parent.parent


# --- blocks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [",,", " ; ", ", ;,"])
def test_empty_block_lists_are_refused(spec):
    with pytest.raises(ValueError, match=r"blocks: '.*' names no block, so nothing would be patched"):
        parse_block_list(spec)
    assert parse_block_list("") == set(SDXL_BLOCKS) == parse_block_list(" all ")
    assert parse_block_list("input_4, ,middle_0;") == {("input", 4), ("middle", 0)}


@pytest.mark.parametrize("spec", ["input_²", "output_٣", "input_-4", "input_"])
def test_non_ascii_block_numbers_give_a_message(spec):
    with pytest.raises(ValueError, match=f"blocks: unknown block '{spec}'.*input_4"):
        parse_block_list(spec)


def test_empty_block_list_through_apply(runner):
    prompt = base_prompt()
    prompt.update(infinite_id_nodes(blocks=",,"))
    prompt["out"] = capture("m", model=["apply", 0])
    with pytest.raises(PromptError, match=r"InfiniteIDApply \(node apply\): InfiniteIDApply: blocks: ',,' names no"):
        runner.run(prompt)


# --- identity tokens ------------------------------------------------------------------------
def test_huge_identity_tokens_are_refused_everywhere(runner, identities_dir):
    big = torch.full((1, 4, 64), 1e30)
    with pytest.raises(ValueError, match="identity cond tokens contain values up to 1e\\+30, beyond 65504"):
        Identity(cond=big, uncond=torch.zeros_like(big))
    # The bound is float16's largest number: just below passes, just above is refused.
    Identity(cond=torch.full((1, 4, 64), TOKEN_LIMIT), uncond=torch.zeros(1, 4, 64))
    with pytest.raises(ValueError, match="beyond 65504"):
        Identity(cond=torch.full((1, 4, 64), TOKEN_LIMIT * 1.01), uncond=torch.zeros(1, 4, 64))
    # An identity changed after it was made (or built by another pack) is caught where it enters.
    a = Identity(cond=torch.ones(1, 4, 64), uncond=torch.zeros(1, 4, 64))
    b = Identity(cond=torch.ones(1, 4, 64), uncond=torch.zeros(1, 4, 64))
    b.cond = big
    with pytest.raises(ValueError, match="identity_b: cond tokens contain values up to 1e\\+30"):
        interpolate(a, b, 0.5)
    prompt = {"a": fuzz_sources.source("INFINITEID_IDENTITY", a), "b": fuzz_sources.source("INFINITEID_IDENTITY", b),
              "mix": {"class_type": "InfiniteIDMix", "inputs": {"identity_1": ["a", 0], "identity_2": ["b", 0],
                                                                "weights": ""}},
              "out": capture("mix", infiniteid_identity=["mix", 0])}
    with pytest.raises(PromptError, match="InfiniteIDMix: identity_2: cond tokens contain values up to 1e\\+30"):
        runner.run(prompt)
    # Finite identities, a runaway weight: the weights input is named.
    prompt["b"] = fuzz_sources.source("INFINITEID_IDENTITY", a)
    prompt["mix"]["inputs"]["weights"] = "1, 1e30"
    with pytest.raises(PromptError, match="InfiniteIDMix: weights: \\[1.0, 1e\\+30\\] push the mixed tokens"):
        runner.run(prompt)
    # Save refuses them too: a file must never hold what a load would refuse.
    save = {"b": fuzz_sources.source("INFINITEID_IDENTITY", b),
            "save": {"class_type": "InfiniteIDSaveIdentity", "inputs": {"identity": ["b", 0], "name": "huge",
                                                                       "overwrite": False}}}
    with pytest.raises(PromptError, match="InfiniteIDSaveIdentity: identity: cond tokens contain values up to 1e"):
        runner.run(save)
    assert not identities_dir.exists()
    # A file with huge tokens: Load Identity names the file.
    identities_dir.mkdir(parents=True)
    meta = {"format": FORMAT, "version": "1", "cond_shape": "1,4,64", "uncond_shape": "1,4,64"}
    safetensors.torch.save_file({"cond": big, "uncond": torch.zeros(1, 4, 64)}, str(identities_dir / "big.safetensors"),
                                metadata=meta)
    with pytest.raises(ValueError, match="identity_name: 'big.safetensors' has values up to 1e\\+30"):
        load_identity("big.safetensors")


def test_encode_refuses_huge_tokens_from_the_adapter(runner):
    from infinite_id.demo.nodes import _adapter

    adapter = _adapter(1)
    broken = type(adapter)(kv=adapter.kv, mapper=adapter.mapper, name="scaled", info=dict(adapter.info))

    class Scaled(torch.nn.Module):  # the mapper of a damaged file: its tokens blow up
        def forward(self, face, clip):
            return adapter.mapper(face, clip) * 1e30

    broken.mapper = Scaled()
    prompt = encode_nodes(image_node(as_image(face_rgb((5, 5)))))
    prompt["adapter"] = fuzz_sources.source("INFINITEID_ADAPTER", broken)
    with pytest.raises(PromptError, match="InfiniteIDEncode: adapter: 'scaled' produced tokens with values up to"):
        runner.run(prompt)


# --- IMAGE values ---------------------------------------------------------------------------
def test_pixel_value_decisions():
    rgb = torch.rand(1, 8, 8, 3)
    for bad, dtype in ((rgb > 0.5, "bool"), ((rgb * 255).to(torch.uint8), "uint8"), (rgb.to(torch.int64), "int64")):
        with pytest.raises(ValueError, match=f"image: a {dtype} tensor; IMAGE tensors are float RGB in 0..1"):
            split_images(bad)
    with pytest.raises(ValueError, match=r"image 0 has values from .* to [\d.]+; .*looks like 0..255: divide by 255"):
        check_pixels(split_images(rgb * 255))
    with pytest.raises(ValueError, match=r"looks like -1..1"):
        check_pixels(split_images(rgb * 2 - 1))
    # A small overshoot (resamplers, colour nodes) is accepted and clamped, as ComfyUI does.
    over = rgb.clone()
    over[0, 0, 0] = torch.tensor([1.08, -0.05, 0.5])
    check_pixels(split_images(over))
    assert to_bgr_uint8(split_images(over)[0])[0, 0].tolist() == [128, 0, 255]  # BGR: 0.5, clamped 0, clamped 1


def test_integer_image_is_refused_by_encode_and_scoring(runner):
    face = torch.from_numpy(face_rgb((5, 5)))[None]  # uint8 0..255
    prompt = encode_nodes(image_node(face))
    with pytest.raises(PromptError, match="InfiniteIDEncode: image: a uint8 tensor"):
        runner.run(prompt)
    prompt = encode_nodes(image_node(as_image(face_rgb((5, 5))) * 255))
    with pytest.raises(PromptError, match=r"InfiniteIDEncode: image: image 0 has values from .* to .*; IMAGE values "
                                          r"must lie in 0..1 \(it looks like 0..255"):
        runner.run(prompt)


# --- adapter tensors ------------------------------------------------------------------------
@pytest.fixture
def adapter_folder(tmp_path, monkeypatch):
    monkeypatch.setitem(folder_paths.folder_names_and_paths, ADAPTERS, ([str(tmp_path)], {".safetensors", ".bin"}))
    if hasattr(folder_paths, "filename_list_cache"):
        monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return tmp_path


def _adapter_loader(name: str) -> dict:
    return {"load": {"class_type": "InfiniteIDAdapterLoader", "inputs": {"adapter_name": name}},
            "out": capture("a", infiniteid_adapter=["load", 0])}


def test_non_finite_adapter_weights_are_refused_at_load(runner, adapter_folder):
    adapter = build_native_adapter(layer_widths=[16] * 70, token_dim=64, clip_width=40, face_tokens=2, clip_tokens=2,
                                   face_hidden=32, clip_dim=64, clip_depth=1, clip_heads=4, clip_dim_head=16,
                                   ff_mult=2, seed=3)
    path = adapter_folder / "nan-kv.safetensors"
    save_native(str(path), adapter)
    sd = safetensors.torch.load_file(str(path))
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    sd["ip.41.to_v.weight"][3, 5] = float("nan")
    safetensors.torch.save_file(sd, str(path), metadata=meta)
    with pytest.raises(PromptError, match=r"InfiniteIDAdapterLoader: input 'adapter_name' \('nan-kv.safetensors'\): "
                                          r"'nan-kv.safetensors' is damaged: tensor 'ip.41.to_v.weight' holds 1 NaN"):
        runner.run(_adapter_loader("nan-kv.safetensors"))
    sd["ip.41.to_v.weight"][3, 5] = 0.0
    sd["face_mapper.net.0.weight"][0, 0] = float("inf")
    safetensors.torch.save_file(sd, str(adapter_folder / "inf-mapper.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="tensor 'face_mapper.net.0.weight' holds 1 NaN or infinite"):
        load_adapter_file(str(adapter_folder / "inf-mapper.safetensors"))


@pytest.mark.parametrize("name", ["lora-nan.bin", "lora-inf.safetensors"])
def test_non_finite_lora_weights_are_refused_at_load(runner, adapter_folder, tiny_unet, name):
    from test_adapter_formats import faceid_state, save_faceid

    from infinite_id.unet.layers import SDXL_LAYERS
    from infinite_id.unet.walk import cross_attention_widths

    widths = [w for w, _ in (cross_attention_widths(tiny_unet.model.diffusion_model)[k] for k in SDXL_LAYERS)]
    proj, ip = faceid_state(widths, rank=2)
    ip["6.to_out_lora.up.weight"][0, 1] = float("nan") if "nan" in name else float("-inf")
    save_faceid(adapter_folder, name, proj, ip)
    with pytest.raises(PromptError, match=rf"InfiniteIDAdapterLoader: input 'adapter_name' \('{name}'\): '{name}' is "
                                          r"damaged: tensor 'ip_adapter.6.to_out_lora.up.weight' holds 1 NaN"):
        runner.run(_adapter_loader(name))


# --- file names -----------------------------------------------------------------------------
def test_identity_names_beyond_the_file_system_limit(runner, identities_dir):
    prompt = {"id": {"class_type": "InfiniteIDDemoIdentity", "inputs": {"seed": 2, "count": 1}},
              "save": {"class_type": "InfiniteIDSaveIdentity",
                       "inputs": {"identity": ["id", 0], "name": "x" * 300, "overwrite": False}}}
    with pytest.raises(PromptError, match="InfiniteIDSaveIdentity: name: 'x{40}...' is 300 bytes long; file names "
                                          "may have at most 200"):
        runner.run(prompt)
    assert not identities_dir.exists() or not any(identities_dir.iterdir())
    prompt["save"]["inputs"]["name"] = "é" * 101  # 202 bytes in UTF-8
    with pytest.raises(PromptError, match="is 202 bytes long"):
        runner.run(prompt)
    prompt["save"]["inputs"]["name"] = "y" * 200
    runner.run(prompt)
    assert [p.name for p in identities_dir.iterdir()] == ["y" * 200 + ".safetensors"]


def test_load_identity_with_nul_names_the_input(identities_dir):
    with pytest.raises(InfiniteIDError, match=r"InfiniteIDLoadIdentity: identity_name: 'a\\x00b.safetensors' "
                                              r"contains a NUL character"):
        InfiniteIDLoadIdentity().load("a\0b.safetensors")
    with pytest.raises(InfiniteIDError, match="InfiniteIDLoadIdentity: identity_name: no identity file chosen"):
        InfiniteIDLoadIdentity().load("")
    assert InfiniteIDLoadIdentity.IS_CHANGED("a\0b") == ""


# --- workflows and --set --------------------------------------------------------------------
def _sampler_prompt() -> dict:
    prompt = base_prompt()
    prompt.update(infinite_id_nodes())
    prompt["iid"] = {"class_type": "InfiniteIDSampler", "inputs": {"model": ["apply", 0], **sampler_inputs()}}
    return prompt


def test_set_refuses_unknown_input_names():
    prompt = _sampler_prompt()
    with pytest.raises(ValueError, match=r"--set 'InfiniteIDSampler.stepz=3': InfiniteIDSampler \(node iid\) has no "
                                         r"input 'stepz'; its inputs are: model, seed, steps, cfg, sampler_name"):
        apply_overrides(prompt, ["InfiniteIDSampler.stepz=3"])
    assert "stepz" not in prompt["iid"]["inputs"]
    apply_overrides(prompt, ["InfiniteIDSampler.steps=3", "InfiniteIDApply.lora_strength=0.5"])  # optional inputs too
    assert prompt["iid"]["inputs"]["steps"] == 3 and prompt["apply"]["inputs"]["lora_strength"] == 0.5


def test_set_on_a_node_without_inputs():
    class NoInputs:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}, "hidden": {"prompt": "PROMPT"}}

    prompt = {"1": {"class_type": "NoInputs"}}
    with pytest.raises(ValueError, match=r"--set '1.x=2': node 1 \(NoInputs\) has no inputs to set"):
        apply_overrides(prompt, ["1.x=2"], node_classes={"NoInputs": NoInputs})
    # A node whose entry lacks "inputs" (hand-written API files) gets them.
    prompt = {"7": {"class_type": "EmptyLatentImage"}}
    apply_overrides(prompt, ["7.width=64"])
    assert prompt["7"]["inputs"] == {"width": 64}
    with pytest.raises(ValueError, match="use NODE.INPUT=VALUE"):
        apply_overrides(prompt, [".width=3"])


def test_dangling_links_give_messages(tmp_path):
    api = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
           "2": {"class_type": "VAEDecode", "inputs": {"samples": ["1", 0], "vae": ["99", 2]}}}
    path = tmp_path / "api.json"
    path.write_text(json.dumps(api))
    with pytest.raises(ValueError, match=r"node 2 \(VAEDecode\) input 'vae' is linked to node 99, which is not in "
                                         r"the workflow \(a dangling link\)"):
        load_workflow(path)
    api["2"]["inputs"]["vae"] = ["1", 3]
    path.write_text(json.dumps(api))
    with pytest.raises(ValueError, match=r"linked to output 3 of node 1 \(EmptyLatentImage\), which has 1 output"):
        load_workflow(path)
    ui = {"nodes": [{"id": 1, "type": "EmptyLatentImage", "mode": 0, "widgets_values": [64, 64, 1],
                     "outputs": [{"name": "LATENT", "type": "LATENT", "links": [5]}]},
                    {"id": 2, "type": "VAEDecode", "mode": 0, "widgets_values": [],
                     "inputs": [{"name": "samples", "type": "LATENT", "link": 5},
                                {"name": "vae", "type": "VAE", "link": 6}]}],
          "links": [[5, 1, 0, 2, 0, "LATENT"]]}
    with pytest.raises(ValueError, match=r"node 2 \(VAEDecode\) input 'vae': link 6 is not in the workflow's links"):
        ui_to_api(ui)
    ui["links"].append([6, 42, 0, 2, 1, "VAE"])
    with pytest.raises(ValueError, match="link 6 comes from node 42, which is not in the workflow"):
        ui_to_api(ui)
    ui["links"][-1] = [6, 42]
    with pytest.raises(ValueError, match=r"link \[6, 42\] is malformed"):
        ui_to_api(ui)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not a JSON workflow"):
        load_workflow(path)


# --- the run command ------------------------------------------------------------------------
@pytest.fixture
def run_cli_args():
    parser = argparse.ArgumentParser()
    run_cli.add_parser(parser.add_subparsers())
    saved = folder_paths.get_input_directory(), folder_paths.get_output_directory()
    yield lambda *argv: parser.parse_args(["run", *argv])
    folder_paths.set_input_directory(saved[0])
    folder_paths.set_output_directory(saved[1])


def test_demo_photos_stay_in_the_demo_folder(tmp_path):
    outside = tmp_path / "outside"
    demo = tmp_path / "demo"
    demo.mkdir()
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": str(outside / "victim.png")}},
              "2": {"class_type": "LoadImage", "inputs": {"image": "../../outside/escape.png"}},
              "3": {"class_type": "LoadImage", "inputs": {"image": "../../outside/escape.png"}},
              "4": {"class_type": "LoadImage", "inputs": {"image": "sub\\dir\\face.jpg"}}}
    run_cli.use_demo_models(prompt, demo)
    assert not outside.exists()
    names = [prompt[k]["inputs"]["image"] for k in "1234"]
    assert names == ["demo_00_victim.png", "demo_01_escape.png", "demo_01_escape.png", "demo_02_face.png"]
    assert sorted(p.name for p in demo.rglob("*")) == sorted(set(names))
    # Each original name keeps its own generated person, as before (mixing needs two).
    photos = [np.asarray(Image.open(demo / n)) for n in names[:2]]
    assert not np.array_equal(*photos)
    assert np.array_equal(photos[0], run_cli.demo_photo(str(outside / "victim.png")))


def test_run_demo_with_an_escaping_load_image(run_cli_args, tmp_path, caplog):
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    args = run_cli_args(str(PACK / "workflows" / "api" / "raw_photo.json"), "--demo", "--output",
                        str(tmp_path / "out"), "--set", f"LoadImage.image={json.dumps(str(victim))}",
                        "--set", "InfiniteIDSampler.steps=1", "--set", "EmptyLatentImage.width=64",
                        "--set", "EmptyLatentImage.height=64")
    assert run_cli.run_command(args) == 0
    assert victim.read_bytes() == b"precious"
    assert list((tmp_path / "out").rglob("*.png"))


def test_run_output_that_is_a_file(run_cli_args, tmp_path, caplog):
    existing = tmp_path / "a-file"
    existing.write_text("keep")
    args = run_cli_args(str(PACK / "workflows" / "api" / "raw_photo.json"), "--demo", "--output", str(existing))
    with caplog.at_level(logging.ERROR):
        assert run_cli.run_command(args) == 2
    assert f"--output {existing}: cannot use it as the output folder" in caplog.text
    assert existing.read_text() == "keep"
    args = run_cli_args(str(PACK / "workflows" / "api" / "raw_photo.json"), "--set", "InfiniteIDSampler.stepz=3")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert run_cli.run_command(args) == 2
    assert "has no input 'stepz'; its inputs are: model, seed, steps" in caplog.text


# --- the eval command -----------------------------------------------------------------------
@pytest.fixture
def eval_cli_run(tmp_path):
    saved = folder_paths.get_input_directory(), folder_paths.get_output_directory()
    parser = argparse.ArgumentParser()
    eval_cli.add_parser(parser.add_subparsers())
    yield lambda *argv: eval_cli.evaluate_command(parser.parse_args(["eval", *argv]))
    folder_paths.set_input_directory(saved[0])
    folder_paths.set_output_directory(saved[1])


def _photo(path: Path, identity: int = 3) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(face_rgb((7, 6), first_identity=identity)).save(path)


def test_colliding_identity_names_are_refused_with_the_list(eval_cli_run, tmp_path, caplog):
    ids = tmp_path / "ids"
    for name in ("alice.png", "alice.jpg", "alice/1.png", "a b.png", "a_b.png", "Carol.png", "carol.webp", "dan.png"):
        _photo(ids / name)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert eval_cli_run("--identities", str(ids), "--images", str(tmp_path), "--output", str(tmp_path / "o")) == 2
    text = caplog.text
    assert "--identities: these entries in" in text and "give the same identity name" in text
    assert "a b.png and a_b.png" in text and "alice/ and alice.jpg and alice.png" in text
    assert "Carol.png and carol.webp" in text and "dan" not in text.split("give the same identity name")[1]


def _scored_folder(tmp_path: Path) -> tuple[Path, Path]:
    ids, made = tmp_path / "ids", tmp_path / "made"
    _photo(ids / "alice.png")
    _photo(made / "full" / "alice" / "00.png")
    (tmp_path / "p.txt").write_text("a photo of a person\n")
    return ids, made


def test_missing_matplotlib_is_said_first_and_the_report_is_written(eval_cli_run, tmp_path, eval_folders, caplog,
                                                                   monkeypatch):
    ids, made = _scored_folder(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "report"
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert eval_cli_run("--identities", str(ids), "--prompts", str(tmp_path / "p.txt"), "--images", str(made),
                            "--backbone", "arcface", "--clip-model", tiny_eval.TINY_CLIP_NAME,
                            "--output", str(out)) == 0
    messages = [r.getMessage() for r in caplog.records]
    first = next(i for i, m in enumerate(messages) if "matplotlib is not installed" in m)
    assert first < next(i for i, m in enumerate(messages) if m.startswith("scored"))
    assert (out / "summary.csv").is_file() and (out / "grid_full.png").is_file()
    assert not (out / "scatter.png").exists()


def test_demo_arcface_evaluation_never_imports_facenet(eval_cli_run, tmp_path, monkeypatch):
    ids, made = _scored_folder(tmp_path)
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    for key in [k for k in sys.modules if k.startswith("facenet_pytorch.")]:
        monkeypatch.setitem(sys.modules, key, None)
    out = tmp_path / "report"
    assert eval_cli_run("--identities", str(ids), "--prompts", str(tmp_path / "p.txt"), "--images", str(made),
                        "--backbone", "arcface", "--demo", "--output", str(out)) == 0
    assert not (out / ".demo_models" / "facenet").exists()
    assert {r["backbone"] for r in __import__("infinite_id.evaluation.report", fromlist=["x"]).read_csv(
        out / "images.csv")} == {"arcface"}
