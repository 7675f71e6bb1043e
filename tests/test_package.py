"""What a published version holds: ``comfy node pack``'s rules applied to this repository.

comfy-cli packs the git-tracked files minus the ``.comfyignore`` patterns (gitwildmatch,
``comfy_cli/file_utils.py: zip_files``). The package must hold everything a ComfyUI user
runs (every module the nodes and the CLI import, the demo models, the shipped workflows
and blueprints, web/ with the help pages, the docs the README links to) and nothing of
the development (tests, which the Registry's scan flags, benchmarks, CI, scripts,
screenshots). The packed list is printed (``-s`` shows it).

Uses ``pathspec`` (comfy-cli's matcher) when installed; otherwise the same rules for the
pattern forms ``.comfyignore`` is limited to here (anchored ``/dir/`` and ``/file``).
"""
from __future__ import annotations

import posixpath
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_DIRS = ("adapter", "attention", "cli", "demo", "evaluation", "host", "identity", "model_patch", "nodes",
                "sampling", "training", "unet", "workflow_io", "web", "example_workflows", "subgraphs")
DEV_DIRS = ("tests", "bench", ".ci", "scripts", "docs/screenshots", "docs/images")


def _patterns() -> list[str]:
    lines = (ROOT / ".comfyignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    try:
        from pathspec import PathSpec
    except ImportError:
        for pattern in patterns:
            assert re.fullmatch(r"/[\w./-]+/?", pattern), f"{pattern!r}: extend this test's matcher first"
            body = pattern.lstrip("/")
            if (body.endswith("/") and path.startswith(body)) or path == body:
                return True
        return False
    return PathSpec.from_lines("gitwildmatch", patterns).match_file(path)


def packed_files() -> list[str]:
    try:
        tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout ({exc}); comfy-cli packs git-tracked files")
    patterns = _patterns()
    return sorted(f for f in tracked.stdout.splitlines() if f and not _ignored(f, patterns))


def test_published_version_holds_runtime_files_only():
    files = packed_files()
    print("\npacked (" + str(len(files)) + " files):\n  " + "\n  ".join(files))
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True).stdout.splitlines()
    for folder in RUNTIME_DIRS:
        wanted = [f for f in tracked if f.startswith(folder + "/")]
        assert wanted and set(wanted) <= set(files), f"{folder}/ is not packed whole"
    for name in ("__init__.py", "__main__.py", "LICENSE", "README.md", "pyproject.toml", "requirements.txt",
                 "evaluation/prompts.txt"):
        assert name in files, name
    assert {f for f in tracked if f.startswith("workflows/api/")} <= set(files)
    for folder in DEV_DIRS:
        assert not [f for f in files if f.startswith(folder + "/")], f"{folder}/ is packed"
    assert not [f for f in files if Path(f).name.startswith("test_") or f.endswith((".png", ".ini"))], files


def test_docs_the_package_links_to_are_packed():
    """Every relative link in the README and the packed docs leads to a packed file (images excepted:
    the README's pictures live in the repository, a package has no page to show them)."""
    files = set(packed_files())
    for doc in [f for f in files if f.endswith(".md")]:
        text = (ROOT / doc).read_text()
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if re.match(r"[a-z]+:", target) or target.endswith((".png", ".jpg")):
                continue
            path = posixpath.normpath(posixpath.join(posixpath.dirname(doc), target))
            assert path in files or any(f.startswith(path.rstrip("/") + "/") for f in files), f"{doc} -> {target}"
