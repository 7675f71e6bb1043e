"""Load an insightface ``FaceAnalysis`` (the ``FACEANALYSIS`` type) without surprises.

Why this module exists: the face packs' most reported failures are installation and
folder problems (insightface not installed, onnxruntime's CUDA provider not loading,
``onnxruntime`` and ``onnxruntime-gpu`` installed together, ``antelopev2/antelopev2/``
nested folders, run-time downloads). So:

- insightface and onnxruntime are imported inside functions: the pack loads without
  them and the message says what to ``pip install``;
- the pack folder is resolved and checked *before* insightface sees it, and insightface
  gets the absolute folder path as ``name``. Both 0.7.3 (``os.path.join(root, "models",
  name)`` keeps an absolute ``name``) and 2.x (a ``name`` that is a directory is used
  directly; a relative one would be looked up in the working directory first) then load
  exactly that folder, and neither can reach its download branch;
- the nested ``<pack>/<pack>/`` mistake is used in place (user files are never moved);
- the requested execution provider falls back to CPU when onnxruntime cannot offer it,
  and the provider that actually runs is logged;
- ``auto`` (the default) takes the installed build's accelerator (``onnxruntime-gpu``:
  CUDA; ROCm, DirectML or CoreML builds: theirs) and CPU when there is none, so a
  GPU build gives GPU face analysis without any setting.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Sequence
from typing import Any

from ..host.folders import INSIGHTFACE, folder_paths_for

log = logging.getLogger(__name__)

DEFAULT_PACK = "antelopev2"
AUTO = "auto"
PROVIDERS = {
    AUTO: "",  # the first of AUTO_ORDER the installed onnxruntime offers, else CPU
    "CPU": "CPUExecutionProvider",
    "CUDA": "CUDAExecutionProvider",
    "ROCm": "ROCMExecutionProvider",
    "CoreML": "CoreMLExecutionProvider",
    "DirectML": "DmlExecutionProvider",
}
AUTO_ORDER = ("CUDA", "ROCm", "DirectML", "CoreML")
# The pip distributions that install the one ``onnxruntime`` module.
ONNXRUNTIME_BUILDS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-rocm", "onnxruntime-directml",
                      "onnxruntime-silicon", "onnxruntime-openvino")
# The files of the packs people use; the detector and recognizer are what the pack needs.
PACK_FILES = {
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx", "1k3d68.onnx", "2d106det.onnx", "genderage.onnx"),
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx", "1k3d68.onnx", "2d106det.onnx", "genderage.onnx"),
}
REQUIRED_FILES = {"antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
                  "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx")}
# Detection gives boxes and the five keypoints; recognition the ArcFace embedding. The
# other modules (3D landmarks, gender/age) cost load time and no face pack reads them.
MODULES = ["detection", "recognition"]
INSTALL_HINT = "pip install insightface onnxruntime  (or onnxruntime-gpu instead of onnxruntime for CUDA)"


def import_insightface() -> Any:
    """``insightface.app`` imported on first use, with an install hint when missing."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"onnxruntime is not installed ({exc}); run: {INSTALL_HINT}") from exc
    try:
        import insightface.app
    except ImportError as exc:
        raise ValueError(f"insightface is not installed or fails to import ({exc}); run: {INSTALL_HINT}") from exc
    return insightface.app


def _has_onnx(folder: str) -> bool:
    return os.path.isdir(folder) and any(f.lower().endswith(".onnx") for f in os.listdir(folder))


def insightface_roots() -> list[str]:
    """Every configured ``insightface`` folder (``models/insightface`` plus user paths)."""
    try:
        return list(folder_paths_for(INSIGHTFACE))
    except Exception:  # noqa: BLE001 - outside a host (plain scripts) there is no folder_paths
        return []


