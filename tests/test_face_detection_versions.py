"""Face loading and detection against the REAL insightface, in either version.

Why: ComfyUI installs carry insightface 0.7.3 (most) or 2.x, whose ``FaceAnalysis``
differ (``prepare`` signature, default detection sizes, how ``name`` is resolved). These
tests import only ``identity/face_analysis.py`` and ``identity/faces.py`` (no torch, no
ComfyUI), so they also run in a plain insightface 0.7.3 environment without torch:
copy ``identity/ host/ demo/ tests/`` to a folder (inside the pack, pytest would import
the pack's top ``__init__.py``, which needs torch) and run
``python -m pytest --noconftest -c /dev/null --rootdir=. tests/test_face_detection_versions.py``.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
insightface = pytest.importorskip("insightface")

_ROOT = Path(__file__).resolve().parent.parent
_PKG = "iid_face_versions_under_test"


def _load(name: str):
    """Import ``<pack>/<name>.py`` inside a bare package (no pack ``__init__``, no host)."""
    if _PKG not in sys.modules:
        for pkg, path in ((_PKG, _ROOT), (f"{_PKG}.host", _ROOT / "host"), (f"{_PKG}.identity", _ROOT / "identity"),
                          (f"{_PKG}.demo", _ROOT / "demo")):
            module = types.ModuleType(pkg)
            module.__path__ = [str(path)]
            sys.modules[pkg] = module
    return importlib.import_module(f"{_PKG}.{name}")


loader = _load("identity.face_analysis")
faces = _load("identity.faces")
tiny = _load("demo.tiny_insightface")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("insightface")
    tiny.write_tiny_antelopev2(path)
    return path


@pytest.fixture(scope="module")
def app(root):
    return loader.load_face_analysis("antelopev2", "CPU", 640, roots=[str(root)])


def _bgr_with_faces(*cells, size=(640, 640), scale=1.0) -> np.ndarray:
    rgb = np.full((size[0], size[1], 3), 128, dtype=np.uint8)
    for n, (x, y) in enumerate(cells):
        tiny.draw_face(rgb, x, y, scale=scale, identity=n + 1)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def test_loads_exactly_the_resolved_folder(app, root, tmp_path, monkeypatch):
    assert Path(app.model_dir).resolve() == (root / "models" / "antelopev2").resolve()
    assert set(app.models) == {"detection", "recognition"}
    # insightface 2.x looks for a relative ``name`` in the working directory first: a
    # decoy folder there must not be picked up.
    decoy = tmp_path / "antelopev2"
    decoy.mkdir()
    monkeypatch.chdir(tmp_path)
    again = loader.load_face_analysis("antelopev2", "CPU", 640, roots=[str(root)])
    assert Path(again.model_dir).resolve() == (root / "models" / "antelopev2").resolve()


def test_nested_pack_folder_is_used_in_place(tmp_path, caplog):
    tiny.write_tiny_antelopev2(tmp_path / "models" / "antelopev2", name="antelopev2")
    inner = tmp_path / "models" / "antelopev2" / "models" / "antelopev2"
    nested = tmp_path / "models" / "antelopev2" / "antelopev2"
    inner.rename(nested)
    assert loader.available_packs([str(tmp_path)]) == ["antelopev2"]
    with caplog.at_level(logging.WARNING):
        app = loader.load_face_analysis("antelopev2", "CPU", 640, roots=[str(tmp_path)])
    assert Path(app.model_dir).resolve() == nested.resolve()
    assert "nested folder" in caplog.text
    assert (nested / tiny.DETECTOR_FILE).is_file()  # user files stay where they are


def test_missing_pack_names_files_and_folder(tmp_path):
    with pytest.raises(ValueError) as err:
        loader.load_face_analysis("antelopev2", "CPU", 640, roots=[str(tmp_path)])
    message = str(err.value)
    for needed in ("scrfd_10g_bnkps.onnx", "glintr100.onnx", "models/insightface/models/antelopev2/"):
        assert needed in message
    assert not (tmp_path / "models").exists()  # nothing created, nothing downloaded


def test_incomplete_pack_names_the_missing_file(root, tmp_path):
    pack = tmp_path / "models" / "antelopev2"
    pack.mkdir(parents=True)
    (pack / tiny.DETECTOR_FILE).write_bytes((root / "models" / "antelopev2" / tiny.DETECTOR_FILE).read_bytes())
    with pytest.raises(ValueError, match="lacks glintr100.onnx"):
        loader.load_face_analysis("antelopev2", "CPU", 640, roots=[str(tmp_path)])


def test_pack_list_includes_default_and_others(root, tmp_path):
    tiny.write_tiny_antelopev2(tmp_path, name="buffalo_l")
    (tmp_path / "models" / "empty").mkdir()
    assert loader.available_packs([str(tmp_path)]) == ["antelopev2", "buffalo_l"]
    assert loader.available_packs([str(root), str(tmp_path)]) == ["antelopev2", "buffalo_l"]


def test_unavailable_provider_falls_back_to_cpu(root, caplog):
    import onnxruntime

    if "CoreMLExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CoreML is available here")
    with caplog.at_level(logging.INFO):
        app = loader.load_face_analysis("antelopev2", "CoreML", 640, roots=[str(root)])
    assert "provider CoreML is not available" in caplog.text and "running on CPU instead" in caplog.text
    assert loader.running_providers(app) == ["CPUExecutionProvider"]
    assert "runs it on CPUExecutionProvider" in caplog.text


def test_onnxruntime_clash_is_reported(monkeypatch):
    monkeypatch.setattr(loader, "_installed", lambda dist: dist in ("onnxruntime", "onnxruntime-gpu"))
    assert "onnxruntime, onnxruntime-gpu" in loader.onnxruntime_clash()
    monkeypatch.setattr(loader, "_installed", lambda dist: dist == "onnxruntime")
    assert loader.onnxruntime_clash() == ""


def test_missing_insightface_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "insightface", None)
    monkeypatch.setitem(sys.modules, "insightface.app", None)
    with pytest.raises(ValueError, match="pip install insightface onnxruntime"):
        loader.import_insightface()


def test_find_face_matches_insightface_get(app):
    bgr = _bgr_with_faces((5, 6))
    found = faces.find_face(app, bgr, 0, -1, faces.detection_sizes(app))
    bbox, _ = tiny.expected_face(5, 6)
    np.testing.assert_allclose(found.bbox, bbox, atol=0.5)
    reference = app.get(bgr)[0]
    np.testing.assert_allclose(found.embedding, reference.embedding, rtol=1e-5, atol=1e-6)
    from insightface.utils import face_align

    crop = face_align.norm_crop(bgr, landmark=reference.kps, image_size=224)
    np.testing.assert_array_equal(found.crop_rgb, crop[:, :, ::-1])


def test_detection_sizes_from_either_version(app):
    assert faces.detection_sizes(app) == [(640, 640), (576, 576), (512, 512), (448, 448), (384, 384), (320, 320)]
    assert faces.detection_sizes(types.SimpleNamespace(det_size=[(128, 128), (480, 480)])) == [
        (480, 480), (416, 416), (352, 352)]
    assert faces.detection_sizes(types.SimpleNamespace(det_size=(320, 320))) == [(320, 320)]


class _SmallSizesOnly:
    """A detector that finds nothing above ``limit``, as for a face too large for 640."""

    def __init__(self, inner, limit: int) -> None:
        self.inner, self.limit, self.tried = inner, limit, []

    def detect(self, img, input_size=None, **kwargs):
        self.tried.append(tuple(input_size))
        if input_size[0] > self.limit:
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        return self.inner.detect(img, input_size=input_size, **kwargs)


def test_retries_smaller_detection_sizes(app):
    detector = _SmallSizesOnly(app.det_model, 384)
    proxy = types.SimpleNamespace(det_model=detector, models=app.models, det_size=(640, 640))
    scale = tiny.detection_scale(640, 640, (384, 384))
    found = faces.find_face(proxy, _bgr_with_faces((4, 5), scale=scale), 0, -1, faces.detection_sizes(proxy))
    assert detector.tried == [(640, 640), (576, 576), (512, 512), (448, 448), (384, 384)]
    assert found.det_size == (384, 384)
    np.testing.assert_allclose(found.bbox, tiny.expected_face(4, 5, scale)[0], atol=1.0)


def test_no_face_and_tiny_image_messages(app):
    sizes = faces.detection_sizes(app)
    gray = np.full((480, 640, 3), 128, np.uint8)
    assert faces.find_face(app, gray, 3, -1, sizes) == (
        "no face found in image 3 (640x480); detection sizes tried: 640, 576, 512, 448, 384, 320")
    tiny_image = np.full((16, 16, 3), 128, np.uint8)
    assert "16x16 pixels; the face detector needs at least 64x64" in faces.find_face(app, tiny_image, 0, -1, sizes)


def test_face_choice_largest_or_from_the_left(app):
    def face(x1, y1, x2, y2):
        return types.SimpleNamespace(bbox=np.array([x1, y1, x2, y2], np.float32))

    small_left, big_right, mid = face(0, 0, 10, 10), face(100, 0, 150, 50), face(50, 50, 70, 70)
    detected = [mid, big_right, small_left]
    assert faces.choose_face(detected, -1) is big_right
    assert [faces.choose_face(detected, k) for k in range(3)] == [small_left, mid, big_right]
    assert faces.choose_face(detected, 3) is None
    bgr = _bgr_with_faces((15, 3), (3, 3))
    right = faces.find_face(app, bgr, 0, 1, faces.detection_sizes(app))
    np.testing.assert_allclose(right.bbox, tiny.expected_face(15, 3)[0], atol=0.5)
    assert right.faces_found == 2
    assert "has 2 face(s) but face_index is 2" in faces.find_face(app, bgr, 0, 2, faces.detection_sizes(app))
