"""A tiny, deterministic insightface "antelopev2" pack generated in code.

Why: the face nodes must be tested through the *real* ``insightface.app.FaceAnalysis``
and onnxruntime (model routing, SCRFD decoding, NMS, ``norm_crop`` alignment, ArcFace
pre-processing), but the real antelopev2 weights are ~350 MB and nothing may be
downloaded. So this module writes two small ONNX graphs that insightface routes exactly
like the real files, and whose output depends on the image in a way tests can control:

* ``scrfd_10g_bnkps.onnx`` -- routed as SCRFD with keypoints (9 outputs: scores, boxes,
  keypoints for strides 8/16/32, 2 anchors per location, dynamic input height/width so
  ``prepare(det_size=...)`` chooses the size). A "face" is a pure red square
  (RGB 255, 0, 0) filling exactly one 32x32 cell of the 32-pixel grid *in the detector's
  input space* (see :func:`detection_scale`). Each stride-32 cell is average-pooled;
  the score of the cell's first anchor is ``sigmoid(k * (R - (G + B) / 2 - c))`` on the
  blob insightface builds (``(pixel - 127.5) / 128`` in R, G, B order, because
  insightface is fed BGR and calls ``blobFromImage(swapRB=True)``). So a fully red cell
  scores ~1, a half red cell 0.5, and anything with ``R <= min(G, B)`` (gray, white,
  black, blue, green, the black padding) ~0. Strides 8 and 16 and the second anchor
  always score ~0. Boxes and keypoints are constants relative to the anchor centre
  (SCRFD's anchor centres are cell *corners*), chosen so the decoded box is 96x96 and
  centred on the red cell, and the five keypoints are the standard ArcFace 112x112
  template scaled into that box. :func:`expected_face` gives the exact answer.
* ``glintr100.onnx`` -- routed as ArcFaceONNX (input ``[N, 3, 112, 112]``, output
  ``[N, 512]``): 8x8 average pooling, flatten, and a fixed seeded 588x512 projection.
  No node name starts with ``Sub``/``Mul``, so insightface applies its non-mxnet
  normalisation ``(pixel - 127.5) / 127.5`` (RGB order). Any change of the aligned
  crop changes the embedding; the same crop always gives the same embedding.

Channel order matters and is part of what the fixture checks: insightface expects
**BGR** images (OpenCV order). Draw faces on an RGB array with :func:`draw_face`, then
pass ``image[:, :, ::-1]`` to ``FaceAnalysis.get``, as a correct ComfyUI node does. A node
that forgets the conversion shows the detector a *blue* square and finds no face.

Both insightface 0.7.3 (what most ComfyUI installs have; it routes the detector to its
``RetinaFace`` class, which decodes SCRFD outputs identically) and insightface 2.x load
this pack. Outputs are rank 2 (``[anchors, C]``), the layout both versions decode.
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import onnx

logger = logging.getLogger(__name__)

# --- public constants ------------------------------------------------------------------
FACE_CELL = 32
"""Side of a planted face (pixels in detector input space); also the detector's grid."""

FACE_BOX = 96
"""Side of the box the detector reports around a face (detector input space)."""

ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
"""ArcFace's 112x112 five-point template (eyes, nose, mouth corners)."""

EMBEDDING_DIM = 512
RECOGNIZER_SIZE = 112
RECOGNIZER_POOL = 8
RECOGNIZER_SEED = 20240501
DETECTOR_FILE = "scrfd_10g_bnkps.onnx"
RECOGNIZER_FILE = "glintr100.onnx"

# ONNX versions old enough for onnxruntime >= 1.16 (and thus every ComfyUI install).
OPSET = 13
IR_VERSION = 8

_STRIDES = (8, 16, 32)
_NUM_ANCHORS = 2
# Score sharpness and offset: on insightface's blob a red pixel has
# R - (G + B) / 2 = 2 * 127.5 / 128, so half of that is the 0.5-score point.
_SCORE_GAIN = 12.0
_SCORE_OFFSET = 127.5 / 128.0
_SCORE_OFF_BIAS = -30.0  # sigmoid(-30) ~ 1e-13: "never a face"


