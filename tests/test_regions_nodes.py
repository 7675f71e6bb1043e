"""InfiniteID Regions and Face Masks through the host's real executor: bad input named,
masks from faces, saving and loading, core mask nodes, and the shipped two_people workflow."""
from __future__ import annotations

import fuzz_sources
import numpy as np
import pytest
import torch
from identity_prompts import as_image, face_rgb, image_node

from infinite_id.demo import tiny_insightface as tiny
from infinite_id.host.executor import PromptError, capture
from infinite_id.identity.face_masks import box_mask
from infinite_id.identity.regional import regional_identity
from infinite_id.identity.storage import load_identity, save_identity
from infinite_id.identity.types import Identity

MASK = torch.zeros(1, 32, 48)
LEFT, RIGHT = MASK.clone(), MASK.clone()
LEFT[:, :, :24], RIGHT[:, :, 24:] = 1.0, 1.0


def person(seed: int, info: dict | None = None) -> Identity:
    g = torch.Generator().manual_seed(seed)
    return Identity(cond=torch.randn(1, 4, 64, generator=g), uncond=torch.zeros(1, 4, 64), info=info or {})


def regions_prompt(**inputs) -> dict:
    """A Regions node whose inputs come from source nodes (values) or are widget values."""
    prompt, node_inputs = {}, {"weight_1": 1.0, "feather": 0}
    for name, value in inputs.items():
        if isinstance(value, (Identity, torch.Tensor)):
            kind = "INFINITEID_IDENTITY" if isinstance(value, Identity) else "MASK"
            prompt[f"src_{name}"] = fuzz_sources.source(kind, value)
            node_inputs[name] = [f"src_{name}", 0]
        else:
            node_inputs[name] = value
    prompt["regions"] = {"class_type": "InfiniteIDRegions", "inputs": node_inputs}
    prompt["out"] = capture("regions", infiniteid_identity=["regions", 0])
    return prompt


def run_regions(runner, **inputs) -> Identity:
    return runner.run(regions_prompt(**inputs))["regions"]["infiniteid_identity"]


def refused(runner, pattern: str, **inputs) -> None:
    with pytest.raises(PromptError, match=pattern):
        runner.run(regions_prompt(**inputs))


def test_two_people_make_one_regional_identity(runner):
    a, b = person(1), person(2)
    got = run_regions(runner, identity_1=a, mask_1=LEFT, identity_2=b, mask_2=RIGHT, weight_2=0.5)
    assert got.cond.shape == (1, 8, 64) and len(got.regions) == 2
    assert torch.equal(got.cond[:, :4], a.cond) and torch.equal(got.cond[:, 4:], b.cond)
    assert got.regions[1].weight == 0.5 and torch.equal(got.regions[1].mask, RIGHT)


def test_bad_inputs_name_the_node_and_input(runner):
    a, b = person(1), person(2)
    refused(runner, r"InfiniteIDRegions: mask_2: the mask is zero everywhere, so identity_2 would not appear\. "
                    r"LoadImage's MASK output is 1 where the image is transparent",
            identity_1=a, mask_1=LEFT, identity_2=b, mask_2=torch.zeros(1, 32, 48))
    refused(runner, r"InfiniteIDRegions: the masks' batches do not match \(mask_1: 2, mask_2: 3\)",
            identity_1=a, mask_1=LEFT.expand(2, -1, -1).clone(), identity_2=b, mask_2=RIGHT.expand(3, -1, -1).clone())
    refused(runner, r"InfiniteIDRegions: mask_2: identity_2 is connected but mask_2 is not; connect both",
            identity_1=a, mask_1=LEFT, identity_2=b)
    refused(runner, r"InfiniteIDRegions: mask_1: mask values from 0 to 255; MASK values must lie in 0\.\.1",
            identity_1=a, mask_1=LEFT * 255)
    refused(runner, r"InfiniteIDRegions: mask_1: the mask contains NaN",
            identity_1=a, mask_1=torch.full((1, 8, 8), float("nan")))
    narrow = Identity(cond=torch.ones(1, 4, 32), uncond=torch.zeros(1, 4, 32))
    refused(runner, r"InfiniteIDRegions: identity_2: its tokens are 32-d but identity_1's are 64-d: the people were "
                    r"encoded with different adapters", identity_1=a, mask_1=LEFT, identity_2=narrow, mask_2=RIGHT)
    plus = person(3, {"adapter": "ip-adapter-faceid-plusv2_sdxl.bin", "adapter_format": "faceid_plus_v2"})
    other = person(4, {"adapter": "infiniteid_native.safetensors", "adapter_format": "native"})
    refused(runner, r"InfiniteIDRegions: identity_2: encoded with adapter 'infiniteid_native.safetensors, native' but "
                    r"identity_1 with 'faceid_plus_v2, ip-adapter-faceid-plusv2_sdxl.bin'; one InfiniteIDApply uses "
                    r"one adapter", identity_1=plus, mask_1=LEFT, identity_2=other, mask_2=RIGHT)


