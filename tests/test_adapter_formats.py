"""Adapter files: native and FaceID-Plus-v2 round trips, refusals, the adapter LoRA, real shapes on meta.

Reference values are computed here from the raw state-dict tensors with plain matmuls,
softmax and layer norms, independently of the pack's modules; key names and layer
order are written out from the published FaceID-Plus-v2 layout and diffusers' order.
"""
from __future__ import annotations

import math

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from infinite_id.adapter.loader import load_adapter_state
from infinite_id.adapter.lora import apply_adapter_lora, check_lora_shapes, lora_key_map
from infinite_id.adapter.native import build_native_adapter, save_native
from infinite_id.demo.tiny_sdxl import TINY_CONTEXT_DIM, tiny_sdxl_unet_config
from infinite_id.host.errors import InfiniteIDError
from infinite_id.nodes.adapter_loader import InfiniteIDAdapterLoader
from infinite_id.unet.layers import SDXL_LAYERS
from infinite_id.unet.walk import cross_attention_widths

# diffusers order: down_blocks.1 (2 x 2 layers), down_blocks.2 (2 x 10), up_blocks.0 (3 x 10),
# up_blocks.1 (3 x 2), mid_block (10); SDXL widths 640 / 1280.
DIFFUSERS_GROUPS = [(("input", 4), 2, 640), (("input", 5), 2, 640), (("input", 7), 10, 1280), (("input", 8), 10, 1280),
                    (("output", 0), 10, 1280), (("output", 1), 10, 1280), (("output", 2), 10, 1280),
                    (("output", 3), 2, 640), (("output", 4), 2, 640), (("output", 5), 2, 640),
                    (("middle", 0), 10, 1280)]
DIFFUSERS_LAYERS = [(b, i, t) for (b, i), depth, _ in DIFFUSERS_GROUPS for t in range(depth)]
SDXL_WIDTHS = [w for _, depth, w in DIFFUSERS_GROUPS for _ in range(depth)]


def rnd(gen, *shape, scale=0.2, device=None):
    if device == "meta":
        return torch.empty(shape, device="meta")
    return torch.randn(shape, generator=gen) * scale