# --- geometry --------------------------------------------------------------------------
def _face_geometry_offsets() -> tuple[np.ndarray, np.ndarray]:
    """Box distances (l, t, r, b) and keypoint offsets relative to a stride-32 anchor.

    Why: SCRFD decodes ``box = anchor -/+ distance * stride`` and
    ``kp = anchor + offset * stride`` with the anchor at the cell's top-left corner, so
    constants relative to that corner place the same face box on every red cell.
    Returned in pixels (not yet divided by the stride).
    """
    half_cell = FACE_CELL / 2.0
    half_box = FACE_BOX / 2.0
    box_x1 = half_cell - half_box  # relative to the anchor (cell corner): -32
    box_x2 = half_cell + half_box  # +64
    distances = np.array([-box_x1, -box_x1, box_x2, box_x2], dtype=np.float64)
    kps = box_x1 + ARCFACE_TEMPLATE * (FACE_BOX / 112.0)  # (5, 2) relative to anchor
    return distances, kps


def detection_scale(image_height: int, image_width: int, det_size: Sequence[int] = (640, 640)) -> float:
    """Insightface's ``det_scale`` for an image detected at ``det_size`` (width, height).

    Why: insightface resizes the image into ``det_size`` keeping the aspect ratio (the
    rest is black padding) and divides decoded boxes by this factor, so planted faces
    must be drawn at ``FACE_CELL / scale`` original pixels and expected results divided
    by it. This mirrors the computation in SCRFD.detect of both 0.7.3 and 2.x.
    """
    det_w, det_h = int(det_size[0]), int(det_size[1])
    im_ratio = float(image_height) / image_width
    model_ratio = float(det_h) / det_w
    if im_ratio > model_ratio:
        new_height = det_h
    else:
        new_height = int(det_w * im_ratio)
    return float(new_height) / image_height


def expected_face(cell_x: int, cell_y: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The bbox ``(4,)`` and keypoints ``(5, 2)`` insightface reports for a planted face.

    ``cell_x``/``cell_y`` index the 32-pixel grid of the detector's input; ``scale`` is
    insightface's ``det_scale`` (:func:`detection_scale`; 1.0 when the image already has
    the detection size). Results are in ORIGINAL image pixels: the 96x96 detector box
    centred on the red cell, and the ArcFace template scaled into it, divided by
    ``scale``. Note the box may extend past the image for faces in edge cells.
    """
    distances, kps = _face_geometry_offsets()
    anchor = np.array([cell_x * FACE_CELL, cell_y * FACE_CELL], dtype=np.float64)
    bbox = np.array(
        [anchor[0] - distances[0], anchor[1] - distances[1], anchor[0] + distances[2], anchor[1] + distances[3]]
    )
    return bbox / scale, (anchor[None, :] + kps) / scale


def _cell_span(index: int, scale: float, limit: int) -> tuple[int, int]:
    """Original-pixel span [a, b) that insightface's resize maps onto grid cell ``index``."""
    start = int(round(index * FACE_CELL / scale))
    stop = int(round((index + 1) * FACE_CELL / scale))
    return max(0, min(start, limit)), max(0, min(stop, limit))


def draw_face(
    image_rgb_uint8: np.ndarray,
    cell_x: int,
    cell_y: int,
    *,
    scale: float = 1.0,
    identity: int | None = None,
) -> None:
    """Paint a detectable "face" (a pure red square) into an RGB uint8 image, in place.

    The square covers grid cell (``cell_x``, ``cell_y``) of the detector input, i.e.
    ``FACE_CELL / scale`` original pixels (``scale`` from :func:`detection_scale`).
    With ``identity`` set, the rest of the 96x96 face box is filled with a seeded
    pattern of colours that have ``R <= min(G, B)``: the detector ignores them (no
    neighbouring cell can score), but the aligned 112x112 crop, and so the embedding,
    differs per identity. Why: tests need faces that are found at known places *and*
    faces that are distinguishable people. Keep faces at least two cells apart (closer
    boxes overlap enough for NMS to drop one) and convert to BGR before insightface.
    """
    if image_rgb_uint8.ndim != 3 or image_rgb_uint8.shape[2] < 3 or image_rgb_uint8.dtype != np.uint8:
        raise ValueError(
            f"draw_face needs an HxWx3 uint8 RGB image, got {image_rgb_uint8.shape} {image_rgb_uint8.dtype}"
        )
    height, width = image_rgb_uint8.shape[:2]
    if identity is not None:
        bbox, _ = expected_face(cell_x, cell_y, scale)
        x1, y1 = max(0, int(round(bbox[0]))), max(0, int(round(bbox[1])))
        x2, y2 = min(width, int(round(bbox[2]))), min(height, int(round(bbox[3])))
        if x2 > x1 and y2 > y1:
            rng = np.random.default_rng(int(identity))
            blocks = rng.integers(0, 256, size=(6, 6, 3))
            # R <= min(G, B) keeps every pixel's detector score at ~0.
            blocks[..., 0] = np.minimum(blocks[..., 0], blocks[..., 1:].min(axis=-1))
            # A 6x6 grid of blocks over the face box (16 detector pixels each).
            ys = np.clip(((np.arange(y1, y2) - bbox[1]) * 6 / (bbox[3] - bbox[1])).astype(int), 0, 5)
            xs = np.clip(((np.arange(x1, x2) - bbox[0]) * 6 / (bbox[2] - bbox[0])).astype(int), 0, 5)
            image_rgb_uint8[y1:y2, x1:x2, :3] = blocks[ys][:, xs].astype(np.uint8)
    ya, yb = _cell_span(cell_y, scale, height)
    xa, xb = _cell_span(cell_x, scale, width)
    image_rgb_uint8[ya:yb, xa:xb, 0] = 255
    image_rgb_uint8[ya:yb, xa:xb, 1:3] = 0


