"""InfiniteIDFaceSimilarity / InfiniteIDClipScore and the evaluation math.

Backbones are tiny and random but real (facenet-pytorch's InceptionResnetV1, a
transformers CLIPModel, the tiny insightface pack), loaded from files in temporary model
folders through the pack's loaders. Every number is compared with a recomputation in
this file that goes through insightface's own ``FaceAnalysis.get``, ``norm_crop`` and the
models' plain forward passes.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from eval_helpers import app, by_hand_face, clip_by_hand, cos, eval_folders, facenet_by_hand, models_dir  # noqa: F401
from identity_prompts import as_image, face_rgb, image_node

from infinite_id.demo import tiny_eval
from infinite_id.demo.nodes import _face_analysis
from infinite_id.evaluation import backbones, metrics
from infinite_id.host.errors import InfiniteIDError
from infinite_id.host.executor import PromptError, capture
from infinite_id.nodes.evaluation import InfiniteIDClipScore, InfiniteIDFaceSimilarity

pytest.importorskip("facenet_pytorch")


GEN = [face_rgb((7, 6), first_identity=3), face_rgb((9, 8), first_identity=4), face_rgb()]  # last: no face
REF = face_rgb((7, 6), first_identity=3)


def _similarity_prompt(backbone: str, facenet_model: str = tiny_eval.TINY_FACENET_NAME) -> dict:
    return {"fa": {"class_type": "InfiniteIDDemoFaceAnalysis", "inputs": {}},
            "gen": image_node(as_image(*GEN)), "ref": image_node(as_image(REF)),
            "sim": {"class_type": "InfiniteIDFaceSimilarity",
                    "inputs": {"face_analysis": ["fa", 0], "image": ["gen", 0], "reference": ["ref", 0],
                               "backbone": backbone, "facenet_model": facenet_model}},
            "out": capture("sim", float=["sim", 0], string=["sim", 1], image=["sim", 2])}


@pytest.mark.parametrize("backbone", ["arcface", "facenet"])
def test_face_similarity_through_the_host_equals_recomputation(runner, app, eval_folders, backbone):
    got = runner.run(_similarity_prompt(backbone))["sim"]
    entries = json.loads(got["string"])
    ref = by_hand_face(REF, app)
    expected = []
    for rgb in GEN:
        face = by_hand_face(rgb, app)
        if not face:
            expected.append(0.0)
        elif backbone == "arcface":
            expected.append(cos(face["arcface"], ref["arcface"]))
        else:
            expected.append(cos(facenet_by_hand(face["crop"]), facenet_by_hand(ref["crop"])))
    np.testing.assert_allclose([e["score"] for e in entries], expected, atol=2e-5)
    assert got["float"] == pytest.approx(np.mean(expected), abs=2e-5)
    assert expected[0] == pytest.approx(1.0, abs=1e-5) and expected[1] < 0.999  # same person / another one
    assert [e["face_found"] for e in entries] == [True, True, False]
    assert "no face found in image 2" in entries[2]["reason"]
    assert got["image"].shape == (3, 640, 640, 3)


def test_annotated_image_flags_images_without_face(eval_folders):
    fa = _face_analysis(640)
    _, _, annotated = InfiniteIDFaceSimilarity().score(fa, as_image(*GEN), as_image(REF), "arcface",
                                                       tiny_eval.TINY_FACENET_NAME)
    no_face = annotated[2].numpy()
    assert no_face[320, 1] == pytest.approx([230 / 255, 30 / 255, 30 / 255], abs=1e-6)  # red frame
    assert (annotated[0].numpy()[320, 1] != no_face[320, 1]).any()
    box = np.round(_face_analysis(640).det_model.detect(np.ascontiguousarray(GEN[0][:, :, ::-1]),
                                                        input_size=(640, 640))[0][0, :4]).astype(int)
    assert annotated[0].numpy()[box[1] + 1, box[0] + 1] == pytest.approx([40 / 255, 220 / 255, 40 / 255], abs=1e-6)


@pytest.mark.parametrize("clip_name", [tiny_eval.TINY_CLIP_NAME, f"{tiny_eval.TINY_CLIP_NAME}.safetensors"])
def test_clip_scores_equal_recomputation(runner, app, eval_folders, clip_name):
    prompt = "a photo of a person holding flowers"
    graph = {"fa": {"class_type": "InfiniteIDDemoFaceAnalysis", "inputs": {}},
             "gen": image_node(as_image(*GEN)), "ref": image_node(as_image(REF)),
             "cs": {"class_type": "InfiniteIDClipScore",
                    "inputs": {"face_analysis": ["fa", 0], "image": ["gen", 0], "reference": ["ref", 0],
                               "clip_model": clip_name, "prompt": prompt}},
             "out": capture("cs", float=["cs", 1], string=["cs", 2])}
    got = runner.run(graph)["cs"]
    entries = json.loads(got["string"])
    faces = [by_hand_face(rgb, app) for rgb in GEN]
    crops = [f["crop"] for f in faces if f] + [by_hand_face(REF, app)["crop"]]
    face_embs, _ = clip_by_hand(crops)
    expected_i = [cos(face_embs[0], face_embs[-1]), cos(face_embs[1], face_embs[-1]), 0.0]
    image_embs, text_emb = clip_by_hand(GEN, prompt)
    expected_t = [cos(e, text_emb) for e in image_embs]
    np.testing.assert_allclose([e["clip_i"] for e in entries], expected_i, atol=2e-5)
    np.testing.assert_allclose([e["clip_t"] for e in entries], expected_t, atol=2e-5)
    assert got["float"] == pytest.approx(np.mean(expected_t), abs=2e-5)
    assert entries[2]["face_found"] is False


def test_zscore_and_summary_of_known_inputs():
    np.testing.assert_allclose(metrics.zscore([1.0, 2.0, 3.0]), [-1.224744871, 0.0, 1.224744871], atol=1e-9)
    np.testing.assert_allclose(metrics.zscore([5.0, 5.0]), [0.0, 0.0])
    face = {"a": 0.6, "b": 0.7, "c": 0.8}
    clip_i = {"a": 0.90, "b": 0.80, "c": 0.85}
    # zscore(face) = [-1.2247, 0, 1.2247]; zscore(clip_i) = [1.2247, -1.2247, 0]
    got = metrics.summary_scores(face, clip_i)
    assert got == pytest.approx({"a": 0.0, "b": -0.612372436, "c": 0.612372436}, abs=1e-8)
    assert metrics.face_scores([None, np.array([1.0, 0.0])], np.array([1.0, 1.0])).tolist() == \
        pytest.approx([0.0, 2 ** -0.5])


def test_missing_weights_name_the_file_and_folder(eval_folders):
    fa = _face_analysis(640)
    with pytest.raises(InfiniteIDError) as err:
        InfiniteIDFaceSimilarity().score(fa, as_image(GEN[0]), as_image(REF), "facenet", "nothing.pt")
    msg = str(err.value)
    assert msg.startswith("InfiniteIDFaceSimilarity: facenet_model: 'nothing.pt' was not found")
    assert "20180402-114759-vggface2.pt" in msg and str(eval_folders / "facenet") in msg
    with pytest.raises(InfiniteIDError) as err:
        InfiniteIDClipScore().score(fa, as_image(GEN[0]), as_image(REF), "clip-vit-large-patch14", "a person")
    msg = str(err.value)
    assert msg.startswith("InfiniteIDClipScore: clip_model: 'clip-vit-large-patch14' was not found")
    assert "config.json" in msg and str(eval_folders / "clip") in msg


def test_text_encoder_only_file_is_refused(eval_folders):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in tiny_eval.build_tiny_clip(0).state_dict().items() if k.startswith("text_")}
    save_file(state, str(eval_folders / "clip" / "clip_l.safetensors"))
    try:
        with pytest.raises(InfiniteIDError, match="holds no CLIP vision tower"):
            InfiniteIDClipScore().score(_face_analysis(640), as_image(GEN[0]), as_image(REF), "clip_l.safetensors",
                                        "a person")
    finally:
        (eval_folders / "clip" / "clip_l.safetensors").unlink()


def test_missing_facenet_library_says_what_to_install(eval_folders, monkeypatch):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "facenet_pytorch.models.inception_resnet_v1", None)
    with pytest.raises(ValueError, match=r"facenet-pytorch is not installed.*--no-deps"):
        backbones.load_facenet("20180402-114759-vggface2.pt")


@pytest.mark.parametrize("case,match", [
    ("no_face_reference", "reference: no face found in the reference image"),
    ("empty_prompt", "prompt: empty"),
    ("nan_image", "image: image 0 contains NaN"),
])
def test_bad_inputs_name_node_and_input(runner, eval_folders, case, match):
    gen, ref, prompt = as_image(GEN[0]), as_image(REF), "a person"
    if case == "no_face_reference":
        ref = as_image(face_rgb())
    elif case == "empty_prompt":
        prompt = "  "
    else:
        gen = torch.full_like(gen, float("nan"))
    graph = {"fa": {"class_type": "InfiniteIDDemoFaceAnalysis", "inputs": {}},
             "gen": image_node(gen), "ref": image_node(ref),
             "cs": {"class_type": "InfiniteIDClipScore",
                    "inputs": {"face_analysis": ["fa", 0], "image": ["gen", 0], "reference": ["ref", 0],
                               "clip_model": tiny_eval.TINY_CLIP_NAME, "prompt": prompt}},
             "out": capture("cs", float=["cs", 0])}
    with pytest.raises(PromptError, match=match) as err:
        runner.run(graph)
    assert err.value.node_type == "InfiniteIDClipScore"


def test_pack_loads_without_importing_the_optional_libraries():
    """facenet-pytorch, lpips and torchmetrics are imported by the nodes only when they run."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('infinite_id_bootstrap', {str(root / 'host' / 'locate.py')!r})\n"
            "m = importlib.util.module_from_spec(spec); sys.modules[spec.name] = m; spec.loader.exec_module(m)\n"
            "m.import_host(); pack = m.load_pack()\n"
            "import infinite_id\n"
            "assert 'InfiniteIDFaceSimilarity' in infinite_id.NODE_CLASS_MAPPINGS\n"
            "print(sorted(n for n in ('facenet_pytorch', 'lpips', 'torchmetrics') if n in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_facenet_folder_keeps_user_paths(monkeypatch, tmp_path):
    """models/facenet is added after paths a user configured (extra_model_paths.yaml), never instead."""
    import os

    import folder_paths

    from infinite_id.host.folders import register_folders

    monkeypatch.setitem(folder_paths.folder_names_and_paths, "facenet", ([str(tmp_path)], {".pt"}))
    register_folders()
    paths, extensions = folder_paths.folder_names_and_paths["facenet"]
    assert paths == [str(tmp_path), os.path.join(folder_paths.models_dir, "facenet")]
    assert {".pt", ".pth", ".safetensors"} <= extensions
