"""``doctor``: what is wrong with this install, and the commands that fix it.

Why one command: the face packs' most reported problems are installation problems
(onnxruntime builds fighting over one module, a CUDA provider that is offered but does
not load, models in a folder ComfyUI does not read), and each needs looking in a
different place. The doctor looks everywhere once and prints one report:

- the host, torch and CUDA, the attention backend ComfyUI chose;
- insightface and onnxruntime: installed builds, the build Python really imports, which
  execution providers really load, and the exact commands that leave exactly one build;
- every configured model folder (the pack's defaults plus ``extra_model_paths.yaml``),
  the files found there and, for adapter files, what each one is (format detection);
- which shipped workflows can run, and what each one still lacks.

Exit code: 1 when something blocks the pack (a missing library, two onnxruntime builds,
an unreadable adapter file), 2 when only model files are missing (as ``run``), else 0.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EXIT_OK, EXIT_BLOCKED, EXIT_MODELS_MISSING = 0, 1, 2
# Folders the shipped workflows and the evaluation read (folder_paths names).
MODEL_FOLDERS = ("checkpoints", "clip_vision", "infiniteid", "insightface", "loras", "clip", "facenet", "fid",
                 "lpips")
MAX_FILES_SHOWN = 20


@dataclass
class Report:
    """Lines per section, plus the problems that decide the exit code."""

    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    blocking: list[str] = field(default_factory=list)
    missing_models: list[str] = field(default_factory=list)

    def section(self, title: str) -> list[str]:
        lines: list[str] = []
        self.sections.append((title, lines))
        return lines

    def text(self) -> str:
        out = []
        for title, lines in self.sections:
            out.append(f"== {title}")
            out.extend(f"  {line}" for line in lines)
        out.append("== verdict")
        if self.blocking:
            out.append(f"  BLOCKING ({len(self.blocking)}):")
            out.extend(f"  - {line}" for line in self.blocking)
        if self.missing_models:
            out.append(f"  model files missing ({len(self.missing_models)}): see 'shipped workflows' above")
        if not self.blocking and not self.missing_models:
            out.append("  everything the shipped workflows need is installed")
        return "\n".join(out)

    def exit_code(self) -> int:
        if self.blocking:
            return EXIT_BLOCKED
        return EXIT_MODELS_MISSING if self.missing_models else EXIT_OK


def add_parser(commands: Any) -> None:
    p = commands.add_parser("doctor", help="check this install (host, torch, insightface/onnxruntime, models)")
    p.add_argument("--extra-model-paths-config", action="append", default=[], type=Path, metavar="YAML",
                   help="also read this extra_model_paths.yaml (the host's own one is always read)")
    p.add_argument("--platform", choices=sorted(INSTALL_TARGETS), default=None,
                   help="print the onnxruntime install commands for this platform (default: this machine's)")
    p.set_defaults(handler=doctor_command)


def doctor_command(args: argparse.Namespace) -> int:
    report = diagnose(args.extra_model_paths_config, args.platform)
    print(report.text())
    return report.exit_code()


def diagnose(extra_configs: list[Path] | tuple = (), target: str | None = None) -> Report:
    report = Report()
    _host(report)
    _face_libraries(report, target)
    _folders(report, list(extra_configs))
    _workflows(report)
    return report


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _host(report: Report) -> None:
    import torch

    from ..host.locate import import_host

    lines = report.section("host")
    lines.append(import_host().describe())
    lines.append(f"Python {platform.python_version()} on {platform.system()} {platform.machine()} ({sys.executable})")
    cuda = torch.version.cuda or "none (CPU build)"
    lines.append(f"torch {torch.__version__}, built for CUDA {cuda}; "
                 f"HIP {getattr(torch.version, 'hip', None) or 'none'}")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        lines.append(f"GPU: {names}")
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        lines.append("GPU: Apple MPS")
    else:
        lines.append("GPU: none visible to torch (ComfyUI runs on the CPU)")
    try:
        from comfy.ldm.modules import attention

        backend = getattr(attention.optimized_attention, "__name__", str(attention.optimized_attention))
        lines.append(f"attention backend (ComfyUI's optimized_attention, which the pack's layers call): {backend}")
    except Exception as exc:  # noqa: BLE001 - a report line, not a failure
        lines.append(f"attention backend: unknown ({type(exc).__name__}: {exc})")


# platform -> (build to keep, extra pip arguments, why)
INSTALL_TARGETS: dict[str, tuple[str, str, str]] = {
    "nvidia": ("onnxruntime-gpu", "", "CUDA face analysis (NVIDIA, Linux and Windows)"),
    "amd-linux": ("onnxruntime", "", "CPU face analysis: PyPI has no ROCm build (AMD publishes onnxruntime-rocm "
                  "wheels per ROCm release on repo.radeon.com; to use one, install it instead in the last step)"),
    "amd-windows": ("onnxruntime-directml", "", "DirectML face analysis (AMD/Intel GPUs on Windows)"),
    "apple": ("onnxruntime", "", "the standard macOS build, which includes CoreML"),
    "cpu": ("onnxruntime", "", "CPU face analysis (it runs once per Encode; fast enough)"),
}


def default_target() -> str:
    import torch

    if sys.platform == "darwin":
        return "apple"
    if getattr(torch.version, "hip", None):
        return "amd-windows" if sys.platform == "win32" else "amd-linux"
    if torch.version.cuda and torch.cuda.is_available():
        return "nvidia"
    return "cpu"


def install_commands(target: str, python: str = "python") -> list[str]:
    """Commands that end with exactly one onnxruntime build, whichever insightface is installed.

    insightface 2.x declares the CPU ``onnxruntime`` (0.7.3 declares none), so it goes in
    first; then every build is removed and the chosen one installed. Reinstalling or
    upgrading insightface later brings ``onnxruntime`` back: use ``--no-deps`` for that.
    """
    from ..identity.face_analysis import ONNXRUNTIME_BUILDS

    keep, extra, _ = INSTALL_TARGETS[target]
    return [f"{python} -m pip install insightface",
            f"{python} -m pip uninstall -y {' '.join(ONNXRUNTIME_BUILDS)}",
            f"{python} -m pip install {keep}{extra}"]


def _face_libraries(report: Report, target: str | None) -> None:
    from ..identity import face_analysis as fa

    lines = report.section("insightface and onnxruntime")
    insightface_version = _version("insightface")
    try:
        import insightface.app

        lines.append(f"insightface {insightface_version} imports ({os.path.dirname(insightface.__file__)})")
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken install
        report.blocking.append(f"insightface does not import ({type(exc).__name__}: {exc}); run the commands "
                               "under 'insightface and onnxruntime'")
        lines.append(f"insightface: NOT importable ({type(exc).__name__}: {exc})")
    builds = fa.installed_builds()
    lines.append("onnxruntime builds installed: " +
                 (", ".join(f"{b} {_version(b)}" for b in builds) if builds else "none"))
    target = target or default_target()
    try:
        import onnxruntime

        dist, folder = fa.imported_build()
        lines.append(f"'import onnxruntime' loads {dist} {onnxruntime.__version__} from {folder}")
        lines.append("providers offered: " + ", ".join(onnxruntime.get_available_providers()))
        for provider, state in fa.probe_providers().items():
            lines.append(f"  {provider}: {state}")
            if provider != fa.PROVIDERS["CPU"] and state != "loads" and provider in fa.PROVIDERS.values():
                lines.append(f"    the face loader's 'auto' and '{_short(provider)}' fall back to the CPU "
                             "(with a warning); face analysis still works")
        chosen = fa.auto_provider(onnxruntime.get_available_providers())
        lines.append(f"provider 'auto' asks for: {chosen}")
    except ImportError as exc:
        report.blocking.append(f"onnxruntime does not import ({exc})")
        lines.append(f"onnxruntime: NOT importable ({exc})")
    if len(builds) > 1:
        report.blocking.append(f"{len(builds)} onnxruntime builds are installed ({', '.join(builds)}): they "
                               "overwrite each other's files in one 'onnxruntime' module (this also breaks other "
                               "face packs); run the commands under 'insightface and onnxruntime'")
    keep = INSTALL_TARGETS[target][0]
    if len(builds) > 1 or not builds or (target != "cpu" and keep not in builds):
        lines.append(f"to leave exactly one build ({keep}: {INSTALL_TARGETS[target][2]}), run in ComfyUI's Python:")
        lines.extend(f"  {command}" for command in install_commands(target, _python()))
        lines.append("  other platforms: python . doctor --platform " + "|".join(sorted(INSTALL_TARGETS)))


def _short(provider: str) -> str:
    from ..identity.face_analysis import PROVIDERS

    return next((name for name, ep in PROVIDERS.items() if ep == provider), provider)


def _python() -> str:
    return f'"{sys.executable}"' if " " in sys.executable else sys.executable


def load_extra_model_paths(path: Path) -> list[tuple[str, str]]:
    """Add an ``extra_model_paths.yaml``'s folders to ``folder_paths``, as ComfyUI's start-up does.

    The command line runs without ComfyUI's ``main.py``, which is what reads this file,
    so the doctor reads it the same way (``base_path``, relative paths, several lines per
    folder) and says which folders came from it.
    """
    import folder_paths
    import yaml

    added = []
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    yaml_dir = str(path.resolve().parent)
    for conf in config.values():
        if not isinstance(conf, dict):
            continue
        conf = dict(conf)
        base = conf.pop("base_path", None)
        is_default = bool(conf.pop("is_default", False))
        if base:
            base = os.path.expandvars(os.path.expanduser(str(base)))
            if not os.path.isabs(base):
                base = os.path.join(yaml_dir, base)
        for name, value in conf.items():
            for line in str(value).split("\n"):
                line = line.strip()
                if not line:
                    continue
                full = os.path.join(base, line) if base else (line if os.path.isabs(line) else
                                                              os.path.join(yaml_dir, line))
                full = os.path.normpath(full)
                try:
                    folder_paths.add_model_folder_path(name, full, is_default)
                except TypeError:  # the 2024 tree's add_model_folder_path(name, path)
                    folder_paths.add_model_folder_path(name, full)
                added.append((name, full))
    return added


def _folders(report: Report, extra_configs: list[Path]) -> None:
    import folder_paths

    from ..host.folders import register_folders
    from ..host.locate import import_host

    lines = report.section("model folders")
    host_yaml = import_host().path / "extra_model_paths.yaml"
    configs = ([host_yaml] if host_yaml.is_file() else []) + extra_configs
    from_yaml: dict[str, set[str]] = {}
    for config in configs:
        try:
            for name, path in load_extra_model_paths(config):
                from_yaml.setdefault(name, set()).add(path)
            lines.append(f"read {config}")
        except Exception as exc:  # noqa: BLE001 - a broken yaml is a finding
            report.blocking.append(f"{config} cannot be read ({type(exc).__name__}: {exc}); ComfyUI ignores "
                                   "or fails on it too")
    if not configs:
        lines.append(f"no extra_model_paths.yaml (looked for {host_yaml})")
    register_folders()
    for name in MODEL_FOLDERS:
        paths = folder_paths.get_folder_paths(name) if name in folder_paths.folder_names_and_paths else []
        for path in paths:
            origin = " (extra_model_paths.yaml)" if path in from_yaml.get(name, ()) else ""
            state = "" if os.path.isdir(path) else "  [does not exist]"
            lines.append(f"{name}: {path}{origin}{state}")
        if not paths:
            lines.append(f"{name}: not registered on this host")
        if name == "insightface":
            lines.extend(_insightface_packs())
            continue
        files = folder_paths.get_filename_list(name) if paths else []
        lines.append(f"  {len(files)} file(s)" + (":" if files else ""))
        for file in files[:MAX_FILES_SHOWN]:
            lines.append(f"    {file}" + (f"  -> {_adapter_kind(name, file, report)}" if name == "infiniteid" else ""))
        if len(files) > MAX_FILES_SHOWN:
            lines.append(f"    ... and {len(files) - MAX_FILES_SHOWN} more")


def _insightface_packs() -> list[str]:
    from ..identity import face_analysis as fa

    lines = []
    for pack in fa.available_packs():
        try:
            lines.append(f"  pack {pack}: {fa.resolve_pack_dir(pack)}")
        except ValueError as exc:
            lines.append(f"  pack {pack}: {exc}")
    return lines


def _adapter_kind(folder: str, file: str, report: Report) -> str:
    """What an ``infiniteid`` file is: an adapter format, a saved identity, or what the loader refuses."""
    import folder_paths

    from ..adapter.detect import detect_format
    from ..adapter.listing import is_identity_file
    from ..adapter.loader import read_metadata, read_state_dict

    path = folder_paths.get_full_path(folder, file)
    if path is None:
        return "not found"
    if is_identity_file(path):
        return "a saved identity (InfiniteID Load Identity reads it from identities/)"
    try:
        found = detect_format(read_state_dict(path), read_metadata(path))
        return f"adapter, format {found.kind} ({found.layout} layout)"
    except ValueError as exc:
        report.blocking.append(f"models/infiniteid/{file} is not an adapter the pack can load: {exc}")
        return f"NOT LOADABLE: {exc}"


def _workflows(report: Report) -> None:
    import re

    import nodes

    from ..host.models import missing_models
    from ..workflow_io.shipped import SHIPPED, api_path

    lines = report.section("shipped workflows")
    needed: dict[str, list[str]] = {}  # missing-file message -> workflows that need it
    for name in SHIPPED:
        prompt = json.loads(api_path(name).read_text())
        unknown = sorted({n["class_type"] for n in prompt.values()} - set(nodes.NODE_CLASS_MAPPINGS))
        if unknown:
            report.blocking.append(f"{name}: node types this host lacks: {', '.join(unknown)}")
        # "node 6 (InfiniteIDAdapterLoader): 'x' is missing..." -> "InfiniteIDAdapterLoader: 'x' is missing..."
        missing = [re.sub(r"^node \S+ \((\w+)\)", r"\1", line) for line in missing_models(prompt)]
        for line in missing:
            needed.setdefault(line, []).append(name)
        state = "can run" if not unknown and not missing else \
            f"cannot run yet: {len(missing)} model file(s) missing" + (f", unknown nodes {unknown}" if unknown else "")
        lines.append(f"{name}: {state}")
    if needed:
        lines.append("missing model files:")
        for line, users in needed.items():
            lines.append(f"- {line} [{', '.join(users)}]")
    report.missing_models.extend(needed)
    lines.append("(every shipped workflow runs now on tiny built-in models: "
                 "python . run example_workflows/raw_photo.json --demo)")