# --- ONNX graph construction -------------------------------------------------------------
def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ascontiguousarray(array), name=name)


def _finish(graph: onnx.GraphProto, doc: str) -> onnx.ModelProto:
    """Wrap a graph with the fixed opset/IR version, and check it.

    Why: the IR and opset are pinned so that the files load in old onnxruntime builds
    still found in ComfyUI installs, and so that the bytes are reproducible.
    """
    import onnx
    from onnx import helper

    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="infinite-id-tiny-insightface",
        producer_version="1",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def build_detector() -> onnx.ModelProto:
    """The tiny SCRFD-style detector (see the module docstring for the encoding)."""
    from onnx import TensorProto, helper

    distances, kps = _face_geometry_offsets()
    nodes: list[Any] = []
    inits: list[Any] = []
    outputs: dict[str, list[Any]] = {"score": [], "bbox": [], "kps": []}
    widths = {"score": 1, "bbox": 4, "kps": 10}

    for stride in _STRIDES:
        pooled = f"pool_{stride}"
        nodes.append(
            helper.make_node(
                "AveragePool", ["input.1"], [pooled], name=f"avgpool_{stride}",
                kernel_shape=[stride, stride], strides=[stride, stride],
            )
        )
        is_face_stride = stride == FACE_CELL
        # Scores: anchor 0 of stride 32 reads the colour; everything else is "off".
        score_w = np.zeros((_NUM_ANCHORS, 3, 1, 1), dtype=np.float32)
        score_b = np.full((_NUM_ANCHORS,), _SCORE_OFF_BIAS, dtype=np.float32)
        if is_face_stride:
            score_w[0, :, 0, 0] = [_SCORE_GAIN, -_SCORE_GAIN / 2.0, -_SCORE_GAIN / 2.0]  # R, G, B
            score_b[0] = -_SCORE_GAIN * _SCORE_OFFSET
        # Boxes and keypoints: constants in units of the stride, per anchor.
        if is_face_stride:
            bbox_b = np.tile(distances / stride, _NUM_ANCHORS)
            kps_b = np.tile(kps.reshape(-1) / stride, _NUM_ANCHORS)
        else:
            bbox_b = np.zeros(4 * _NUM_ANCHORS)
            kps_b = np.zeros(10 * _NUM_ANCHORS)
        heads = {
            "score": (score_w, score_b),
            "bbox": (np.zeros((4 * _NUM_ANCHORS, 3, 1, 1), np.float32), bbox_b.astype(np.float32)),
            "kps": (np.zeros((10 * _NUM_ANCHORS, 3, 1, 1), np.float32), kps_b.astype(np.float32)),
        }
        for head, (weight, bias) in heads.items():
            w_name, b_name = f"{head}_{stride}_w", f"{head}_{stride}_b"
            inits += [_const(w_name, weight), _const(b_name, bias)]
            conv_out = f"{head}_{stride}_conv"
            nodes.append(helper.make_node("Conv", [pooled, w_name, b_name], [conv_out], name=f"conv_{head}_{stride}"))
            if head == "score":
                nodes.append(helper.make_node("Sigmoid", [conv_out], [f"{conv_out}_sig"], name=f"sigmoid_{stride}"))
                conv_out = f"{conv_out}_sig"
            # [1, A*C, h, w] -> [1, h, w, A*C] -> [h*w*A, C]: SCRFD's (y, x, anchor) order.
            nhwc = f"{head}_{stride}_nhwc"
            nodes.append(
                helper.make_node("Transpose", [conv_out], [nhwc], name=f"transpose_{head}_{stride}", perm=[0, 2, 3, 1])
            )
            shape_name = f"{head}_{stride}_shape"
            inits.append(_const(shape_name, np.array([-1, widths[head]], dtype=np.int64)))
            out_name = f"{head}_{stride}"
            nodes.append(
                helper.make_node("Reshape", [nhwc, shape_name], [out_name], name=f"reshape_{head}_{stride}")
            )
            outputs[head].append(
                helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [f"anchors_{stride}", widths[head]])
            )

    graph = helper.make_graph(
        nodes,
        "tiny_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])],
        outputs["score"] + outputs["bbox"] + outputs["kps"],
        initializer=inits,
    )
    return _finish(graph, "Tiny SCRFD-compatible detector: a pure red 32x32 grid cell is a face.")


