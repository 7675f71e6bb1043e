"""InfiniteIDFaceAnalysisLoader through the real host, reading configured folders.

The host's ``insightface`` folder list is replaced by temporary folders for each test,
as a user's ``extra_model_paths.yaml`` would add them; nothing is downloaded.
"""
from __future__ import annotations

import logging

import folder_paths
import numpy as np
import pytest
import torch

from infinite_id.demo import tiny_insightface as tiny
from infinite_id.host.executor import PromptError, capture
from infinite_id.host.folders import INSIGHTFACE
from infinite_id.nodes.face_analysis import InfiniteIDFaceAnalysisLoader


@pytest.fixture
def insightface_folders(monkeypatch):
    """Set the host's configured insightface folders to the given paths for one test."""

    def configure(*paths):
        entry = ([str(p) for p in paths], set())
        monkeypatch.setitem(folder_paths.folder_names_and_paths, INSIGHTFACE, entry)

    return configure


def loader_prompt(model_name: str = "antelopev2", provider: str = "CPU") -> dict:
    """Loader -> Encode on core EmptyImage (black: detection runs and finds no face)."""
    return {
        "fa": {"class_type": "InfiniteIDFaceAnalysisLoader",
               "inputs": {"model_name": model_name, "provider": provider, "det_size": 640}},
        "cv": {"class_type": "InfiniteIDDemoCLIPVision", "inputs": {}},
        "adapter": {"class_type": "InfiniteIDDemoAdapter", "inputs": {"seed": 1}},
        "img": {"class_type": "EmptyImage", "inputs": {"width": 640, "height": 640, "batch_size": 1, "color": 0}},
        "enc": {"class_type": "InfiniteIDEncode",
                "inputs": {"face_analysis": ["fa", 0], "clip_vision": ["cv", 0], "adapter": ["adapter", 0],
                           "image": ["img", 0], "face_index": -1, "average": "embeddings",
                           "skip_images_without_face": True}},
        "out": capture("enc", infiniteid_identity=["enc", 0]),
    }


def test_lists_packs_of_every_configured_folder(tmp_path, insightface_folders):
    first, second = tmp_path / "a", tmp_path / "b"
    tiny.write_tiny_antelopev2(first, name="buffalo_l")
    tiny.write_tiny_antelopev2(second, name="antelopev2")
    insightface_folders(first, second)
    options = InfiniteIDFaceAnalysisLoader.INPUT_TYPES()["required"]
    assert options["model_name"][0] == ["antelopev2", "buffalo_l"]
    assert options["provider"][0] == ["auto", "CPU", "CUDA", "ROCm", "CoreML", "DirectML"]


def test_nested_pack_loads_and_encodes(runner, tmp_path, insightface_folders, caplog):
    tiny.write_tiny_antelopev2(tmp_path / "models" / "antelopev2", name="antelopev2")
    (tmp_path / "models" / "antelopev2" / "models" / "antelopev2").rename(
        tmp_path / "models" / "antelopev2" / "antelopev2")
    insightface_folders(tmp_path)
    prompt = loader_prompt(provider="CUDA")
    # Reaching "no face found" proves the loaded pack ran detection on the image.
    with caplog.at_level(logging.INFO), pytest.raises(PromptError, match="InfiniteIDEncode .*no face found in image 0"):
        runner.run(prompt)
    assert "nested folder" in caplog.text
    assert "provider CUDA is not available" in caplog.text or "runs it on CUDAExecutionProvider" in caplog.text


def test_missing_pack_message_through_the_host(runner, tmp_path, insightface_folders):
    insightface_folders(tmp_path)
    with pytest.raises(PromptError) as err:
        runner.run(loader_prompt())
    message = str(err.value)
    assert message.startswith("InfiniteIDFaceAnalysisLoader")
    for needed in ("scrfd_10g_bnkps.onnx", "glintr100.onnx", "models/insightface/models/antelopev2/", str(tmp_path)):
        assert needed in message


def test_loader_output_works_with_the_encoder(tmp_path, insightface_folders):
    from infinite_id.demo.nodes import _adapter, _clip_vision
    from infinite_id.identity.encode import encode_identity

    tiny.write_tiny_antelopev2(tmp_path)
    insightface_folders(tmp_path)
    analysis = InfiniteIDFaceAnalysisLoader().load("antelopev2", "CPU", 640)[0]
    image = np.full((640, 640, 3), 128, dtype=np.uint8)
    tiny.draw_face(image, 6, 7, identity=1)
    identity, faces = encode_identity(analysis, _clip_vision(), _adapter(1), torch.from_numpy(image)[None] / 255.0)
    assert identity.cond.shape == (1, 4, 64) and faces.shape == (1, 224, 224, 3)
