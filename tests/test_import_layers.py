"""Imports point down: a room (top-level folder of the pack) imports only rooms of its own
layer or lower (docs/ARCHITECTURE.md). Read from the source with ``ast``: top-level and
function-level imports, relative (``..host``) and absolute (``infinite_id.host``)."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACK = Path(__file__).resolve().parent.parent

# Low to high. The method's math (attention/) imports no other room and no ComfyUI module.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("attention", "unet", "host"),
    ("adapter",),
    ("identity",),
    ("model_patch", "workflow_io", "demo"),
    ("sampling", "evaluation"),
    ("training",),
    ("nodes", "cli"),
)
LAYER = {room: level for level, rooms in enumerate(LAYERS) for room in rooms}
HOST_MODULES = ("comfy", "comfy_extras", "comfy_api", "nodes", "folder_paths", "execution", "server",
                "node_helpers", "latent_preview")


def rooms() -> list[str]:
    return sorted(p.name for p in PACK.iterdir() if (p / "__init__.py").is_file() and p.name != "tests")


def imported_rooms(path: Path, room: str) -> list[tuple[int, str, str]]:
    """(line, imported room, the import as written) for every import of another room or of the host."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            depth = len(path.relative_to(PACK / room).parts)  # 1 for room/x.py
            written = "." * node.level + module
            if node.level > depth:  # above the room: the first part names another room
                targets = [module.split(".")[0]] if module else [alias.name for alias in node.names]
            elif node.level == 0 and module.split(".")[0] == "infinite_id":
                parts = module.split(".")
                targets = [parts[1]] if len(parts) > 1 else [alias.name for alias in node.names]
            elif node.level == 0:
                targets = [f"<host>{module.split('.')[0]}"]
            else:
                continue
            found += [(node.lineno, target, written) for target in targets]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")
                target = top[1] if top[0] == "infinite_id" and len(top) > 1 else f"<host>{top[0]}"
                found.append((node.lineno, target, f"import {alias.name}"))
    return found


def violations(room: str) -> list[str]:
    bad = []
    for path in sorted((PACK / room).rglob("*.py")):
        for line, target, written in imported_rooms(path, room):
            where = f"{path.relative_to(PACK)}:{line}: {written}"
            if target.startswith("<host>"):
                if room == "attention" and target[6:] in HOST_MODULES:
                    bad.append(f"{where} (attention/ is plain torch: no ComfyUI module)")
            elif target != room and target in LAYER and LAYER[target] > LAYER[room]:
                bad.append(f"{where} ({room}/ is layer {LAYER[room]}, {target}/ is layer {LAYER[target]})")
    return bad


def test_every_room_has_a_layer():
    assert [room for room in rooms() if room not in LAYER] == []


@pytest.mark.parametrize("room", rooms())
def test_imports_point_down(room):
    assert violations(room) == []


def test_the_check_sees_upward_imports(tmp_path, monkeypatch):
    """A function-level relative import, an absolute one and a ComfyUI import in attention/ are caught."""
    fake = tmp_path / "pack"
    for room in ("host", "attention", "nodes"):
        (fake / room).mkdir(parents=True)
        (fake / room / "__init__.py").write_text("")
    (fake / "host" / "bad.py").write_text("def f():\n    from ..nodes.errors import X\n")
    (fake / "host" / "also_bad.py").write_text("import infinite_id.nodes.apply\n")
    (fake / "attention" / "bad.py").write_text("import comfy.samplers\n")
    (fake / "nodes" / "fine.py").write_text("from ..host import compat\n")
    monkeypatch.setattr(sys.modules[__name__], "PACK", fake)
    assert violations("host") == [
        "host/also_bad.py:1: import infinite_id.nodes.apply (host/ is layer 0, nodes/ is layer 6)",
        "host/bad.py:2: ..nodes.errors (host/ is layer 0, nodes/ is layer 6)"]
    assert violations("attention") == ["attention/bad.py:1: import comfy.samplers (attention/ is plain torch: "
                                       "no ComfyUI module)"]
    assert violations("nodes") == []


def test_the_documented_layers_are_the_enforced_ones():
    """docs/ARCHITECTURE.md's layer table names the same rooms in the same layers as ``LAYERS``."""
    import re

    text = (PACK / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    documented = {room: int(level) for level, room in re.findall(r"^\| (\d) \| `(\w+)/` \|", text, re.MULTILINE)}
    assert documented == LAYER
