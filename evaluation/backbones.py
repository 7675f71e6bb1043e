"""Identity and prompt backbones of the evaluation, loaded from local files only.

Why one module: every backbone has the same three duties -- find its file in a
``folder_paths`` folder, refuse with a message that names the file and the folder when
it is missing (nothing is ever downloaded), and turn face crops or prompts into
embeddings. The libraries (facenet-pytorch, transformers) are imported inside the
functions, so the pack loads without them and the nodes say what to install.

- FaceNet: facenet-pytorch's ``InceptionResnetV1`` definition with the VGGFace2 weights
  (``20180402-114759-vggface2.pt``) from ``models/facenet/``; input 160x160, standardised
  as facenet-pytorch does (``(x - 127.5) / 128``); output L2-normalised 512-d.
- CLIP: a transformers ``CLIPModel`` from ``models/clip/``: an HF folder (``config.json``
  + weights [+ tokenizer files]) or one ``.safetensors`` file in HF key layout (config
  read off the weight shapes). Without tokenizer files ComfyUI's own CLIP tokenizer
  (``comfy/sd1_tokenizer``, the OpenAI BPE vocabulary) is used.
- ArcFace needs no loader: it is the ``FACEANALYSIS`` recognition model (``faces.py``).
"""
from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

FACENET_FOLDER = "facenet"
FACENET_FILE = "20180402-114759-vggface2.pt"
FACENET_SIZE = 160
CLIP_FOLDER = "clip"
CLIP_DEFAULT = "clip-vit-large-patch14"
FACENET_INSTALL = 'pip install --no-deps "facenet-pytorch==2.6.0"  (--no-deps: its pins would replace torch)'
CLIP_HEAD_DIM = 64  # every OpenAI/LAION CLIP uses 64-d attention heads; used to read a bare .safetensors
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def folder_key(name: str) -> str:
    """The ``folder_paths`` key for ``name``: current hosts map the legacy "clip" to "text_encoders"."""
    import folder_paths

    return getattr(folder_paths, "map_legacy", lambda n: n)(name)


def _folders(name: str) -> list[str]:
    import folder_paths

    from ..host.folders import register_folders

    register_folders()
    try:
        return list(folder_paths.get_folder_paths(name))
    except KeyError:
        return [os.path.join(folder_paths.models_dir, name)]


def _where(name: str) -> str:
    return " or ".join(_folders(name)) or f"models/{name}"


# --- FaceNet -----------------------------------------------------------------------------
def facenet_choices() -> list[str]:
    """Files in ``models/facenet``; the VGGFace2 file name first even when absent (so a
    saved workflow validates and gets the missing-file message instead of 'not in list')."""
    import folder_paths

    from ..host.folders import register_folders

    register_folders()
    found = [f for f in folder_paths.get_filename_list(FACENET_FOLDER) if f != FACENET_FILE]
    return [FACENET_FILE] + sorted(found)


class FaceNet:
    """``InceptionResnetV1`` embeddings of aligned face crops."""

    def __init__(self, model: torch.nn.Module, name: str = "") -> None:
        self.model = model.eval()
        self.name = name

    @torch.no_grad()
    def embed(self, crops_rgb: Sequence[np.ndarray]) -> np.ndarray:
        """``[N, 512]`` unit vectors for ``H x W x 3`` uint8 RGB crops (resized to 160)."""
        if not len(crops_rgb):
            return np.zeros((0, 512), np.float32)
        x = torch.stack([torch.from_numpy(np.ascontiguousarray(c)).permute(2, 0, 1).float() for c in crops_rgb])
        x = torch.nn.functional.interpolate(x, size=(FACENET_SIZE, FACENET_SIZE), mode="bilinear",
                                            align_corners=False, antialias=True)
        x = (x - 127.5) / 128.0  # facenet-pytorch's fixed_image_standardization
        return self.model(x).float().numpy()


