"""Every public node explains itself: a description, and a tooltip on every input."""
from pathlib import Path

import pytest

import infinite_id

NODES = sorted(infinite_id.NODE_CLASS_MAPPINGS.items())


@pytest.mark.parametrize("name,cls", NODES, ids=[n for n, _ in NODES])
def test_node_has_description_and_input_tooltips(name, cls):
    assert getattr(cls, "DESCRIPTION", "").strip(), f"{name} has no DESCRIPTION"
    assert cls.CATEGORY.startswith("InfiniteID")
    spec = cls.INPUT_TYPES()
    missing = [f"{section}.{input_name}"
               for section in ("required", "optional")
               for input_name, entry in spec.get(section, {}).items()
               if len(entry) < 2 or not isinstance(entry[1], dict) or not entry[1].get("tooltip")]
    assert not missing, f"{name}: inputs without a tooltip: {missing}"


def test_contract_node_names_are_registered():
    """Saved workflows depend on these names (docs/COMPATIBILITY.md, "Saved workflows")."""
    required = {"InfiniteIDFaceAnalysisLoader", "InfiniteIDAdapterLoader", "InfiniteIDEncode", "InfiniteIDMix",
                "InfiniteIDInterpolate", "InfiniteIDApply", "InfiniteIDSampler", "InfiniteIDGuider"}
    assert required <= set(infinite_id.NODE_CLASS_MAPPINGS)


def test_error_type_shows_no_file_system_path():
    """ComfyUI prints an error's type as ``module.ClassName`` (``execution.full_type_name``); a pack's
    module is named by its path, so the type must be a builtin's to keep the user's directories out."""
    import execution

    from infinite_id.host.errors import InfiniteIDError, node_error

    assert execution.full_type_name(InfiniteIDError) == "InfiniteIDError"
    with pytest.raises(InfiniteIDError) as err, node_error("InfiniteIDApply"):
        raise ValueError("input 'weight': not a number")
    assert str(err.value) == "InfiniteIDApply: input 'weight': not a number"
    assert isinstance(err.value, ValueError)


def test_identity_outputs_share_one_name():
    outputs = {name: dict(zip(cls.RETURN_TYPES, getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)))
               for name, cls in NODES if "INFINITEID_IDENTITY" in cls.RETURN_TYPES}
    assert {names["INFINITEID_IDENTITY"] for names in outputs.values()} == {"identity"}, outputs
    assert set(outputs) >= {"InfiniteIDEncode", "InfiniteIDMix", "InfiniteIDInterpolate", "InfiniteIDLoadIdentity"}


