"""The tiny CLIP text encoder, VAE and CLIP vision model run the host's real code paths.

Core nodes are called the way ComfyUI's executor calls them (inside inference mode), on
objects of the host's own classes.
"""
from __future__ import annotations

import pytest
import torch

from infinite_id.demo import tiny_clip_text, tiny_clip_vision, tiny_vae
from infinite_id.demo.tiny_sdxl import TINY_CONTEXT_DIM, TINY_POOLED_DIM


def _encode(clip, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    import nodes

    with torch.inference_mode():
        (conditioning,) = nodes.CLIPTextEncode().encode(clip=clip, text=text)
    assert len(conditioning) == 1
    cond, extra = conditioning[0]
    return cond, extra["pooled_output"]


@pytest.fixture(scope="module")
def tiny_clip():
    return tiny_clip_text.build_tiny_sdxl_clip(seed=0)


@pytest.fixture(scope="module")
def tiny_vae_model():
    return tiny_vae.build_tiny_vae(seed=0)


@pytest.fixture(scope="module")
def tiny_vision():
    return tiny_clip_vision.build_tiny_clip_vision(seed=0)


# --- text encoder -------------------------------------------------------------------


def test_tiny_clip_is_the_hosts_sdxl_clip(tiny_clip):
    import comfy.sd
    import comfy.sdxl_clip

    assert isinstance(tiny_clip, comfy.sd.CLIP)
    assert isinstance(tiny_clip.cond_stage_model, comfy.sdxl_clip.SDXLClipModel)
    assert isinstance(tiny_clip.tokenizer, comfy.sdxl_clip.SDXLTokenizer)


def test_clip_text_encode_shapes(tiny_clip):
    cond, pooled = _encode(tiny_clip, "a photo of a woman, detailed face")
    assert cond.shape == (1, 77, TINY_CONTEXT_DIM)
    assert pooled.shape == (1, TINY_POOLED_DIM)
    assert torch.isfinite(cond).all() and torch.isfinite(pooled).all()
    # Both halves (CLIP-L then CLIP-G) carry signal.
    assert cond[..., : TINY_CONTEXT_DIM - TINY_POOLED_DIM].std() > 0.1
    assert cond[..., TINY_CONTEXT_DIM - TINY_POOLED_DIM :].std() > 0.1


def test_clip_text_encode_depends_on_prompt_and_seed(tiny_clip):
    cond_a, pooled_a = _encode(tiny_clip, "a photo of a cat")
    cond_b, pooled_b = _encode(tiny_clip, "an oil painting of a lighthouse")
    assert not torch.allclose(cond_a, cond_b, atol=1e-3)
    assert not torch.allclose(pooled_a, pooled_b, atol=1e-3)
    # The real tokenizer's prompt weighting reaches the encoder.
    cond_w, _ = _encode(tiny_clip, "a photo of a (cat:1.5)")
    assert not torch.allclose(cond_a, cond_w, atol=1e-3)

    again, pooled_again = _encode(tiny_clip, "a photo of a cat")
    assert torch.equal(cond_a, again) and torch.equal(pooled_a, pooled_again)
    rebuilt, _ = _encode(tiny_clip_text.build_tiny_sdxl_clip(seed=0), "a photo of a cat")
    assert torch.equal(cond_a, rebuilt)
    other_seed, _ = _encode(tiny_clip_text.build_tiny_sdxl_clip(seed=1), "a photo of a cat")
    assert not torch.allclose(cond_a, other_seed, atol=1e-3)


def test_clip_text_encode_long_prompt_uses_two_chunks(tiny_clip):
    text = ", ".join(["a very long prompt about a face"] * 12)  # about 95 tokens
    assert len(tiny_clip.tokenize(text)["l"]) == 2  # the real tokenizer's 75-token chunks
    cond, pooled = _encode(tiny_clip, text)
    assert cond.shape == (1, 2 * 77, TINY_CONTEXT_DIM)
    assert pooled.shape == (1, TINY_POOLED_DIM)


# --- VAE ----------------------------------------------------------------------------


def test_vae_decode_encode_shapes(tiny_vae_model):
    import comfy.sd
    import nodes

    assert isinstance(tiny_vae_model, comfy.sd.VAE)
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        (image,) = nodes.VAEDecode().decode(vae=tiny_vae_model, samples={"samples": latent})
        (encoded,) = nodes.VAEEncode().encode(vae=tiny_vae_model, pixels=image)
        # ComfyUI crops to a multiple of 8 before encoding.
        (cropped,) = nodes.VAEEncode().encode(vae=tiny_vae_model, pixels=torch.rand(2, 133, 130, 3))
    assert image.shape == (1, 128, 128, 3)
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.std() > 0.01
    assert encoded["samples"].shape == (1, 4, 16, 16)
    assert torch.isfinite(encoded["samples"]).all()
    assert cropped["samples"].shape == (2, 4, 16, 16)


def test_vae_is_seeded(tiny_vae_model):
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        first = tiny_vae_model.decode(latent)
        rebuilt = tiny_vae.build_tiny_vae(seed=0).decode(latent)
        other = tiny_vae.build_tiny_vae(seed=1).decode(latent)
    assert torch.equal(first, rebuilt)
    assert not torch.allclose(first, other, atol=1e-3)


# --- CLIP vision --------------------------------------------------------------------


def test_clip_vision_output_fields_and_shapes(tiny_vision):
    import comfy.clip_vision

    assert isinstance(tiny_vision, comfy.clip_vision.ClipVisionModel)
    config = tiny_clip_vision.tiny_clip_vision_config()
    tokens = tiny_clip_vision.tiny_clip_vision_tokens(config)
    assert tokens == (224 // 32) ** 2 + 1

    image = torch.rand(2, 256, 300, 3, generator=torch.Generator().manual_seed(0))  # resized + cropped
    with torch.inference_mode():
        out = tiny_vision.encode_image(image)
    assert out["last_hidden_state"].shape == (2, tokens, config["hidden_size"])
    assert out["penultimate_hidden_states"].shape == (2, tokens, config["hidden_size"])
    assert out["image_embeds"].shape == (2, config["projection_dim"])
    # Fields only some hosts return (current ComfyUI); the 2024 tree has just the three.
    fields = set(vars(out))
    assert {"last_hidden_state", "penultimate_hidden_states", "image_embeds"} <= fields
    assert fields <= {"last_hidden_state", "penultimate_hidden_states", "image_embeds",
                      "image_sizes", "mm_projected", "all_hidden_states"}
    if "image_sizes" in fields:
        assert len(out["image_sizes"]) == 2
        assert tuple(out["image_sizes"][0]) == (3, config["image_size"], config["image_size"])
    if "mm_projected" in fields:
        assert out["mm_projected"] is None  # no LLaVA projector in a CLIP config
    assert not torch.allclose(out["image_embeds"][0], out["image_embeds"][1], atol=1e-4)


def test_clip_vision_hidden_states_match_layer_outputs(tiny_vision):
    """Recompute the outputs from each encoder layer's output, caught with hooks.

    ComfyUI's layers add into their input in place, so a hook must clone; the
    ``intermediate_output=-2`` index logic of the host is not involved.
    """
    vision = tiny_vision.model.vision_model
    layers = vision.encoder.layers
    captured: list[torch.Tensor] = []
    handles = [layer.register_forward_hook(lambda _m, _i, o: captured.append(o.clone())) for layer in layers]
    try:
        with torch.inference_mode():
            out = tiny_vision.encode_image(torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(1)))
            assert len(captured) == len(layers) == 4
            pooled = vision.post_layernorm(captured[-1][:, 0, :])
            embeds = tiny_vision.model.visual_projection(pooled)
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(out["penultimate_hidden_states"], captured[-2])
    torch.testing.assert_close(out["last_hidden_state"], captured[-1])
    torch.testing.assert_close(out["image_embeds"], embeds.float())
    assert not torch.allclose(captured[-2], captured[-1], atol=1e-3)


def test_clip_vision_is_seeded(tiny_vision):
    image = torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        first = tiny_vision.encode_image(image)["image_embeds"]
        rebuilt = tiny_clip_vision.build_tiny_clip_vision(seed=0).encode_image(image)["image_embeds"]
        other = tiny_clip_vision.build_tiny_clip_vision(seed=1).encode_image(image)["image_embeds"]
    assert torch.equal(first, rebuilt)
    assert not torch.allclose(first, other, atol=1e-3)