def test_more_than_four_people_are_refused(runner):
    people = {f"identity_{i}": person(i) for i in range(1, 5)}
    masks = {f"mask_{i}": LEFT for i in range(1, 5)}
    four = run_regions(runner, **people, **masks)
    assert len(four.regions) == 4
    refused(runner, r"InfiniteIDRegions: regions: 5 people \(4 from the 'regions' input and 1 connected here\); a "
                    r"regional identity holds at most 4", identity_1=person(9), mask_1=RIGHT, regions=four)
    refused(runner, r"InfiniteIDRegions: identity_1: already a regional identity \(InfiniteID Regions\); connect it to "
                    r"the 'regions' input", identity_1=four, mask_1=LEFT)
    refused(runner, r"InfiniteIDRegions: regions: this identity has no regions", identity_1=person(1), mask_1=LEFT,
            regions=person(2))


def test_the_regions_input_adds_people(runner):
    first = run_regions(runner, identity_1=person(1), mask_1=LEFT)
    both = run_regions(runner, identity_1=person(2), mask_1=RIGHT, regions=first)
    assert [r.name for r in both.regions] == ["identity_1", "identity_1"]
    assert torch.equal(both.regions[0].mask, LEFT) and torch.equal(both.regions[1].mask, RIGHT)
    assert torch.equal(both.cond[:, :4], person(1).cond)
    feathered = run_regions(runner, identity_1=person(2), mask_1=RIGHT, regions=first, feather=8)
    assert torch.equal(feathered.regions[0].mask, LEFT)  # feather acts on the people connected here only
    assert not torch.equal(feathered.regions[1].mask, RIGHT)


def test_regional_identities_are_not_mixed(runner):
    regional = regional_identity([("identity_1", person(1), LEFT, 1.0)])
    prompt = {"a": fuzz_sources.source("INFINITEID_IDENTITY", regional),
              "b": fuzz_sources.source("INFINITEID_IDENTITY", person(2)),
              "mix": {"class_type": "InfiniteIDMix", "inputs": {"identity_1": ["a", 0], "identity_2": ["b", 0],
                                                                "weights": ""}},
              "out": capture("mix", infiniteid_identity=["mix", 0])}
    with pytest.raises(PromptError, match=r"InfiniteIDMix: identity_1: a regional identity \(InfiniteID Regions\) "
                                          r"cannot be mixed"):
        runner.run(prompt)
    prompt["mix"] = {"class_type": "InfiniteIDIdentityBatch", "inputs": {"identity_1": ["b", 0], "identity_2": ["a", 0]}}
    with pytest.raises(PromptError, match=r"InfiniteIDIdentityBatch: identity_2: a regional identity \(InfiniteID "
                                          r"Regions\) cannot be batched"):
        runner.run(prompt)


def test_feather_softens_edges_only(runner):
    got = run_regions(runner, identity_1=person(1), mask_1=LEFT, feather=8)
    mask = got.regions[0].mask[0]
    assert float(mask[:, :10].min()) > 0.99 and float(mask[:, 38:].max()) < 0.01  # far from the edge: unchanged
    assert 0.2 < float(mask[16, 23]) < 0.8 and 0.2 < float(mask[16, 24]) < 0.8  # the edge is soft


