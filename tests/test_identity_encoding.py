"""InfiniteIDEncode through the real host, the real insightface and the tiny fixtures.

The full path runs as an API prompt (LoadImage -> Encode -> Apply -> Sampler); its
tokens are compared with a step-by-step recomputation in this file (insightface's own
``get`` and ``norm_crop``, the tiny CLIP vision, the mapper's two halves). Bad inputs
go through the executor too: each must give a message naming the node and the input
and leave the host working.
"""
from __future__ import annotations

import dataclasses

import folder_paths
import nodes
import numpy as np
import pytest
import torch
from identity_prompts import as_image, encode_nodes, face_rgb, image_node
from PIL import Image
from prompts import base_prompt, infinite_id_nodes, sampler_inputs

from infinite_id.demo import tiny_insightface as tiny
from infinite_id.demo.nodes import _adapter, _clip_vision, _face_analysis
from infinite_id.demo.tiny_identity import build_tiny_adapter
from infinite_id.host.errors import InfiniteIDError
from infinite_id.host.executor import PromptError, capture
from infinite_id.nodes.encode import InfiniteIDEncode

NO_FACE_SIZES = "detection sizes tried: 640, 576, 512, 448, 384, 320"


def run_encode(runner, value, **settings):
    got = runner.run(encode_nodes(image_node(value), **settings))["enc"]
    return got["infiniteid_identity"], got["image"]