def build_recognizer(seed: int = RECOGNIZER_SEED) -> onnx.ModelProto:
    """The tiny ArcFace-style recognizer: 8x8 average pool, flatten, seeded projection.

    Node names avoid the ``Sub``/``Mul`` prefixes insightface looks for among the first
    graph nodes, so it normalises input as ``(pixel - 127.5) / 127.5`` (RGB).
    """
    from onnx import TensorProto, helper

    side = RECOGNIZER_SIZE // RECOGNIZER_POOL
    features = 3 * side * side
    rng = np.random.default_rng(seed)
    projection = (rng.standard_normal((features, EMBEDDING_DIM)) / np.sqrt(features)).astype(np.float32)
    nodes = [
        helper.make_node(
            "AveragePool", ["input.1"], ["pooled"], name="tiny_avgpool",
            kernel_shape=[RECOGNIZER_POOL, RECOGNIZER_POOL], strides=[RECOGNIZER_POOL, RECOGNIZER_POOL],
        ),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="tiny_flatten", axis=1),
        helper.make_node("MatMul", ["flat", "projection"], ["683"], name="tiny_projection"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch", 3, RECOGNIZER_SIZE, RECOGNIZER_SIZE])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["batch", EMBEDDING_DIM])],
        initializer=[_const("projection", projection)],
    )
    return _finish(graph, "Tiny ArcFace-compatible recognizer: pooled pixels times a seeded matrix.")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file + rename so parallel test workers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_tiny_antelopev2(insightface_root: Path, name: str = "antelopev2") -> Path:
    """Write the tiny pack to ``insightface_root/models/<name>/`` and return that folder.

    ``insightface_root`` is what ``FaceAnalysis(root=...)`` takes (ComfyUI's
    ``models/insightface``). The files get the real antelopev2 names so loaders that
    look for them by name work too. Rewriting is harmless: the bytes are deterministic.
    """
    model_dir = Path(insightface_root) / "models" / name
    _write_atomic(model_dir / DETECTOR_FILE, build_detector().SerializeToString())
    _write_atomic(model_dir / RECOGNIZER_FILE, build_recognizer().SerializeToString())
    logger.debug("wrote tiny insightface pack to %s", model_dir)
    return model_dir


def tiny_face_analysis(
    insightface_root: Path,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    det_size: tuple[int, int] = (640, 640),
) -> Any:
    """A prepared, real ``insightface.app.FaceAnalysis`` over the tiny pack.

    The pack is written first when a file is missing, because ``FaceAnalysis``
    downloads a pack whose folder does not exist -- that must never happen in tests.
    Works with insightface 0.7.3 and 2.x (``prepare`` gets ``ctx_id`` positionally,
    which 0.7.3 requires).
    """
    from insightface.app import FaceAnalysis

    root = Path(insightface_root)
    model_dir = root / "models" / "antelopev2"
    if not ((model_dir / DETECTOR_FILE).is_file() and (model_dir / RECOGNIZER_FILE).is_file()):
        write_tiny_antelopev2(root, "antelopev2")
    analysis = FaceAnalysis(name="antelopev2", root=str(root), providers=list(providers))
    # insightface 2.x first tries ``name`` as a path relative to the working directory.
    loaded_from = Path(getattr(analysis, "model_dir", model_dir)).resolve()
    if loaded_from != model_dir.resolve():
        raise RuntimeError(f"FaceAnalysis loaded {loaded_from} instead of the tiny pack in {model_dir}")
    analysis.prepare(0, det_size=tuple(det_size))
    return analysis