def available_packs(roots: Sequence[str] | None = None) -> list[str]:
    """Pack names under ``<root>/models/`` of every root; ``antelopev2`` always first.

    ``antelopev2`` is listed even when absent so that a workflow saved with it still
    validates and the user gets the missing-file message instead of "value not in list".
    """
    found: set[str] = set()
    for root in insightface_roots() if roots is None else roots:
        models = os.path.join(root, "models")
        if not os.path.isdir(models):
            continue
        for name in os.listdir(models):
            folder = os.path.join(models, name)
            if _has_onnx(folder) or _has_onnx(os.path.join(folder, name)):
                found.add(name)
    return [DEFAULT_PACK] + sorted(found - {DEFAULT_PACK})


def missing_pack_message(name: str, roots: Sequence[str]) -> str:
    files = ", ".join(PACK_FILES.get(name, ("the pack's .onnx files",)))
    where = " or ".join(os.path.join(root, "models", name) + os.sep for root in roots) or \
        f"ComfyUI/models/insightface/models/{name}/"
    return (f"insightface pack '{name}' was not found. Put its files ({files}) in "
            f"models/insightface/models/{name}/ (here: {where}); nothing is downloaded automatically.")


def resolve_pack_dir(name: str, roots: Sequence[str] | None = None) -> str:
    """The folder holding the pack's ``.onnx`` files, accepting ``<name>/<name>/``."""
    roots = insightface_roots() if roots is None else list(roots)
    if not name or os.sep in name or (os.altsep and os.altsep in name) or name in (".", ".."):
        raise ValueError(f"model_name: '{name}' is not a pack name (a folder under models/insightface/models/)")
    for root in roots:
        folder = os.path.join(root, "models", name)
        nested = os.path.join(folder, name)
        if _has_onnx(folder):
            chosen = folder
        elif _has_onnx(nested):
            log.warning("insightface pack '%s' sits in a nested folder %s (a common unzip mistake); using it where "
                        "it is. Moving the files up one level also works.", name, nested)
            chosen = nested
        else:
            continue
        missing = [f for f in REQUIRED_FILES.get(name, ()) if not os.path.isfile(os.path.join(chosen, f))]
        if missing:
            raise ValueError(f"insightface pack '{name}' in {chosen} lacks {', '.join(missing)}; "
                             f"a complete pack has {', '.join(PACK_FILES[name])}")
        return os.path.abspath(chosen)
    raise ValueError(missing_pack_message(name, roots))


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def installed_builds() -> list[str]:
    """The onnxruntime distributions pip has installed (more than one is the clash)."""
    return [d for d in ONNXRUNTIME_BUILDS if _installed(d)]


def onnxruntime_clash() -> str:
    """A warning when two onnxruntime builds are installed (they overwrite each other)."""
    builds = installed_builds()
    if len(builds) < 2:
        return ""
    return (f"several onnxruntime builds are installed ({', '.join(builds)}); they share one 'onnxruntime' "
            f"module and the last one installed wins. Uninstall all of them and install only the one you need "
            f"(python . doctor prints the commands).")


def auto_provider(available: Sequence[str]) -> str:
    """The provider name ``auto`` means for onnxruntime's ``available`` providers."""
    return next((name for name in AUTO_ORDER if PROVIDERS[name] in available), "CPU")


def choose_providers(provider: str) -> list[str]:
    """The execution providers to ask for: the requested one (if onnxruntime has it) then CPU."""
    import onnxruntime

    if provider not in PROVIDERS:
        raise ValueError(f"provider: '{provider}' is not one of {', '.join(PROVIDERS)}")
    available = list(onnxruntime.get_available_providers())
    if provider == AUTO:
        provider = auto_provider(available)
        log.info("provider auto: %s (onnxruntime offers %s)", provider, ", ".join(available))
    wanted = PROVIDERS[provider]
    if wanted == PROVIDERS["CPU"]:
        return [wanted]
    if wanted not in available:
        log.warning("provider %s is not available in this onnxruntime (available: %s); running on CPU instead",
                    provider, ", ".join(available))
        return [PROVIDERS["CPU"]]
    return [wanted, PROVIDERS["CPU"]]


