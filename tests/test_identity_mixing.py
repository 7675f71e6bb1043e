"""Mix, Interpolate, Save and Load identities through the real host.

Identities come from InfiniteIDEncode on two tiny-pack faces; mixed and interpolated
results are sampled with InfiniteIDApply + InfiniteIDSampler to show their shapes are
valid for the attention patch (1 identity, or n for an n-row latent batch).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from identity_prompts import as_image, encode_nodes, face_rgb, image_node
from prompts import base_prompt, infinite_id_nodes, sampler_inputs
from safetensors.torch import save_file

from infinite_id.host.executor import PromptError, capture
from infinite_id.identity.mixing import interpolate, mix, parse_weights
from infinite_id.identity.storage import FORMAT, load_identity
from infinite_id.identity.types import Identity


def two_people() -> dict:
    """Encode nodes ``enc_a``/``enc_b`` sharing the loaders (person 1 and person 2)."""
    prompt = encode_nodes(image_node(as_image(face_rgb((5, 5), first_identity=1))))
    del prompt["out"]
    prompt["enc_a"] = prompt.pop("enc")
    prompt["img_b"] = image_node(as_image(face_rgb((12, 9), first_identity=2)))
    prompt["enc_b"] = {"class_type": "InfiniteIDEncode",
                       "inputs": {**prompt["enc_a"]["inputs"], "image": ["img_b", 0]}}
    return prompt


def mix_node(*links, weights: str = "") -> dict:
    inputs = {f"identity_{i + 1}": list(link) for i, link in enumerate(links)}
    return {"class_type": "InfiniteIDMix", "inputs": {**inputs, "weights": weights}}


def lerp_node(t: float = 0.5, steps: int = 1, a=("enc_a", 0), b=("enc_b", 0)) -> dict:
    return {"class_type": "InfiniteIDInterpolate",
            "inputs": {"identity_a": list(a), "identity_b": list(b), "t": t, "steps": steps}}


def test_mix_and_interpolate_values(runner):
    prompt = two_people()
    prompt["mix"] = mix_node(("enc_a", 0), ("enc_b", 0), weights="1, 0.5")
    prompt["mix3"] = mix_node(("enc_a", 0), ("enc_b", 0), ("enc_a", 0))
    prompt["t0"], prompt["t1"], prompt["t25"] = lerp_node(0.0), lerp_node(1.0), lerp_node(0.25)
    prompt["sweep"] = lerp_node(0.9, steps=5)
    for name in ("enc_a", "enc_b", "mix", "mix3", "t0", "t1", "t25", "sweep"):
        prompt[f"out_{name}"] = capture(name, infiniteid_identity=[name, 0])
    got = {name: value["infiniteid_identity"] for name, value in runner.run(prompt).items()}
    a, b = got["enc_a"], got["enc_b"]
    assert not torch.allclose(a.cond, b.cond)
    mixed = got["mix"]
    assert mixed.cond.shape == (1, 8, 64)
    torch.testing.assert_close(mixed.cond[:, :4], a.cond)
    torch.testing.assert_close(mixed.cond[:, 4:], b.uncond + 0.5 * (b.cond - b.uncond))
    torch.testing.assert_close(mixed.uncond, torch.cat([a.uncond, b.uncond], dim=1))
    assert mixed.info["weights"] == [1.0, 0.5] and "2.face_embeds" in mixed.features
    assert got["mix3"].cond.shape == (1, 12, 64)
    assert torch.equal(got["t0"].cond, a.cond) and torch.equal(got["t0"].uncond, a.uncond)
    assert torch.equal(got["t1"].cond, b.cond) and torch.equal(got["t1"].uncond, b.uncond)
    torch.testing.assert_close(got["t25"].cond, 0.75 * a.cond + 0.25 * b.cond)
    sweep = got["sweep"]
    assert sweep.cond.shape == (5, 4, 64) and sweep.info["t"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert torch.equal(sweep.cond[0], a.cond[0]) and torch.equal(sweep.cond[4], b.cond[0])
    torch.testing.assert_close(sweep.cond[2], (a.cond[0] + b.cond[0]) / 2)


def test_swept_and_mixed_identity_samples(runner):
    """One sampler run: a 3-step sweep mixed with person A ([3, 8, 64]) on a 3-row latent."""
    prompt = base_prompt(width=64, height=64, batch=3)
    prompt.update(infinite_id_nodes())
    prompt.update({k: v for k, v in two_people().items() if k != "adapter"})
    prompt["sweep"] = lerp_node(steps=3)
    prompt["mix"] = mix_node(("sweep", 0), ("enc_a", 0))
    prompt["apply"]["inputs"]["identity"] = ["mix", 0]
    prompt["iid"] = {"class_type": "InfiniteIDSampler", "inputs": {"model": ["apply", 0], **sampler_inputs(steps=1)}}
    prompt["out"] = capture("run", latent=["iid", 0], infiniteid_identity=["mix", 0])
    got = runner.run(prompt)["run"]
    samples = got["latent"]["samples"]
    assert got["infiniteid_identity"].cond.shape == (3, 8, 64)
    assert samples.shape == (3, 4, 8, 8) and torch.isfinite(samples).all()


def test_mix_and_interpolate_messages(runner):
    prompt = two_people()
    prompt["mix"] = mix_node(("enc_a", 0), ("enc_b", 0))
    prompt["bad"] = lerp_node(a=("enc_a", 0), b=("mix", 0))
    prompt["out"] = capture("bad", infiniteid_identity=["bad", 0])
    with pytest.raises(PromptError, match="InfiniteIDInterpolate: identity_a has 4 tokens and identity_b 8"):
        runner.run(prompt)
    prompt = two_people()
    prompt["mix"] = mix_node(("enc_a", 0), ("enc_b", 0), weights="1, x")
    prompt["out"] = capture("mix", infiniteid_identity=["mix", 0])
    with pytest.raises(PromptError, match="InfiniteIDMix: weights: '1, x' is not a comma-separated list"):
        runner.run(prompt)
    with pytest.raises(ValueError, match="3 weight\\(s\\) given for 2"):
        parse_weights("1, 2, 3", 2)
    one = Identity(cond=torch.ones(1, 4, 64), uncond=torch.zeros(1, 4, 64))
    narrow = Identity(cond=torch.ones(1, 4, 32), uncond=torch.zeros(1, 4, 32))
    with pytest.raises(ValueError, match="different widths \\(identity_1: 64, identity_2: 32\\)"):
        mix([one, narrow])
    two, three = (Identity(cond=torch.ones(n, 4, 64), uncond=torch.zeros(n, 4, 64)) for n in (2, 3))
    with pytest.raises(ValueError, match="different numbers of rows"):
        mix([two, three])
    assert mix([one, two]).cond.shape == (2, 8, 64)
    with pytest.raises(ValueError, match="2 identities with 1 weight\\(s\\) and 2 name\\(s\\)"):
        mix([one, one], [1.0])
    with pytest.raises(ValueError, match="2 identities with 2 weight\\(s\\) and 1 name\\(s\\)"):
        mix([one, one], names=["a"])
    with pytest.raises(ValueError, match="a sweep needs single identities"):
        interpolate(two, one, [0.0, 1.0])


def test_save_and_load_round_trip(runner, identities_dir):
    prompt = two_people()
    prompt["mix"] = mix_node(("enc_a", 0), ("enc_b", 0), weights="1, 0.7")
    prompt["save"] = {"class_type": "InfiniteIDSaveIdentity",
                      "inputs": {"identity": ["mix", 0], "name": "two people", "overwrite": False}}
    prompt["out"] = capture("mix", infiniteid_identity=["mix", 0])
    original = runner.run(prompt)["mix"]["infiniteid_identity"]
    assert (identities_dir / "two people.safetensors").is_file()
    prompt["save"]["inputs"]["name"] = "two people.safetensors"  # same name again: kept, numbered copy written
    prompt["out"] = capture("again", infiniteid_identity=["mix", 0])
    prompt["save"]["inputs"]["overwrite"] = False
    prompt["mix"]["inputs"]["weights"] = "1, 0.70"  # a changed input makes the executor run Save again
    runner.run(prompt)
    assert (identities_dir / "two people_00001.safetensors").is_file()
    load = {"load": {"class_type": "InfiniteIDLoadIdentity", "inputs": {"identity_name": "two people.safetensors"}},
            "out": capture("loaded", infiniteid_identity=["load", 0])}
    loaded = runner.run(load)["loaded"]["infiniteid_identity"]
    assert torch.equal(loaded.cond, original.cond) and torch.equal(loaded.uncond, original.uncond)
    assert set(loaded.features) == set(original.features)
    assert loaded.info["weights"] == [1.0, 0.7] and loaded.info["file"] == "two people.safetensors"
    with open(identities_dir / "two people.safetensors", "rb") as handle:  # plain safetensors header, no pickle
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    assert header["__metadata__"]["format"] == FORMAT and header["__metadata__"]["cond_shape"] == "1,8,64"


def test_load_refuses_damaged_or_foreign_files(runner, identities_dir):
    identities_dir.mkdir(parents=True)
    cond = torch.randn(1, 4, 64)
    meta = {"format": FORMAT, "version": "1", "cond_shape": "1,4,64", "uncond_shape": "1,4,64"}
    save_file({"cond": cond.clone().index_fill_(2, torch.tensor([3]), float("nan")), "uncond": cond},
              str(identities_dir / "nan.safetensors"), metadata=meta)
    save_file({"cond": cond, "uncond": cond.clone()}, str(identities_dir / "shape.safetensors"),
              metadata={**meta, "cond_shape": "1,5,64"})
    save_file({"cond": cond, "uncond": cond.clone()}, str(identities_dir / "foreign.safetensors"), metadata={"format": "pt"})
    (identities_dir / "junk.safetensors").write_bytes(np.random.default_rng(0).bytes(64))
    load = {"load": {"class_type": "InfiniteIDLoadIdentity", "inputs": {"identity_name": "nan.safetensors"}},
            "out": capture("loaded", infiniteid_identity=["load", 0])}
    with pytest.raises(PromptError, match="InfiniteIDLoadIdentity: identity_name: 'nan.safetensors' has NaN"):
        runner.run(load)
    folder = str(identities_dir)
    with pytest.raises(ValueError, match="metadata says 1,5,64"):
        load_identity("shape.safetensors", folder)
    with pytest.raises(ValueError, match="not an Infinite-ID identity file"):
        load_identity("foreign.safetensors", folder)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_identity("junk.safetensors", folder)
    with pytest.raises(ValueError, match="points outside"):
        load_identity("../escape.safetensors", folder)
