"""Shared pieces of the evaluation tests: tiny backbone files in temporary model folders
(registered as the host's folders, as extra_model_paths.yaml would) and the by-hand
recomputations (insightface's own ``FaceAnalysis.get`` and ``norm_crop``, the models'
plain forward passes) that the pack's numbers are compared with."""
from __future__ import annotations

import folder_paths
import numpy as np
import pytest
import torch

from infinite_id.demo import tiny_eval
from infinite_id.demo import tiny_insightface as tiny
from infinite_id.evaluation import backbones


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_models")
    tiny.write_tiny_antelopev2(root / "insightface")
    tiny_eval.write_tiny_facenet(root / "facenet")
    tiny_eval.write_tiny_clip(root / "clip")
    tiny_eval.write_tiny_clip(root / "clip", seed=0, single_file=True)
    return root


@pytest.fixture
def cli():
    """``python . eval`` in this process: call it with the command's arguments; the host's folders are restored."""
    import argparse

    from infinite_id.cli import evaluate as eval_cli

    saved = folder_paths.get_input_directory(), folder_paths.get_output_directory()
    parser = argparse.ArgumentParser()
    eval_cli.add_parser(parser.add_subparsers())

    def invoke(*argv: str) -> int:
        return eval_cli.evaluate_command(parser.parse_args(["eval", *argv]))

    yield invoke
    folder_paths.set_input_directory(saved[0])
    folder_paths.set_output_directory(saved[1])


@pytest.fixture
def eval_folders(models_dir, monkeypatch):
    """The temporary folders as the host's facenet/clip folders (as extra_model_paths would add them)."""
    from infinite_id.host.folders import register_folders

    register_folders()
    for name in ("facenet", "clip", "insightface", "lpips", "fid"):
        monkeypatch.setitem(folder_paths.folder_names_and_paths, backbones.folder_key(name),
                            ([str(models_dir / name)], {".pt", ".pth", ".safetensors"}))
    if hasattr(folder_paths, "filename_list_cache"):
        monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return models_dir


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """insightface's own FaceAnalysis on the tiny pack, independent of the pack's code."""
    return tiny.tiny_face_analysis(tmp_path_factory.mktemp("insightface_reference"))


def by_hand_face(rgb: np.ndarray, app) -> dict:
    from insightface.utils import face_align

    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    faces = app.get(bgr)
    if not faces:
        return {}
    face = max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
    crop = np.ascontiguousarray(face_align.norm_crop(bgr, landmark=face.kps, image_size=224)[:, :, ::-1])
    return {"arcface": face.normed_embedding, "crop": crop}


def cos(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def facenet_by_hand(crop: np.ndarray) -> np.ndarray:
    model = tiny_eval.build_tiny_facenet(0)
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float()
    x = torch.nn.functional.interpolate(x, size=(160, 160), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        return model((x - 127.5) / 128.0)[0].numpy()


def clip_by_hand(crops, prompt=None):
    from transformers import CLIPImageProcessor, CLIPTokenizer

    model = tiny_eval.build_tiny_clip(0)
    pixels = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})(
        images=list(crops), return_tensors="pt")["pixel_values"]
    tok = CLIPTokenizer.from_pretrained(backbones.comfy_tokenizer_dir())
    ids = tok([prompt or "x"], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=pixels, input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
    return out.image_embeds.numpy(), out.text_embeds.numpy()[0]