def imported_build() -> tuple[str, str]:
    """``(distribution, module folder)`` of the ``onnxruntime`` module Python imports.

    Why not the version alone: with two builds installed, the module is a mix of files
    from both; the distribution whose file list holds the imported ``__init__.py`` is
    the one that actually runs.
    """
    import onnxruntime

    init = os.path.realpath(onnxruntime.__file__)
    for dist in installed_builds():
        for file in importlib.metadata.distribution(dist).files or ():
            if str(file).replace("\\", "/") == "onnxruntime/__init__.py" and \
                    os.path.realpath(file.locate()) == init:
                return dist, os.path.dirname(init)
    return "unknown", os.path.dirname(init)


def probe_providers() -> dict[str, str]:
    """Each execution provider onnxruntime offers -> "loads" or why it does not.

    A provider can be offered (``get_available_providers``) and still fail to load, as
    ``onnxruntime-gpu``'s CUDA provider does without CUDA/cuDNN libraries: onnxruntime
    then logs an error and silently runs the session on the CPU. One tiny session per
    provider shows which really load.
    """
    import onnxruntime
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    data = model.SerializeToString()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # the failure is reported here, not as an onnxruntime log line
    result = {}
    for provider in onnxruntime.get_available_providers():
        try:
            chain = [provider] if provider == PROVIDERS["CPU"] else [provider, PROVIDERS["CPU"]]
            session = onnxruntime.InferenceSession(data, sess_options=options, providers=chain)
            used = session.get_providers()
            result[provider] = "loads" if used and used[0] == provider else \
                "offered but fails to load (missing libraries: CUDA/cuDNN for CUDA, ROCm for ROCm)"
        except Exception as exc:  # noqa: BLE001 - a provider's failure is the finding
            result[provider] = f"fails: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return result


def running_providers(analysis: Any) -> list[str]:
    """What the detector's onnxruntime session actually uses (a provider can fail to load)."""
    session = getattr(getattr(analysis, "det_model", None), "session", None)
    try:
        return list(session.get_providers()) if session is not None else []
    except Exception:  # noqa: BLE001 - informational only
        return []


def load_face_analysis(name: str = DEFAULT_PACK, provider: str = AUTO, det_size: int = 640,
                       roots: Sequence[str] | None = None) -> Any:
    """A prepared ``insightface.app.FaceAnalysis`` for pack ``name`` (0.7.3 and 2.x)."""
    app = import_insightface()
    pack_dir = resolve_pack_dir(name, roots)
    clash = onnxruntime_clash()
    if clash:
        log.warning("%s", clash)
    providers = choose_providers(provider)
    try:
        analysis = app.FaceAnalysis(name=pack_dir, root=os.path.dirname(pack_dir),
                                    allowed_modules=MODULES, providers=providers)
    except AssertionError as exc:  # insightface asserts 'detection' in self.models
        raise ValueError(f"insightface found no face detector in {pack_dir}; "
                         f"expected {', '.join(PACK_FILES.get(name, ('a detector .onnx',)))}") from exc
    loaded = os.path.realpath(getattr(analysis, "model_dir", pack_dir))
    if loaded != os.path.realpath(pack_dir):
        raise ValueError(f"insightface loaded {loaded} instead of {pack_dir}; check the insightface version")
    if "recognition" not in analysis.models:
        raise ValueError(f"insightface pack in {pack_dir} has no recognition (ArcFace) model; "
                         f"expected {', '.join(PACK_FILES.get(name, ('a recognizer .onnx',)))}")
    ctx_id = -1 if providers[0] == PROVIDERS["CPU"] else 0  # 0.7.3 forces CPU for ctx_id < 0
    analysis.prepare(ctx_id, det_size=(int(det_size), int(det_size)))
    running = running_providers(analysis)
    log.info("insightface pack '%s' loaded from %s; onnxruntime runs it on %s", name, pack_dir,
             running[0] if running else providers[0])
    if providers[0] not in running and running:
        log.warning("requested provider %s (%s) failed to load in onnxruntime (missing CUDA/cuDNN libraries or a "
                    "mismatched onnxruntime build); running on %s instead. 'python . doctor' shows which "
                    "providers load and how to fix the install.", provider, providers[0], running[0])
    return analysis
