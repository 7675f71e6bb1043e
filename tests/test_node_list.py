"""``nodes.NODE_MODULES`` is the one list of node files: a node file left out of it, or a
listed file without nodes, fails here (the files are read, not imported)."""
from __future__ import annotations

import ast
from pathlib import Path

import infinite_id.nodes as pack_nodes

NODES_DIR = Path(pack_nodes.__file__).resolve().parent


def defines_node_mappings(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(node, (ast.Assign, ast.AnnAssign)) and any(
        isinstance(target, ast.Name) and target.id == "NODE_CLASS_MAPPINGS"
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target]))
        for node in tree.body)


def test_every_node_file_is_listed_once():
    files = {p.stem for p in NODES_DIR.glob("*.py") if p.stem != "__init__" and defines_node_mappings(p)}
    assert len(pack_nodes.NODE_MODULES) == len(set(pack_nodes.NODE_MODULES))
    assert set(pack_nodes.NODE_MODULES) == files


def test_registration_follows_the_list():
    import importlib

    expected: dict = {}
    for name in pack_nodes.NODE_MODULES:
        expected.update(importlib.import_module(f"infinite_id.nodes.{name}").NODE_CLASS_MAPPINGS)
    assert pack_nodes.NODE_CLASS_MAPPINGS == expected
    assert set(pack_nodes.NODE_DISPLAY_NAME_MAPPINGS) == set(expected)