def test_core_mask_nodes_make_the_regions(runner):
    """SolidMask + MaskComposite: the core-only way the shipped workflow uses."""
    prompt = {
        "blank": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 48, "height": 32}},
        "half": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 24, "height": 32}},
        "left": {"class_type": "MaskComposite", "inputs": {"destination": ["blank", 0], "source": ["half", 0],
                                                           "x": 0, "y": 0, "operation": "add"}},
        "right": {"class_type": "MaskComposite", "inputs": {"destination": ["blank", 0], "source": ["half", 0],
                                                            "x": 24, "y": 0, "operation": "add"}},
        "a": fuzz_sources.source("INFINITEID_IDENTITY", person(1)),
        "b": fuzz_sources.source("INFINITEID_IDENTITY", person(2)),
        "regions": {"class_type": "InfiniteIDRegions", "inputs": {
            "identity_1": ["a", 0], "mask_1": ["left", 0], "weight_1": 1.0, "feather": 0,
            "identity_2": ["b", 0], "mask_2": ["right", 0], "weight_2": 1.0}},
        "out": capture("regions", infiniteid_identity=["regions", 0]),
    }
    got = runner.run(prompt)["regions"]["infiniteid_identity"]
    assert torch.equal(got.regions[0].mask, LEFT) and torch.equal(got.regions[1].mask, RIGHT)


def test_face_masks_from_a_layout_image(runner):
    size = (320, 480)
    scale = tiny.detection_scale(*size)
    layout = as_image(face_rgb((3, 4), (12, 4), size=size))
    prompt = {"fa": {"class_type": "InfiniteIDDemoFaceAnalysis", "inputs": {}},
              "img": image_node(layout),
              "masks": {"class_type": "InfiniteIDFaceMasks", "inputs": {"face_analysis": ["fa", 0], "image": ["img", 0],
                                                                        "grow": 1.5}},
              "out1": capture("mask_1", mask=["masks", 0], int=["masks", 4]),
              "out2": capture("mask_2", mask=["masks", 1]), "out3": capture("mask_3", mask=["masks", 2])}
    result = runner.run(prompt)
    got = {label: result[label]["mask"] for label in ("mask_1", "mask_2", "mask_3")}
    assert result["mask_1"]["int"] == 2
    for output, cell in (("mask_1", 3), ("mask_2", 12)):
        box, _ = tiny.expected_face(cell, 4, scale)
        x0, y0, x1, y1 = box
        cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * 0.75, (y1 - y0) * 0.75
        expected = torch.zeros(1, *size)
        expected[0, max(0, round(cy - hh)):round(cy + hh), max(0, round(cx - hw)):round(cx + hw)] = 1.0
        assert torch.equal(got[output], expected), output
    assert float(got["mask_3"].max()) == 0.0  # a third face is absent
    empty = {**prompt, "img": image_node(as_image(np.full((320, 480, 3), 128, np.uint8)))}
    with pytest.raises(PromptError, match=r"InfiniteIDFaceMasks: image: no face found in the layout image"):
        runner.run(empty)


def test_box_mask_clips_to_the_image():
    mask = box_mask(10, 10, (-4.0, 2.0, 4.0, 6.0), 1.0)
    assert mask[:, :4].sum() == 16 and mask[:, 4:].sum() == 0  # the part left of the image is dropped


def test_save_and_load_keep_the_regions(identities_dir):
    regional = regional_identity([("identity_1", person(1), LEFT, 0.7), ("identity_2", person(2), RIGHT, 1.2)])
    save_identity(regional, "two people")
    back = load_identity("two people.safetensors")
    assert torch.equal(back.cond, regional.cond) and len(back.regions) == 2
    for got, want in zip(back.regions, regional.regions):
        assert got.tokens == want.tokens and got.weight == want.weight and got.name == want.name
        assert torch.equal(got.mask, want.mask)
    plain = load_identity(save_identity(person(3), "plain").rsplit("/", 1)[-1])
    assert plain.regions == ()
