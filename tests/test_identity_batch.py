"""InfiniteIDIdentityBatch through the real host: rows, chaining, sampling, and every refusal.

Identities come from InfiniteIDEncode on two tiny-pack faces (shared loaders), as in
test_identity_mixing.py; foreign or damaged identities arrive through a test source node,
as another pack's output would.
"""
from __future__ import annotations

import fuzz_sources
import pytest
import torch
from prompts import base_prompt, infinite_id_nodes, sampler_inputs
from test_identity_mixing import lerp_node, mix_node, two_people

from infinite_id.host.executor import PromptError, capture
from infinite_id.identity.batch import batch
from infinite_id.identity.types import Identity, recorded


def batch_node(*links) -> dict:
    return {"class_type": "InfiniteIDIdentityBatch",
            "inputs": {f"identity_{i + 1}": list(link) for i, link in enumerate(links)}}


def _refused(runner, prompt: dict, node: str = "batch") -> str:
    prompt["out"] = capture("refused", infiniteid_identity=[node, 0])
    with pytest.raises(PromptError) as err:
        runner.run(prompt)
    return str(err.value)


def test_rows_are_the_people_in_socket_order_and_batches_chain(runner):
    prompt = two_people()
    prompt["batch"] = batch_node(("enc_a", 0), ("enc_b", 0), ("enc_a", 0))
    prompt["sweep"] = lerp_node(steps=3)
    prompt["chain"] = batch_node(("batch", 0), ("sweep", 0))  # a batch input adds all its rows
    for name in ("enc_a", "enc_b", "batch", "sweep", "chain"):
        prompt[f"out_{name}"] = capture(name, infiniteid_identity=[name, 0])
    got = {name: value["infiniteid_identity"] for name, value in runner.run(prompt).items()}
    a, b, rows = got["enc_a"], got["enc_b"], got["batch"]
    assert rows.cond.shape == (3, 4, 64)
    for i, person in enumerate((a, b, a)):
        assert torch.equal(rows.cond[i], person.cond[0]) and torch.equal(rows.uncond[i], person.uncond[0])
    assert rows.info["rows"] == [1, 1, 1] and recorded(rows.info, "adapter") == {a.info["adapter"]}
    assert "2.face_embeds" in rows.features
    chain = got["chain"]
    assert chain.cond.shape == (6, 4, 64) and chain.info["rows"] == [3, 3]
    assert torch.equal(chain.cond[:3], rows.cond) and torch.equal(chain.cond[3:], got["sweep"].cond)


def test_a_batch_samples_one_row_per_person_from_a_latent_of_one(runner):
    prompt = base_prompt(width=64, height=64, batch=1)
    prompt.update(infinite_id_nodes())
    prompt.update({k: v for k, v in two_people().items() if k != "adapter"})
    prompt["batch"] = batch_node(("enc_a", 0), ("enc_b", 0))
    prompt["apply"]["inputs"]["identity"] = ["batch", 0]
    prompt["iid"] = {"class_type": "InfiniteIDSampler", "inputs": {"model": ["apply", 0], **sampler_inputs(steps=1)}}
    prompt["out"] = capture("run", latent=["iid", 0])
    samples = runner.run(prompt)["run"]["latent"]["samples"]
    assert samples.shape == (2, 4, 8, 8) and torch.isfinite(samples).all()
    assert not torch.allclose(samples[0], samples[1])  # two people, one noise: the rows differ by identity only


def test_different_token_shapes_are_refused(runner):
    prompt = two_people()
    prompt["mix"] = mix_node(("enc_a", 0), ("enc_b", 0))
    prompt["batch"] = batch_node(("enc_a", 0), ("mix", 0))
    text = _refused(runner, prompt)
    assert "InfiniteIDIdentityBatch: identity_2: its tokens are 8 x 64 but identity_1's are 4 x 64" in text
    assert "same token shape" in text and "batch mixes of as many people" in text
    prompt = two_people()
    prompt["narrow"] = fuzz_sources.source("INFINITEID_IDENTITY",
                                           Identity(cond=torch.ones(1, 4, 32), uncond=torch.zeros(1, 4, 32)))
    prompt["batch"] = batch_node(("enc_a", 0), ("enc_b", 0), ("narrow", 0))
    assert "InfiniteIDIdentityBatch: identity_3: its tokens are 4 x 32 but identity_1's are 4 x 64" in _refused(
        runner, prompt)


def _foreign(adapter: str, fmt: str) -> Identity:
    return Identity(cond=torch.ones(1, 4, 64), uncond=torch.zeros(1, 4, 64),
                    info={"adapter": adapter, "adapter_format": fmt})


def test_identities_of_different_adapters_are_refused(runner):
    prompt = two_people()
    prompt["other"] = fuzz_sources.source("INFINITEID_IDENTITY", _foreign("faceid-plusv2.bin", "faceid_plusv2"))
    prompt["native"] = fuzz_sources.source("INFINITEID_IDENTITY", _foreign("infinite-id.safetensors", "native"))
    prompt["batch"] = batch_node(("other", 0), ("native", 0))
    text = _refused(runner, prompt)
    assert ("InfiniteIDIdentityBatch: identity_2: it was encoded with a native adapter but identity_1 with a "
            "faceid_plusv2 adapter; one Apply node uses one adapter") in text
    prompt = two_people()  # the encoded people use the tiny demo adapter (format 'demo': names still count)
    prompt["other"] = fuzz_sources.source("INFINITEID_IDENTITY", _foreign("another.safetensors", "demo"))
    prompt["batch"] = batch_node(("enc_a", 0), ("other", 0))
    text = _refused(runner, prompt)
    assert ("InfiniteIDIdentityBatch: identity_2: it was encoded with adapter 'another.safetensors' but identity_1 "
            "with 'tiny-adapter-1'") in text and "re-encode both with the adapter you apply" in text


def test_mix_of_batches_keeps_its_adapters_for_the_check():
    """A batch nested in a mix (or a mix in a batch) still tells its adapter: the check sees nested info."""
    a, b = _foreign("x.bin", "faceid_plusv2"), _foreign("y.bin", "faceid_plusv2")
    joined = batch([a, a])
    with pytest.raises(ValueError, match="identity_2: it was encoded with adapter 'y.bin' but identity_1 with 'x.bin'"):
        batch([joined, b])
    plain = Identity(cond=torch.ones(2, 4, 64), uncond=torch.zeros(2, 4, 64))  # nothing recorded: cannot tell
    assert batch([joined, plain]).cond.shape == (4, 4, 64)


def test_bad_objects_and_values_are_refused(runner):
    prompt = two_people()
    prompt["text"] = fuzz_sources.source("INFINITEID_IDENTITY", "alice")
    prompt["batch"] = batch_node(("enc_a", 0), ("text", 0))
    assert "InfiniteIDIdentityBatch: identity_2: expected an INFINITEID_IDENTITY" in _refused(runner, prompt)
    nan = Identity(cond=torch.ones(1, 4, 64), uncond=torch.zeros(1, 4, 64))
    nan.uncond = torch.full_like(nan.uncond, float("nan"))  # damaged after construction, as another pack could
    prompt = two_people()
    prompt["nan"] = fuzz_sources.source("INFINITEID_IDENTITY", nan)
    prompt["batch"] = batch_node(("nan", 0), ("enc_a", 0))
    assert "InfiniteIDIdentityBatch: identity_1: uncond tokens contain NaN or infinite values" in _refused(
        runner, prompt)
