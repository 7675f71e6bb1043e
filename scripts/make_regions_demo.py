"""Remake docs/images/regions_demo.png: the shipped two_people workflow on the demo models,
and where each person's identity acts.

    .venv/bin/python scripts/make_regions_demo.py

The workflow runs three times in this process through the host's executor: both people,
person A alone (``weight_2 = 0``) and person B alone (``weight_1 = 0``). During the first
U-Net call a probe on the cross-attention layers records, per token, how far the identity
stream's cross-attention output moved from text attention alone (what Regions confines);
the maps are the mean over the half-resolution layers, cond side.
"""
from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "images" / "regions_demo.png"
RUNS = (("both people", []), ("person A alone", ["InfiniteIDRegions.weight_2=0"]),
        ("person B alone", ["InfiniteIDRegions.weight_1=0"]))
TILE = 192


def _load_pack() -> None:
    spec = importlib.util.spec_from_file_location("infinite_id_bootstrap", ROOT / "host" / "locate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.import_host()
    module.load_pack()


def run_once(sets: list[str], folder: Path):
    """The identity image and the per-token map of identity influence (first call, 1/2 resolution)."""
    import dataclasses

    import folder_paths
    import torch
    from PIL import Image

    from infinite_id.cli.run_workflow import use_demo_models
    from infinite_id.host.executor import Runner
    from infinite_id.model_patch import replacements
    from infinite_id.workflow_io.files import apply_overrides, load_workflow

    prompt, _ = load_workflow(ROOT / "workflows" / "api" / "two_people.json")
    apply_overrides(prompt, sets)
    (folder / "in").mkdir(parents=True)
    folder_paths.set_input_directory(str(folder / "in"))
    folder_paths.set_output_directory(str(folder / "out"))
    use_demo_models(prompt, folder / "in")
    maps: list[torch.Tensor] = []
    first_sigma: list[float] = []
    original = replacements.CrossAttentionPatch.__call__

    def probe(self, q, k, v, extra):
        out = original(self, q, k, v, extra)
        state = extra.get(replacements.STEP_KEY)
        if state is not None and not first_sigma:
            first_sigma.append(state.sigma)
        if state is not None and state.identity_active and state.sigma == first_sigma[0]:
            h, w = extra["original_shape"][-2:]
            if q.shape[1] == ((h + 1) // 2) * ((w + 1) // 2):
                text = original(self, q, k, v, {**extra, replacements.STEP_KEY:
                                                dataclasses.replace(state, identity_active=False)})
                chunk = next(c for c in state.layout.chunks if c.kind == 0)
                delta = (out[chunk.identity] - text[chunk.identity]).float().norm(dim=-1)[0]
                maps.append(delta.view((h + 1) // 2, (w + 1) // 2))
        return out

    replacements.CrossAttentionPatch.__call__ = probe
    try:
        Runner().run(prompt)
    finally:
        replacements.CrossAttentionPatch.__call__ = original
    image = Image.open(next((folder / "out").rglob("*.png"))).convert("RGB")
    return image, torch.stack(maps).mean(0)


def heat(values, size: int):
    """Black (no influence) to yellow (the strongest token), one square per token."""
    import torch
    from PIL import Image

    scaled = (values / max(float(values.max()), 1e-12)).clamp(0, 1)
    rgb = (scaled[..., None] * torch.tensor([255.0, 220.0, 60.0])).byte().numpy()
    return Image.fromarray(rgb).resize((size, size), Image.Resampling.NEAREST)


def layout(size: int):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (40, 40, 40))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, size // 2 - 1, size], fill=(200, 60, 60))
    draw.rectangle([size // 2, 0, size, size], fill=(60, 90, 200))
    draw.text((8, 8), "mask_1: A", fill="white")
    draw.text((size // 2 + 8, 8), "mask_2: B", fill="white")
    return image


def main() -> None:
    from PIL import Image, ImageDraw

    _load_pack()
    import folder_paths

    saved = folder_paths.get_input_directory(), folder_paths.get_output_directory()
    results = []
    with tempfile.TemporaryDirectory(prefix="infiniteid-regions-demo-") as tmp:
        try:
            for i, (label, sets) in enumerate(RUNS):
                results.append((label, *run_once(sets, Path(tmp) / str(i))))
        finally:
            folder_paths.set_input_directory(saved[0])
            folder_paths.set_output_directory(saved[1])
    pad = 22
    panels = [("regions (stretched to the image)", layout(TILE)), ("image, both people", results[0][1])]
    panels += [(f"where {label.split()[1]} acts (first step)", heat(m, TILE)) for label, _, m in results[1:]]
    gap = 8
    canvas = Image.new("RGB", ((TILE + gap) * len(panels) - gap, TILE + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, image) in enumerate(panels):
        draw.text((i * (TILE + gap) + 4, 4), label, fill="black")
        canvas.paste(image.resize((TILE, TILE)), (i * (TILE + gap), pad))
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(TARGET)
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