def _hidden(images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():  # as the executor runs it
        return _clip_vision().encode_image(images)["penultimate_hidden_states"].float()


def reference(rgb: np.ndarray, app) -> dict:
    """Each step by hand: detect, largest face, ArcFace, norm_crop 224, CLIP, both mappers."""
    from insightface.utils import face_align

    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    face = max(app.get(bgr), key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
    crop = face_align.norm_crop(bgr, landmark=face.kps, image_size=224)[:, :, ::-1]
    crop = torch.from_numpy(np.ascontiguousarray(crop)).float()[None] / 255.0
    embed = torch.from_numpy(face.normed_embedding).float()[None]
    return {"embed": embed, "hidden": _hidden(crop), "crop": crop, "bbox": face.bbox}


def map_tokens(embed: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    mapper = _adapter(1).mapper
    with torch.inference_mode():
        clip_tokens = mapper.clip_proj(hidden.mean(dim=1)).view(embed.shape[0], 2, 64)
        face_tokens = mapper.face_mlp(embed).view(embed.shape[0], 2, 64)
    return torch.cat([clip_tokens, face_tokens], dim=1)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """insightface's own FaceAnalysis on the tiny pack, independent of the pack's loader."""
    return tiny.tiny_face_analysis(tmp_path_factory.mktemp("insightface_reference"))


def test_full_path_load_image_encode_apply_sample(runner, app, tmp_path):
    rgb = face_rgb((6, 7))
    Image.fromarray(rgb).save(tmp_path / "iid_face.png")
    previous = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path))
    try:
        prompt = base_prompt()
        prompt.update(infinite_id_nodes())
        prompt.update({key: value for key, value in encode_nodes({}).items() if key not in ("img", "out")})
        prompt["img"] = {"class_type": "LoadImage", "inputs": {"image": "iid_face.png"}}
        prompt["apply"]["inputs"]["identity"] = ["enc", 0]
        prompt["iid"] = {"class_type": "InfiniteIDSampler", "inputs": {"model": ["apply", 0], **sampler_inputs(steps=1)}}
        prompt["out"] = capture("enc", infiniteid_identity=["enc", 0], image=["enc", 1], latent=["iid", 0])
        got = runner.run(prompt)["enc"]
    finally:
        folder_paths.set_input_directory(previous)
    identity, faces, latent = got["infiniteid_identity"], got["image"], got["latent"]["samples"]
    ref = reference(rgb, app)
    torch.testing.assert_close(identity.cond, map_tokens(ref["embed"], ref["hidden"]), rtol=1e-5, atol=1e-5)
    # The negative side: CLIP of the image its normalisation maps to ~0 (the CLIP mean colour).
    grey = torch.empty(1, 224, 224, 3)
    grey[..., 0], grey[..., 1], grey[..., 2] = 0.48145466, 0.4578275, 0.40821073
    blank = _hidden(grey)
    torch.testing.assert_close(identity.uncond, map_tokens(torch.zeros(1, 512), blank), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(faces, ref["crop"])
    torch.testing.assert_close(identity.features["face_embeds"], ref["embed"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(identity.info["boxes"]["0"], tiny.expected_face(6, 7)[0], atol=0.5)
    assert identity.info["adapter"] == "tiny-adapter-1" and identity.info["used"] == [0]
    assert latent.shape == (1, 4, 16, 16) and torch.isfinite(latent).all()


def test_several_images_average_embeddings_or_tokens(runner, app):
    a, b = face_rgb((5, 5), first_identity=1), face_rgb((12, 9), first_identity=2)
    ref_a, ref_b = reference(a, app), reference(b, app)
    embeds = torch.cat([ref_a["embed"], ref_b["embed"]])
    hidden = torch.cat([ref_a["hidden"], ref_b["hidden"]])
    by_embeddings, faces = run_encode(runner, as_image(a, b))
    mean_embed = torch.nn.functional.normalize(embeds.mean(0, keepdim=True), dim=-1)
    expected = map_tokens(mean_embed, hidden.mean(0, keepdim=True))
    torch.testing.assert_close(by_embeddings.cond, expected, rtol=1e-5, atol=1e-5)
    assert faces.shape == (2, 224, 224, 3) and by_embeddings.features["clip_hidden"].shape == (2, 50, 32)
    by_tokens, _ = run_encode(runner, as_image(a, b), average="tokens")
    expected = map_tokens(embeds, hidden).mean(0, keepdim=True)
    torch.testing.assert_close(by_tokens.cond, expected, rtol=1e-5, atol=1e-5)


def test_skip_images_without_face(runner, app):
    gray, face = face_rgb(), face_rgb((6, 7))
    identity, faces = run_encode(runner, as_image(gray, face))
    assert identity.info["used"] == [1] and identity.info["skipped"] == [0] and faces.shape[0] == 1
    ref = reference(face, app)
    torch.testing.assert_close(identity.cond, map_tokens(ref["embed"], ref["hidden"]), rtol=1e-5, atol=1e-5)
    with pytest.raises(PromptError, match=f"InfiniteIDEncode: image: no face found in image 0 \\(640x640\\); "
                                          f"{NO_FACE_SIZES}. Enable skip_images_without_face"):
        run_encode(runner, as_image(gray, face), skip_images_without_face=False)
    with pytest.raises(PromptError, match="InfiniteIDEncode: image: no usable face in any of the 2 image"):
        run_encode(runner, as_image(gray, gray))


BAD_INPUTS = {
    "no face": (lambda: as_image(face_rgb()), f"InfiniteIDEncode: image: no face found in image 0 .*{NO_FACE_SIZES}"),
    "too small": (lambda: torch.full((1, 16, 16, 3), 0.5),
                  "InfiniteIDEncode: image: .*image 0 is 16x16 pixels; the face detector needs at least 64x64"),
    "nan": (lambda: as_image(face_rgb((6, 7))).index_put_((torch.tensor([0]), torch.tensor([3])),
                                                            torch.tensor(float("nan"))),
            "InfiniteIDEncode: image: image 0 contains NaN or infinite values"),
    "mask shaped": (lambda: torch.zeros(1, 64, 64),
                    r"InfiniteIDEncode: image: expected an IMAGE tensor \[batch, height, width, channels\], got shape"),
    "five channels": (lambda: torch.zeros(1, 64, 64, 5), "InfiniteIDEncode: image: 5 colour channels"),
    "not an image": (lambda: "a string", "InfiniteIDEncode: image: expected an IMAGE tensor .* got str"),
    "gray accepted, no face": (lambda: torch.full((1, 96, 96, 1), 0.5), "no face found in image 0 \\(96x96\\)"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_messages(runner, case):
    build, message = BAD_INPUTS[case]
    with pytest.raises(PromptError, match=message):
        run_encode(runner, build())


def test_face_index_and_several_faces(runner):
    two = as_image(face_rgb((3, 3), (15, 3)))
    right, _ = run_encode(runner, two, face_index=1)
    np.testing.assert_allclose(right.info["boxes"]["0"], tiny.expected_face(15, 3)[0], atol=0.5)
    assert right.info["faces_found"] == {"0": 2}
    largest, _ = run_encode(runner, two, face_index=-1)
    assert largest.info["faces_found"] == {"0": 2}
    with pytest.raises(PromptError, match="InfiniteIDEncode: image: image 0 has 2 face\\(s\\) but face_index is 4"):
        run_encode(runner, two, face_index=4, skip_images_without_face=False)


def test_rgba_gray_and_mixed_sizes_are_accepted(runner):
    rgb = as_image(face_rgb((6, 7)))
    plain, _ = run_encode(runner, rgb)
    rgba, _ = run_encode(runner, torch.cat([rgb, torch.full_like(rgb[..., :1], 0.3)], dim=-1))
    torch.testing.assert_close(rgba.cond, plain.cond)
    other = as_image(face_rgb((4, 3), size=(512, 768), first_identity=1))
    mixed, faces = run_encode(runner, [rgb, other])
    assert mixed.info["used"] == [0, 1] and faces.shape == (2, 224, 224, 3)
    # The host keeps working after all the refused prompts above.
    again, _ = run_encode(runner, rgb)
    torch.testing.assert_close(again.cond, plain.cond)


def test_adapter_and_model_mismatch_messages():
    adapter, image = _adapter(1), as_image(face_rgb((6, 7)))
    wide = dataclasses.replace(adapter, info={**adapter.info, "clip_width": 1280})
    node = InfiniteIDEncode()
    with pytest.raises(InfiniteIDError, match="InfiniteIDEncode: clip_vision: this CLIP vision model gives 32-wide "
                                              "hidden states but adapter 'tiny-adapter-1' expects 1280-wide"):
        node.encode(_face_analysis(640), _clip_vision(), wide, image, -1, "embeddings", True)
    bare = build_tiny_adapter(nodes.NODE_CLASS_MAPPINGS["InfiniteIDDemoCheckpoint"]().load(0)[0])
    with pytest.raises(InfiniteIDError, match="InfiniteIDEncode: adapter: 'tiny-adapter-1' has no mappers"):
        node.encode(_face_analysis(640), _clip_vision(), bare, image, -1, "embeddings", True)
    with pytest.raises(InfiniteIDError, match="InfiniteIDEncode: face_analysis: this object has no insightface"):
        node.encode("not a model", _clip_vision(), adapter, image, -1, "embeddings", True)
