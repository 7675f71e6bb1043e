"""Seconds and peak memory of one training step (issue 7's benchmark), as ratios in one process.

    .venv/bin/python bench/train_step.py                                   # tiny model, CPU
    .venv/bin/python bench/train_step.py --model sdxl --size 1024 --precision bf16   # GPU

One step = the native mappers on random ArcFace/CLIP features, the frozen U-Net's
forward with identity-only cross-attention, the backward pass and an AdamW update: the
training loop's work without the data loading (which reads small cached files). Runs
with gradient checkpointing on and off and a plain no-grad U-Net forward alternate over
``--repeats`` rounds; medians and ratios to the forward are printed. ``--model sdxl``
builds a real-size SDXL U-Net with random weights (``bench/sdxl_random.py``) and a
native adapter of the default sizes; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dual_stream_speed import PeakMemory, _boot  # noqa: E402


def build(model: str, precision: str):
    import torch

    if model == "sdxl":
        from sdxl_random import build_random_sdxl

        patcher, _ = build_random_sdxl(torch.bfloat16 if precision == "bf16" else torch.float16)
        sizes = {}
    else:
        from infinite_id.demo.tiny_sdxl import build_tiny_sdxl

        patcher = build_tiny_sdxl(0)
        sizes = {"face_hidden": 64, "clip_dim": 64, "clip_depth": 1, "clip_heads": 2, "clip_dim_head": 32}
    return patcher, sizes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "sdxl"], default="tiny")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    info = _boot()
    import comfy.model_management as mm
    import torch

    from infinite_id.adapter.native import build_native_adapter
    from infinite_id.unet.layers import SDXL_LAYERS
    from infinite_id.unet.walk import cross_attention_widths
    from infinite_id.training.objective import IdentityObjective, gradient_checkpointing

    device = mm.get_torch_device()
    patcher, sizes = build(args.model, args.precision)
    mm.load_models_gpu([patcher])
    unet = patcher.model.diffusion_model.requires_grad_(False)
    widths = cross_attention_widths(unet)
    clip_width = 1280 if args.model == "sdxl" else 32
    adapter = build_native_adapter([widths[k][0] for k in SDXL_LAYERS], token_dim=widths[SDXL_LAYERS[0]][1],
                                   clip_width=clip_width, seed=0, **sizes)
    adapter.kv.to(device).requires_grad_(True)
    adapter.mapper.to(device).requires_grad_(True)
    params = [q for m in (adapter.kv, adapter.mapper) for q in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.precision]
    objective = IdentityObjective(patcher, adapter.kv, autocast)
    gen = torch.Generator().manual_seed(0)
    side = args.size // 8
    latents = torch.randn(args.batch, 4, side, side, generator=gen).to(device)
    face = torch.nn.functional.normalize(torch.randn(args.batch, 512, generator=gen), dim=-1).to(device)
    clip = torch.randn(args.batch, 257, clip_width, generator=gen).to(device)
    y = objective.size_conditioning([{"height": args.size, "width": args.size, "crop_h": 0, "crop_w": 0}] * args.batch,
                                    args.size)

    def train_step(checkpointing: bool) -> None:
        optimizer.zero_grad(set_to_none=True)
        tokens = adapter.mapper(face, clip)
        with gradient_checkpointing(unet, checkpointing):
            loss = objective.loss(latents, tokens, y, gen)
        loss.backward()
        optimizer.step()

    def forward() -> None:
        with torch.no_grad():
            objective.loss(latents, adapter.mapper(face, clip), y, gen)

    runs = {"forward only (no grad)": forward, "train step, checkpointing on": lambda: train_step(True),
            "train step, checkpointing off": lambda: train_step(False)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    peaks: dict[str, float] = {}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            with PeakMemory(device) as peak:
                start = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
            total = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak.used
            peaks[name] = max(peaks.get(name, 0.0), total / 2 ** 30)
    base = statistics.median(times["forward only (no grad)"])
    print(info.describe())
    print(f"model {args.model}, {args.size}x{args.size}, batch {args.batch}, {args.precision}, device {device}, "
          f"torch {torch.__version__}, {args.repeats} rounds (median)")
    for name in runs:
        t = statistics.median(times[name])
        print(f"  {name:32s} {t:8.3f} s  ({t / base:5.2f}x forward)  peak {peaks[name]:.2f} GiB")
    print("peak: CUDA max_memory_allocated (weights included); on the CPU, process RSS growth (allocator noise)")


if __name__ == "__main__":
    main()
