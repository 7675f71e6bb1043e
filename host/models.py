"""Which model files a workflow's loader nodes need, and where each one goes."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelInput:
    folder: str        # folder_paths name
    where_from: str    # shown to the user when the file is missing


# loader node type -> its file-name input -> where the file belongs
LOADER_INPUTS: dict[str, dict[str, ModelInput]] = {
    "CheckpointLoaderSimple": {"ckpt_name": ModelInput("checkpoints", "an SDXL checkpoint, e.g. sd_xl_base_1.0.safetensors")},
    "CLIPVisionLoader": {"clip_name": ModelInput("clip_vision", "OpenCLIP ViT-H/14 laion2B image encoder, e.g. CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")},
    "InfiniteIDAdapterLoader": {"adapter_name": ModelInput("infiniteid", "an Infinite-ID adapter, or IP-Adapter FaceID-Plus-v2 SDXL (ip-adapter-faceid-plusv2_sdxl.bin)")},
    "LoraLoaderModelOnly": {"lora_name": ModelInput("loras", "e.g. ip-adapter-faceid-plusv2_sdxl_lora.safetensors")},
}

# Download addresses of the files the shipped workflows name, written into each loader
# node's ``properties.models`` (the entries the editor's missing-models panel reads:
# name, url, directory). The CLIP vision file is h94's copy of OpenCLIP ViT-H/14
# laion2B, saved under the name IP-Adapter packs use.
MODEL_URLS: dict[str, str] = {
    "sd_xl_base_1.0.safetensors":
        "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors",
    "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors":
        "https://huggingface.co/h94/IP-Adapter/resolve/main/models/image_encoder/model.safetensors",
    "ip-adapter-faceid-plusv2_sdxl.bin":
        "https://huggingface.co/h94/IP-Adapter-FaceID/resolve/main/ip-adapter-faceid-plusv2_sdxl.bin",
}


def model_metadata(class_type: str, inputs: dict) -> list[dict]:
    """``properties.models`` entries for one loader node: every file it names, with its folder."""
    entries = []
    for input_name, need in LOADER_INPUTS.get(class_type, {}).items():
        name = inputs.get(input_name)
        if isinstance(name, str) and name in MODEL_URLS:
            entries.append({"name": name, "url": MODEL_URLS[name], "directory": need.folder})
    return entries

# node type -> the tiny built-in node that stands in for it under --demo
DEMO_SUBSTITUTES: dict[str, str] = {
    "CheckpointLoaderSimple": "InfiniteIDDemoCheckpoint",
    "CLIPVisionLoader": "InfiniteIDDemoCLIPVision",
    "InfiniteIDAdapterLoader": "InfiniteIDDemoAdapter",
    "InfiniteIDFaceAnalysisLoader": "InfiniteIDDemoFaceAnalysis",
}


def missing_models(prompt: dict) -> list[str]:
    """One line per model file the prompt needs that is not installed."""
    import folder_paths

    from .folders import register_folders

    register_folders()
    lines = []
    for node_id, node in prompt.items():
        for input_name, need in LOADER_INPUTS.get(node.get("class_type"), {}).items():
            name = node.get("inputs", {}).get(input_name)
            if not isinstance(name, str):
                continue
            if folder_paths.get_full_path(need.folder, name) is None:
                folders = ", ".join(folder_paths.get_folder_paths(need.folder))
                lines.append(f"node {node_id} ({node['class_type']}): '{name}' is missing. Put it in {folders} "
                             f"({need.where_from}).")
        if node.get("class_type") == "InfiniteIDFaceAnalysisLoader":
            lines.extend(_missing_insightface(node_id, node.get("inputs", {})))
    return lines


def _missing_insightface(node_id: str, inputs: dict) -> list[str]:
    import os

    from .folders import INSIGHTFACE, folder_paths_for

    name = inputs.get("model_name") or inputs.get("name") or "antelopev2"
    for root in folder_paths_for(INSIGHTFACE):
        for folder in (os.path.join(root, "models", name), os.path.join(root, "models", name, name)):
            if os.path.isdir(folder) and any(f.endswith(".onnx") for f in os.listdir(folder)):
                return []
    where = os.path.join(folder_paths_for(INSIGHTFACE)[0], "models", name)
    return [f"node {node_id} (InfiniteIDFaceAnalysisLoader): the insightface pack '{name}' is missing. Put its "
            f".onnx files (for antelopev2: scrfd_10g_bnkps.onnx, glintr100.onnx, 1k3d68.onnx, 2d106det.onnx, "
            f"genderage.onnx) in {where}/"]