def build_facenet_model() -> torch.nn.Module:
    """The architecture (random weights), or a message saying how to install it."""
    try:
        from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1
    except ImportError as exc:
        raise ValueError(f"facenet-pytorch is not installed ({exc}); run: {FACENET_INSTALL}, or choose the "
                         f"arcface backbone") from exc
    return InceptionResnetV1(pretrained=None, classify=False)


@functools.lru_cache(maxsize=2)
def _load_facenet(path: str, mtime: float) -> FaceNet:
    import comfy.utils

    model = build_facenet_model()
    state = comfy.utils.load_torch_file(path, safe_load=True)  # weights_only=True for .pt
    state = {k: v for k, v in state.items() if not k.startswith("logits.")}  # the VGGFace2 classifier head
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{os.path.basename(path)} is not a facenet-pytorch InceptionResnetV1 state dict "
                         f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. "
                         f"{(list(missing) + list(unexpected))[:3]}); use {FACENET_FILE}")
    log.info("FaceNet loaded from %s", path)
    return FaceNet(model, os.path.basename(path))


def load_facenet(name: str) -> FaceNet:
    """FaceNet from ``models/facenet/<name>``; a missing file names the file and the folder."""
    import folder_paths

    from ..host.folders import register_folders

    register_folders()
    path = folder_paths.get_full_path(FACENET_FOLDER, name) if name else None
    if path is None:
        build_facenet_model()  # a missing library is the first thing to fix
        raise ValueError(f"facenet_model: '{name}' was not found. Put {FACENET_FILE} (facenet-pytorch's "
                         f"InceptionResnetV1 VGGFace2 weights) in {_where(FACENET_FOLDER)}; nothing is "
                         f"downloaded automatically.")
    return _load_facenet(path, os.path.getmtime(path))


# --- CLIP ----------------------------------------------------------------------------------
def clip_choices() -> list[str]:
    """HF folders (with ``config.json``) and ``.safetensors`` files under ``models/clip``."""
    found: set[str] = set()
    for root in _folders(CLIP_FOLDER):
        if not os.path.isdir(root):
            continue
        for entry in os.listdir(root):
            full = os.path.join(root, entry)
            if os.path.isfile(os.path.join(full, "config.json")) or entry.endswith(".safetensors"):
                found.add(entry)
    return [CLIP_DEFAULT] + sorted(found - {CLIP_DEFAULT})


class Clip:
    """CLIP image and text embeddings (unit vectors) of one ``CLIPModel``."""

    def __init__(self, model: Any, tokenizer: Any, name: str = "") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.image_size = int(model.config.vision_config.image_size)
        self.max_tokens = int(model.config.text_config.max_position_embeddings)

    def preprocess(self, images_rgb: Sequence[np.ndarray]) -> torch.Tensor:
        """CLIP's own preparation: shortest side to the input size (bicubic), centre crop,
        OpenAI mean/std (what ``CLIPImageProcessor`` does with its defaults)."""
        from transformers import CLIPImageProcessor

        size = self.image_size
        processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                       image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD))
        return processor(images=[np.ascontiguousarray(i) for i in images_rgb], return_tensors="pt")["pixel_values"]

    @torch.no_grad()
    def embed_images(self, images_rgb: Sequence[np.ndarray]) -> np.ndarray:
        if not len(images_rgb):
            return np.zeros((0, self.model.config.projection_dim), np.float32)
        out = _features(self.model.get_image_features(pixel_values=self.preprocess(images_rgb)))
        return torch.nn.functional.normalize(out.float(), dim=-1).numpy()

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_tokens,
                                return_tensors="pt")
        out = _features(self.model.get_text_features(input_ids=tokens["input_ids"],
                                                     attention_mask=tokens["attention_mask"]))
        return torch.nn.functional.normalize(out.float(), dim=-1).numpy()


def _features(out: Any) -> torch.Tensor:
    """transformers 4 returns the projected features; some 5.x versions a model output."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    raise ValueError(f"unexpected CLIP output {type(out).__name__}")


def comfy_tokenizer_dir() -> str:
    """ComfyUI's bundled CLIP BPE tokenizer (``comfy/sd1_tokenizer``)."""
    import comfy.sd1_clip

    return os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer")