def faceid_state(widths, dim=128, tokens=4, clip=48, depth=2, hidden=64, ff=2, ctx=TINY_CONTEXT_DIM, rank=4,
                 lora=True, seed=0, device=None):
    """A FaceID-Plus-v2-shaped ``(image_proj, ip_adapter)`` with the published key names."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: rnd(g, *s, device=device)
    norm = lambda n: {f"{n}.weight": 1 + r(n_dim[n]), f"{n}.bias": r(n_dim[n])}
    n_dim = {"norm": dim, "perceiver_resampler.norm_out": dim}
    proj = {"proj.0.weight": r(hidden, 512), "proj.0.bias": r(hidden), "proj.2.weight": r(tokens * dim, hidden),
            "proj.2.bias": r(tokens * dim), **norm("norm"), "perceiver_resampler.proj_in.weight": r(dim, clip),
            "perceiver_resampler.proj_in.bias": r(dim), "perceiver_resampler.proj_out.weight": r(dim, dim),
            "perceiver_resampler.proj_out.bias": r(dim), **norm("perceiver_resampler.norm_out")}
    for i in range(depth):
        p = f"perceiver_resampler.layers.{i}."
        for n in ("0.norm1", "0.norm2", "1.0"):
            proj[p + n + ".weight"], proj[p + n + ".bias"] = 1 + r(dim), r(dim)
        proj.update({p + "0.to_q.weight": r(dim, dim), p + "0.to_kv.weight": r(2 * dim, dim),
                     p + "0.to_out.weight": r(dim, dim), p + "1.1.weight": r(ff * dim, dim),
                     p + "1.3.weight": r(dim, ff * dim)})
    ip = {}
    for i, w in enumerate(widths):
        ip[f"{2 * i + 1}.to_k_ip.weight"], ip[f"{2 * i + 1}.to_v_ip.weight"] = r(w, dim), r(w, dim)
        for n in ((2 * i, 2 * i + 1) if lora else ()):
            kin = w if n % 2 == 0 else ctx
            for proj_name, fan_in in (("to_q", w), ("to_k", kin), ("to_v", kin), ("to_out", w)):
                ip[f"{n}.{proj_name}_lora.down.weight"] = r(rank, fan_in)
                ip[f"{n}.{proj_name}_lora.up.weight"] = r(w, rank)
    return proj, ip


def ln(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"].double(), sd[name + ".bias"].double())


def perceiver(sd, prefix, latents, feats, dim_head):
    """Plain perceiver stack: per-head loops, explicit softmax(q k^T / sqrt(d))."""
    W = lambda n: sd[prefix + n].double()
    x = feats @ W("proj_in.weight").T + W("proj_in.bias")
    depth = len({k[len(prefix):].split(".")[1] for k in sd if k.startswith(prefix + "layers.")})
    for i in range(depth):
        p = f"{prefix}layers.{i}."
        xf, lat = ln(x, sd, p + "0.norm1"), ln(latents, sd, p + "0.norm2")
        q = lat @ W(f"layers.{i}.0.to_q.weight").T
        k, v = (torch.cat([xf, lat], 1) @ W(f"layers.{i}.0.to_kv.weight").T).chunk(2, dim=-1)
        heads = []
        for h in range(q.shape[-1] // dim_head):
            s = slice(h * dim_head, (h + 1) * dim_head)
            a = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(dim_head), dim=-1)
            heads.append(a @ v[..., s])
        latents = latents + torch.cat(heads, -1) @ W(f"layers.{i}.0.to_out.weight").T
        f = ln(latents, sd, p + "1.0")
        latents = latents + F.gelu(f @ W(f"layers.{i}.1.1.weight").T) @ W(f"layers.{i}.1.3.weight").T
    return ln(latents @ W("proj_out.weight").T + W("proj_out.bias"), sd, prefix + "norm_out")


def faceid_reference(sd, face, clip, dim):
    face, clip = face.double(), clip.double()
    h = F.gelu(face @ sd["proj.0.weight"].double().T + sd["proj.0.bias"].double())
    x = (h @ sd["proj.2.weight"].double().T + sd["proj.2.bias"].double()).reshape(face.shape[0], -1, dim)
    x = ln(x, sd, "norm")
    return x + perceiver(sd, "perceiver_resampler.", x, clip, 64)  # v2 shortcut, s_scale 1


def native_reference(sd, meta, face, clip):
    face, clip, dim = face.double(), clip.double(), int(meta["token_dim"])
    h = F.gelu(face @ sd["face_mapper.net.0.weight"].double().T + sd["face_mapper.net.0.bias"].double())
    f = (h @ sd["face_mapper.net.2.weight"].double().T + sd["face_mapper.net.2.bias"].double())
    face_tokens = ln(f.reshape(face.shape[0], -1, dim), sd, "face_mapper.norm")
    queries = sd["clip_mapper.queries"].double().expand(clip.shape[0], -1, -1)
    clip_tokens = perceiver(sd, "clip_mapper.resampler.", queries, clip, int(meta["clip_mapper_dim_head"]))
    return torch.cat([clip_tokens, face_tokens], 1)


@pytest.fixture
def adapter_folder(tmp_path):
    """``models/infiniteid`` pointed at a temporary folder; folder_paths restored afterwards."""
    import folder_paths

    saved = folder_paths.folder_names_and_paths.get("infiniteid")
    cache = getattr(folder_paths, "filename_list_cache", {})
    folder_paths.folder_names_and_paths["infiniteid"] = ([str(tmp_path)], {".safetensors", ".bin"})
    cache.pop("infiniteid", None)
    yield tmp_path
    cache.pop("infiniteid", None)
    if saved is None:
        folder_paths.folder_names_and_paths.pop("infiniteid", None)
    else:
        folder_paths.folder_names_and_paths["infiniteid"] = saved


def load_node(name):
    assert name in InfiniteIDAdapterLoader.INPUT_TYPES()["required"]["adapter_name"][0]
    return InfiniteIDAdapterLoader().load(name)[0]


def save_faceid(folder, name, proj, ip):
    if name.endswith(".bin"):
        torch.save({"image_proj": proj, "ip_adapter": ip}, folder / name)
    else:
        flat = {**{f"image_proj.{k}": v for k, v in proj.items()}, **{f"ip_adapter.{k}": v for k, v in ip.items()}}
        safetensors.torch.save_file(flat, str(folder / name))


@pytest.mark.parametrize("name", ["faceid-nested.bin", "renamed-anything.safetensors"])
def test_faceid_plus_v2_loads_and_encodes(adapter_folder, tiny_unet, name):
    widths = [w for w, _ in (cross_attention_widths(tiny_unet.model.diffusion_model)[k] for k in SDXL_LAYERS)]
    proj, ip = faceid_state(widths)
    save_faceid(adapter_folder, name, proj, ip)
    adapter = load_node(name)
    assert adapter.info["format"] == "faceid-plus-v2" and adapter.info["num_tokens"] == 4
    assert adapter.info["face_embedding"] == "normalized" and adapter.info["clip_layer"] == "penultimate"
    face, clip = F.normalize(torch.randn(3, 512), dim=-1), torch.randn(3, 7, 48)
    got = adapter.encode_tokens(face, clip)
    torch.testing.assert_close(got.double(), faceid_reference(proj, face, clip, 128), rtol=1e-4, atol=1e-4)
    # Layer j of diffusers' order is ip number 2j+1 and sits at DIFFUSERS_LAYERS[j] in ComfyUI.
    for j, key in enumerate(DIFFUSERS_LAYERS):
        i = adapter.kv.layer_index[key]
        assert torch.equal(adapter.kv.to_k[i].weight, ip[f"{2 * j + 1}.to_k_ip.weight"])
        assert torch.equal(adapter.kv.to_v[i].weight, ip[f"{2 * j + 1}.to_v_ip.weight"])
    assert adapter.kv.layer_index[("middle", 0, 0)] == 60 and len(adapter.lora) == 140 * 8


def test_native_round_trip(adapter_folder):
    adapter = build_native_adapter(layer_widths=[16] * 70, token_dim=64, clip_width=40, face_tokens=2, clip_tokens=3,
                                   face_hidden=32, clip_dim=64, clip_depth=2, clip_heads=4, clip_dim_head=16,
                                   ff_mult=2, seed=3)
    with torch.no_grad():  # move norms and biases away from 1/0 so swapped names would show
        for p in adapter.mapper.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = adapter_folder / "my-identity-adapter.safetensors"
    save_native(str(path), adapter)
    sd = safetensors.torch.load_file(str(path))
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "infinite-id" and meta["face_tokens"] == "2" and meta["clip_tokens"] == "3"
    assert {f"ip.{n}.to_k.weight" for n in range(1, 140, 2)} <= set(sd)
    loaded = load_node(path.name)
    face, clip = F.normalize(torch.randn(2, 512), dim=-1), torch.randn(2, 5, 40)
    got = loaded.encode_tokens(face, clip)
    assert got.shape == (2, 5, 64)
    torch.testing.assert_close(got.double(), native_reference(sd, meta, face, clip), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got, adapter.encode_tokens(face, clip))


def _ip(n_layers, in_dim, width=8):
    return {f"{2 * i + 1}.{p}.weight": torch.zeros(width, in_dim)
            for i in range(n_layers) for p in ("to_k_ip", "to_v_ip")}


def _nested(proj, ip):
    return {"image_proj": proj, "ip_adapter": ip}


Z = torch.zeros
REFUSED = {
    "sd15-plain": (_nested({"proj.weight": Z(3072, 16), "norm.weight": Z(768)}, _ip(16, 768)),
                   ["plain IP-Adapter", "SD1.5"]),
    "sd15-faceid-plus": (_nested({"proj.0.weight": Z(8, 512), "norm.weight": Z(768),
                                  "perceiver_resampler.proj_in.weight": Z(768, 16)}, _ip(16, 768)),
                         ["FaceID-Plus", "SD1.5", "SDXL version"]),
    "sdxl-plain": (_nested({"proj.weight": Z(64, 16), "norm.weight": Z(16)}, _ip(70, 16)),
                   ["plain IP-Adapter", "SDXL"]),
    "sdxl-plus-face": (_nested({"latents": Z(1, 16, 32), "proj_in.weight": Z(32, 48)}, _ip(70, 16)),
                       ["Plus / Plus-Face", "SDXL"]),
    "instantid": (_nested({"latents": Z(1, 16, 32), "proj_in.weight": Z(32, 512)}, _ip(70, 16)), ["InstantID"]),
    "sdxl-faceid": (_nested({"proj.0.weight": Z(8, 512), "norm.weight": Z(16)}, _ip(70, 16)), ["without the CLIP"]),
    "sdxl-faceid-plus-damaged": (_nested({"proj.0.weight": Z(8, 512), "norm.weight": Z(16),
                                          "perceiver_resampler.proj_in.weight": Z(16, 16)}, _ip(70, 16)),
                                 ["incomplete or damaged"]),
    "flux": ({"double_blocks.0.processor.ip_adapter_double_stream_k_proj.weight": Z(4, 4)}, ["Flux"]),
    "checkpoint": ({"model.diffusion_model.input_blocks.0.0.weight": Z(4), "first_stage_model.x": Z(1)},
                   ["full Stable Diffusion checkpoint"]),
    "lora": ({"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight": Z(4, 4)}, ["a LoRA"]),
    "empty": ({}, ["empty"]),
    "unknown": ({"foo.weight": Z(2)}, ["not a known adapter layout"]),
    "native-no-metadata": ({"face_mapper.net.0.weight": Z(2, 2), "ip.1.to_k.weight": Z(2, 2)},
                           ["no format=infinite-id"]),
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
@pytest.mark.parametrize("ext", [".bin", ".safetensors"])
def test_refused_files_say_what_they_are(adapter_folder, kind, ext):
    sd, expected = REFUSED[kind]
    if ext == ".bin":
        torch.save(sd, adapter_folder / f"x{ext}")
    else:
        flat = {f"{part}.{k}": v for part, d in sd.items() for k, v in d.items()} if "ip_adapter" in sd else sd
        safetensors.torch.save_file(flat, str(adapter_folder / f"x{ext}"))
    with pytest.raises(InfiniteIDError) as info:
        load_node(f"x{ext}")
    message = str(info.value)
    assert message.startswith("InfiniteIDAdapterLoader") and "adapter_name" in message
    for text in expected:
        assert text in message, message


class NotWeights:
    pass


def test_pickled_code_is_refused_and_missing_file_is_named(adapter_folder):
    torch.save({"image_proj": NotWeights()}, adapter_folder / "evil.bin")
    with pytest.raises(InfiniteIDError, match="weights_only"):
        load_node("evil.bin")
    with pytest.raises(InfiniteIDError) as info:
        InfiniteIDAdapterLoader().load("ip-adapter-faceid-plusv2_sdxl.bin")
    assert "ip-adapter-faceid-plusv2_sdxl.bin" in str(info.value) and str(adapter_folder) in str(info.value)


def _unet_out(patcher, x, t, ctx, y):
    import comfy.model_management as mm

    mm.load_models_gpu([patcher])
    with torch.no_grad():
        return patcher.model.diffusion_model(x, timesteps=t, context=ctx, y=y).clone()


@pytest.fixture
def one_thread():
    """Tiny-model forwards are thread-sync bound; on a busy 2-core host one thread is 20x faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_adapter_lora_patches_the_unet(tiny_unet, one_thread):
    import comfy.model_management as mm

    unet = tiny_unet.model.diffusion_model
    widths = [cross_attention_widths(unet)[k][0] for k in SDXL_LAYERS]
    adapter = load_adapter_state(_nested(*faceid_state(widths, seed=4)))
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500.0])
    ctx = torch.randn(1, 7, TINY_CONTEXT_DIM, generator=g)
    y = torch.randn(1, tiny_sdxl_unet_config()["adm_in_channels"], generator=g)
    w = unet.middle_block[1].transformer_blocks[0].attn2.to_k.weight
    before_w = w.detach().clone()
    try:
        base = _unet_out(tiny_unet, x, t, ctx, y)
        patched = apply_adapter_lora(tiny_unet, adapter, 0.5)
        out = _unet_out(patched, x, t, ctx, y)
        # ip-adapter processor 121 = attn2 of the first middle-block layer (diffusers puts the mid block last).
        lora = adapter.lora
        expected = before_w + 0.5 * lora["121.to_k_lora.up.weight"] @ lora["121.to_k_lora.down.weight"]
        torch.testing.assert_close(unet.middle_block[1].transformer_blocks[0].attn2.to_k.weight, expected)
        assert (out - base).abs().max() > 1e-3
        zero = _unet_out(apply_adapter_lora(tiny_unet, adapter, 0.0), x, t, ctx, y)
        assert torch.equal(zero, base)
    finally:
        mm.unload_all_models()
    assert torch.equal(unet.middle_block[1].transformer_blocks[0].attn2.to_k.weight, before_w)