@pytest.fixture
def adapter_folder(tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setitem(folder_paths.folder_names_and_paths, "infiniteid", ([str(tmp_path)], {".safetensors", ".bin"}))
    getattr(folder_paths, "filename_list_cache", {}).pop("infiniteid", None)
    yield tmp_path
    getattr(folder_paths, "filename_list_cache", {}).pop("infiniteid", None)


def _identity_file(path):
    import safetensors.torch
    import torch

    from infinite_id.identity.storage import FORMAT

    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({"cond": torch.zeros(1, 2, 4), "uncond": torch.zeros(1, 2, 4)}, str(path),
                                metadata={"format": FORMAT})


def test_adapter_list_offers_the_default_and_no_identities(adapter_folder):
    from infinite_id.adapter.listing import DEFAULT_ADAPTER
    from infinite_id.host.errors import InfiniteIDError
    from infinite_id.nodes.adapter_loader import InfiniteIDAdapterLoader

    _identity_file(adapter_folder / "identities" / "alice.safetensors")
    assert InfiniteIDAdapterLoader.INPUT_TYPES()["required"]["adapter_name"][0] == [DEFAULT_ADAPTER]
    # The listed default, absent, gives the pack's message naming the folder (not "value not in list").
    with pytest.raises(InfiniteIDError) as err:
        InfiniteIDAdapterLoader().load(DEFAULT_ADAPTER)
    assert str(err.value).startswith(f"InfiniteIDAdapterLoader: input 'adapter_name': '{DEFAULT_ADAPTER}' was not "
                                     f"found. Put it in {adapter_folder}")
    (adapter_folder / DEFAULT_ADAPTER).write_bytes(b"")
    (adapter_folder / "other.safetensors").write_bytes(b"")
    names = InfiniteIDAdapterLoader.INPUT_TYPES()["required"]["adapter_name"][0]
    assert sorted(names) == [DEFAULT_ADAPTER, "other.safetensors"]


def test_identity_given_to_adapter_loader_and_adapter_to_load_identity(adapter_folder, monkeypatch):
    from infinite_id.adapter.native import build_native_adapter, save_native
    from infinite_id.host.errors import InfiniteIDError
    from infinite_id.nodes.adapter_loader import InfiniteIDAdapterLoader
    from infinite_id.nodes.identity_files import InfiniteIDLoadIdentity

    _identity_file(adapter_folder / "alice.safetensors")  # saved in the wrong folder
    with pytest.raises(InfiniteIDError) as err:
        InfiniteIDAdapterLoader().load("alice.safetensors")
    assert "'alice.safetensors' is a saved identity" in str(err.value)
    assert "'InfiniteID Load Identity'" in str(err.value)
    adapter = build_native_adapter(layer_widths=[16] * 70, token_dim=64, clip_width=40, face_tokens=2,
                                   clip_tokens=3, face_hidden=32, clip_dim=64, clip_depth=2, clip_heads=4,
                                   clip_dim_head=16, ff_mult=2, seed=3)
    (adapter_folder / "identities").mkdir(exist_ok=True)
    save_native(str(adapter_folder / "identities" / "mine.safetensors"), adapter)
    with pytest.raises(InfiniteIDError) as err:
        InfiniteIDLoadIdentity().load("mine.safetensors")
    assert str(err.value).startswith("InfiniteIDLoadIdentity: identity_name: 'mine.safetensors' is an adapter")
    assert "'InfiniteID Adapter Loader'" in str(err.value)


# Folders exempt from the check (none: every folder must stand alone).
_REWRITTEN_BY_LEAD: tuple[str, ...] = ()


def test_references_point_at_files_of_this_repository():
    """The published pack must stand alone: no citations of documents that are not in it."""
    import re
    from pathlib import Path

    root = Path(infinite_id.__file__).resolve().parent
    cited = re.compile(r"\b(DESIGN\.md|METHOD\.md|ANCHORS\.md|issue \d+|issue #\d+)")
    linked = re.compile(r"\]\(([^)#\s]+)")  # markdown links
    problems = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.suffix not in (".py", ".md", ".sh", ".txt", ".toml", ".js") or rel.startswith((".venv/", ".git/", ".device/")) \
                or rel.startswith(_REWRITTEN_BY_LEAD) or not path.is_file():
            continue
        text = path.read_text(errors="ignore")
        problems += [f"{rel}: cites {m}" for m in cited.findall(text)]
        if path.suffix == ".md":
            for target in linked.findall(text):
                if not target.startswith(("http://", "https://")) and not (path.parent / target).exists():
                    problems.append(f"{rel}: links {target}, which does not exist")
    assert not problems, "\n".join(problems)


HELP_DIR = Path(infinite_id.__file__).resolve().parent / "web" / "docs"
# What a first image needs on each node (docs/EDITOR.md, "Essentials first"); the rest is advanced.
ESSENTIALS = {
    "InfiniteIDApply": {"weight", "adain"},
    "InfiniteIDEncode": set(),
    "InfiniteIDSampler": {"seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"},
    "InfiniteIDGuider": {"cfg"},
    "InfiniteIDFaceSimilarity": set(),
    "InfiniteIDClipScore": {"prompt"},
    "InfiniteIDFaceAnalysisLoader": {"model_name"},
}


def _inputs(cls) -> dict:
    from infinite_id.workflow_io.ui_to_api import declared_inputs, is_widget

    return {name: (spec, is_widget(spec), (spec[1] if len(spec) > 1 else {}).get("advanced", False))
            for name, spec in declared_inputs(cls)}


@pytest.mark.parametrize("name,cls", NODES, ids=[n for n, _ in NODES])
def test_advanced_inputs_follow_the_rule(name, cls):
    """Sockets are never advanced; an advanced widget has a default (the paper's setting) to fall back on;
    the nodes people meet first show only their essentials."""
    inputs = _inputs(cls)
    assert not [n for n, (_, widget, adv) in inputs.items() if adv and not widget], f"{name}: advanced socket"
    assert not [n for n, (spec, _, adv) in inputs.items() if adv and "default" not in spec[1]], name
    if name in ESSENTIALS:
        shown = {n for n, (_, widget, adv) in inputs.items() if widget and not adv}
        assert shown == ESSENTIALS[name], f"{name} shows {sorted(shown)}"


@pytest.mark.parametrize("name,cls", NODES, ids=[n for n, _ in NODES])
def test_every_node_has_a_help_page(name, cls):
    """``web/docs/<node>.md`` (the editor's help panel): the display name, every input with the advanced
    ones marked as such, and a typical wiring."""
    path = HELP_DIR / f"{name}.md"
    assert path.is_file(), f"{path} is missing"
    text = path.read_text()
    assert text.startswith(f"# {infinite_id.NODE_DISPLAY_NAME_MAPPINGS[name]}\n"), name
    assert "## Typical wiring" in text and "## Input" in text, name
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| `")}
    for input_name, (_, _, advanced) in _inputs(cls).items():
        row = next((line for key, line in rows.items() if f"`{input_name}`" in key
                    or (input_name[-1].isdigit() and f"`{input_name.rstrip('0123456789')}" in key)), None)
        assert row is not None, f"{name}: help page does not describe '{input_name}'"
        key = row.split("|")[1]
        if input_name.rstrip("0123456789") == input_name:  # numbered inputs share a row
            assert ("*(advanced)*" in key) == advanced, f"{name}: '{input_name}' advanced={advanced}: {key}"


def test_search_aliases_find_the_pack():
    """The words people search for with other face packs' names lead to the setup nodes."""
    aliases = {name: {a.lower() for a in getattr(cls, "SEARCH_ALIASES", [])} for name, cls in NODES}
    assert all(aliases.values()), [n for n, a in aliases.items() if not a]
    for word in ("face id", "identity", "pulid", "instantid", "ipadapter face"):
        assert word in aliases["InfiniteIDApply"], word
    assert {"face id", "identity"} <= aliases["InfiniteIDEncode"]