def _tokenizer(folder: str | None) -> Any:
    from transformers import CLIPTokenizer

    if folder and any(os.path.isfile(os.path.join(folder, f)) for f in ("vocab.json", "tokenizer.json")):
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - a broken tokenizer file falls back to ComfyUI's
            log.warning("tokenizer in %s could not be read (%s); using ComfyUI's CLIP tokenizer", folder, exc)
    return CLIPTokenizer.from_pretrained(comfy_tokenizer_dir())


def clip_config_from_state(state: dict[str, torch.Tensor]) -> Any:
    """A ``CLIPConfig`` read off an HF-layout state dict's shapes (heads: 64-d each)."""
    from transformers import CLIPConfig

    def layers(prefix: str) -> int:
        return len({k.split(".")[3] for k in state if k.startswith(prefix + ".encoder.layers.")})

    tok = state["text_model.embeddings.token_embedding.weight"]
    tpos = state["text_model.embeddings.position_embedding.weight"]
    patch = state["vision_model.embeddings.patch_embedding.weight"]
    vpos = state["vision_model.embeddings.position_embedding.weight"]
    grid = int(round((vpos.shape[0] - 1) ** 0.5))
    text = {"vocab_size": tok.shape[0], "hidden_size": tok.shape[1], "max_position_embeddings": tpos.shape[0],
            "intermediate_size": state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
            "num_hidden_layers": layers("text_model"), "num_attention_heads": max(1, tok.shape[1] // CLIP_HEAD_DIM)}
    vision = {"hidden_size": patch.shape[0], "patch_size": patch.shape[-1], "image_size": patch.shape[-1] * grid,
              "intermediate_size": state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
              "num_hidden_layers": layers("vision_model"),
              "num_attention_heads": max(1, patch.shape[0] // CLIP_HEAD_DIM)}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=state["visual_projection.weight"].shape[0])


@functools.lru_cache(maxsize=2)
def _load_clip(path: str, mtime: float) -> Clip:
    from transformers import CLIPModel

    if os.path.isdir(path):
        model = CLIPModel.from_pretrained(path, local_files_only=True)
        return Clip(model, _tokenizer(path), os.path.basename(path))
    import comfy.utils

    state = comfy.utils.load_torch_file(path, safe_load=True)
    if not any(k.startswith("vision_model.") for k in state):
        raise ValueError(f"clip_model: {os.path.basename(path)} holds no CLIP vision tower (no vision_model.* keys; "
                         f"a text encoder such as clip_l cannot score images). Use a full CLIP model in HF layout, "
                         f"e.g. the openai/clip-vit-large-patch14 folder, in {_where(CLIP_FOLDER)}")
    model = CLIPModel(clip_config_from_state(state))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing:
        raise ValueError(f"clip_model: {os.path.basename(path)} is not a complete HF CLIPModel ({len(missing)} "
                         f"weights missing, e.g. {missing[:3]})")
    return Clip(model, _tokenizer(None), os.path.basename(path))


def load_clip(name: str) -> Clip:
    """CLIP from ``models/clip/<name>`` (folder or file); a missing one names where it goes."""
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"transformers is not installed ({exc}); run: pip install transformers") from exc
    for root in _folders(CLIP_FOLDER):
        path = os.path.join(root, name)
        if name and os.sep not in name.strip(os.sep) and (os.path.isfile(os.path.join(path, "config.json"))
                                                           or (os.path.isfile(path) and path.endswith(".safetensors"))):
            return _load_clip(path, os.path.getmtime(path))
    raise ValueError(f"clip_model: '{name}' was not found. Put a CLIP model in HF format (a folder with config.json, "
                     f"model.safetensors and the tokenizer files, e.g. openai/clip-vit-large-patch14 as "
                     f"{CLIP_DEFAULT}/) or one HF-layout .safetensors file in {_where(CLIP_FOLDER)}; nothing is "
                     f"downloaded automatically.")
