"""The tiny insightface pack behaves as documented under the REAL insightface.

Why: every face-node test relies on ``demo/tiny_insightface.py`` planting faces where
it says and giving stable, distinguishable embeddings. These tests run the real
``FaceAnalysis`` (0.7.3 or 2.x) and onnxruntime; they need no ComfyUI host, so they can
also run in a plain insightface venv with ``pytest --noconftest``.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
insightface = pytest.importorskip("insightface")

_MODULE_PATH = Path(__file__).resolve().parent.parent / "demo" / "tiny_insightface.py"


def _load_module():
    name = "tiny_insightface_fixture_under_test"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _MODULE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


tiny = _load_module()
GRAY = 128


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return tiny.tiny_face_analysis(tmp_path_factory.mktemp("insightface"))


def _gray(height: int = 640, width: int = 640) -> np.ndarray:
    return np.full((height, width, 3), GRAY, dtype=np.uint8)


def _bgr(image_rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image_rgb[:, :, ::-1])


def _assert_face(face, cell_x: int, cell_y: int, scale: float = 1.0) -> None:
    bbox, kps = tiny.expected_face(cell_x, cell_y, scale)
    np.testing.assert_allclose(face.bbox, bbox, atol=0.5)
    np.testing.assert_allclose(face.kps, kps, atol=0.5)
    assert face.det_score > 0.9


def test_pack_files_and_routing(tmp_path):
    model_dir = tiny.write_tiny_antelopev2(tmp_path)
    assert model_dir == tmp_path / "models" / "antelopev2"
    det, rec = model_dir / tiny.DETECTOR_FILE, model_dir / tiny.RECOGNIZER_FILE
    first = (det.read_bytes(), rec.read_bytes())
    assert rec.stat().st_size < 2 * 1024 * 1024
    tiny.write_tiny_antelopev2(tmp_path)  # idempotent and deterministic
    assert (det.read_bytes(), rec.read_bytes()) == first

    analysis = tiny.tiny_face_analysis(tmp_path)
    assert set(analysis.models) == {"detection", "recognition"}
    recognizer = analysis.models["recognition"]
    assert type(recognizer).__name__ == "ArcFaceONNX"
    assert (recognizer.input_mean, recognizer.input_std) == (127.5, 127.5)
    assert analysis.models["detection"].use_kps


def test_module_imports_without_onnx():
    code = (
        "import sys, importlib.util; sys.modules['onnx'] = None; "
        f"spec = importlib.util.spec_from_file_location('t', {str(_MODULE_PATH)!r}); "
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); print(m.FACE_CELL)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "32"


def test_one_face_exact_box_and_keypoints(app):
    image = _gray()
    tiny.draw_face(image, 5, 7)
    faces = app.get(_bgr(image))
    assert len(faces) == 1
    _assert_face(faces[0], 5, 7)
    assert faces[0].embedding.shape == (tiny.EMBEDDING_DIM,)
    assert np.isfinite(faces[0].embedding).all()


@pytest.mark.parametrize("height,width", [(320, 480), (480, 320), (1280, 960)])
def test_other_image_sizes_report_original_coordinates(app, height, width):
    scale = tiny.detection_scale(height, width, (640, 640))
    assert scale != 1.0
    image = _gray(height, width)
    tiny.draw_face(image, 4, 3, scale=scale)
    faces = app.get(_bgr(image))
    assert len(faces) == 1
    _assert_face(faces[0], 4, 3, scale)


def test_two_faces_and_no_face(app):
    image = _gray()
    tiny.draw_face(image, 3, 4, identity=1)
    tiny.draw_face(image, 14, 12, identity=2)
    faces = sorted(app.get(_bgr(image)), key=lambda face: face.bbox[0])
    assert len(faces) == 2
    _assert_face(faces[0], 3, 4)
    _assert_face(faces[1], 14, 12)
    assert not np.allclose(faces[0].embedding, faces[1].embedding)

    assert app.get(_bgr(_gray())) == []


@pytest.mark.parametrize("background", [0, 255])
def test_only_red_cells_are_faces(app, background):
    image = np.full((640, 640, 3), background, dtype=np.uint8)
    tiny.draw_face(image, 9, 9)
    assert app.get(image) == []  # RGB passed as BGR: a blue square, not a face
    assert len(app.get(_bgr(image))) == 1
    half = _gray()
    half[320:352, 320:336] = (255, 0, 0)  # half a cell: score ~0.5 at most
    assert all(face.det_score < 0.6 for face in app.get(_bgr(half)))


def test_embeddings_are_deterministic_and_distinguish_faces(app):
    first = _gray()
    tiny.draw_face(first, 8, 8, identity=11)
    again = app.get(_bgr(first))[0].embedding
    assert np.array_equal(app.get(_bgr(first))[0].embedding, again)

    other = _gray()
    tiny.draw_face(other, 8, 8, identity=12)
    other_embedding = app.get(_bgr(other))[0].embedding
    cosine = float(np.dot(again, other_embedding) / (np.linalg.norm(again) * np.linalg.norm(other_embedding)))
    assert cosine < 0.99

    moved = _gray()
    tiny.draw_face(moved, 3, 12, identity=11)  # same person elsewhere: same aligned crop
    np.testing.assert_allclose(app.get(_bgr(moved))[0].embedding, again, rtol=1e-3, atol=1e-3)


def test_norm_crop_with_detected_keypoints(app):
    from insightface.utils import face_align

    image = _gray()
    tiny.draw_face(image, 10, 6, identity=5)
    bgr = _bgr(image)
    face = app.get(bgr)[0]
    crop = face_align.norm_crop(bgr, landmark=face.kps, image_size=112)
    assert crop.shape == (112, 112, 3)
    # The 96 px box maps onto the 112 px crop, so the red cell is its central 37 px.
    assert tuple(crop[56, 56]) == (0, 0, 255)
    assert tuple(crop[5, 5]) != (0, 0, 255)
    recognizer = app.models["recognition"]
    np.testing.assert_allclose(recognizer.get_feat(crop).ravel(), face.embedding, rtol=1e-5, atol=1e-5)