def test_real_faceid_plus_v2_shapes_fit_real_sdxl_on_meta():
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    proj, ip = faceid_state(SDXL_WIDTHS, dim=2048, tokens=4, clip=1280, depth=4, hidden=1024, ff=4, ctx=2048,
                            rank=128, device="meta")
    sd = {**{f"image_proj.{k}": v for k, v in proj.items()}, **{f"ip_adapter.{k}": v for k, v in ip.items()}}
    adapter = load_adapter_state(sd, name="meta")
    config = {**tiny_sdxl_unet_config(), "model_channels": 320, "context_dim": 2048, "adm_in_channels": 2816,
              "num_head_channels": 64}
    with torch.device("meta"):
        unet = UNetModel(**config, device="meta", operations=comfy.ops.disable_weight_init)
    widths = cross_attention_widths(unet)
    for i, key in enumerate(SDXL_LAYERS):
        assert widths[key] == (adapter.kv.to_k[i].out_features, adapter.kv.to_k[i].in_features), key
    assert [adapter.kv.to_k[adapter.kv.layer_index[k]].out_features for k in DIFFUSERS_LAYERS] == SDXL_WIDTHS
    key_map = lora_key_map(unet, adapter.lora)
    shapes = {f"diffusion_model.{k}": v.shape for k, v in unet.state_dict().items()}
    check_lora_shapes(shapes, adapter.lora, key_map)
    assert len(key_map) == 140 * 4 and len(set(key_map.values())) == 140 * 4
    tokens = adapter.mapper(torch.empty(1, 512, device="meta"), torch.empty(1, 257, 1280, device="meta"))
    assert tokens.shape == (1, 4, 2048) and adapter.info["num_tokens"] == 4 and adapter.token_dim == 2048
    tensors = list(adapter.kv.parameters()) + list(adapter.mapper.parameters()) + list(unet.parameters())
    assert all(p.is_meta for p in tensors) and all(v.is_meta for v in adapter.lora.values())
