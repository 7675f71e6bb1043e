"""Tiny, seeded evaluation backbones written as real files (tests and ``eval --demo``).

Why files and not objects: the evaluation must be tested through its real loaders
(``folder_paths`` lookup, ``comfy.utils.load_torch_file``, ``CLIPModel.from_pretrained``),
so the fixtures are what a user would put in ``models/facenet`` and ``models/clip``:

- FaceNet: facenet-pytorch's full ``InceptionResnetV1`` with seeded random weights
  (the architecture is fixed; 23M parameters, a ``.pt`` state dict like the real one,
  with the VGGFace2 file's ``logits.*`` classifier head included).
- CLIP: a transformers ``CLIPModel`` with 64-wide, 2-layer towers, 32 px images and
  the real 49408-token vocabulary (so ComfyUI's bundled tokenizer reads prompts), saved
  as an HF folder without tokenizer files, or as one HF-layout ``.safetensors``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TINY_CLIP_NAME = "tiny-clip"
TINY_FACENET_NAME = "tiny-facenet.pt"


def tiny_clip_config() -> Any:
    from transformers import CLIPConfig

    text = {"vocab_size": 49408, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 1, "max_position_embeddings": 77}
    vision = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 1,
              "image_size": 32, "patch_size": 8}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)


def build_tiny_clip(seed: int = 0) -> Any:
    from transformers import CLIPModel

    torch.manual_seed(seed)
    return CLIPModel(tiny_clip_config()).eval()


def write_tiny_clip(folder: Path, seed: int = 0, single_file: bool = False) -> Path:
    """``folder/tiny-clip/`` (HF format) or ``folder/tiny-clip.safetensors``; returns the path."""
    model = build_tiny_clip(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if single_file:
        from safetensors.torch import save_file

        path = folder / f"{TINY_CLIP_NAME}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        return path
    path = folder / TINY_CLIP_NAME
    model.save_pretrained(str(path))
    return path


def build_tiny_facenet(seed: int = 0) -> torch.nn.Module:
    from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1

    torch.manual_seed(seed)
    model = InceptionResnetV1(pretrained=None, classify=False)
    # Batch-norm statistics from a seeded batch of smooth random images: with the defaults
    # (0 mean, 1 variance) a random network maps every face to nearly the same vector.
    generator = torch.Generator().manual_seed(seed)
    calibration = torch.nn.functional.interpolate(torch.rand(8, 3, 10, 10, generator=generator), size=(160, 160),
                                                  mode="bilinear", align_corners=False) * 2.0 - 1.0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # cumulative average over the calibration pass
    with torch.no_grad():
        model.train()(calibration)
    return model.eval()


def write_tiny_facenet(folder: Path, seed: int = 0, name: str = TINY_FACENET_NAME) -> Path:
    model = build_tiny_facenet(seed)
    state = dict(model.state_dict())
    state["logits.weight"] = torch.zeros(8, 512)  # as in the VGGFace2 file: a head the loader drops
    state["logits.bias"] = torch.zeros(8)
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / name
    torch.save(state, path)
    return path
