"""Extra memory of a dual-stream U-Net call, for ComfyUI's memory estimate (MEMORY_FACTOR).

ComfyUI sizes its batches from ``memory_required(input_shape)``. The Infinite-ID
samplers already double the latent batch, so the estimate sees both streams' rows; what
it cannot see is the extra work inside attention (mixed attention concatenates keys and
values for the identity rows; the image cross-attention). This script measures that on
the CPU at the SDXL-proportioned size: one fresh process per run, the peak resident
memory of one sampling step above the memory held before it, for core KSampler with two
latent rows (the same U-Net call size) and for InfiniteIDSampler with one row.

    .venv/bin/python bench/memory_extra.py --size 576
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = ("core", "mixed", "mixed_adain")


def child(run: str, size: int) -> dict:
    sys.path.insert(0, str(ROOT / "bench"))
    from dual_stream_speed import _boot

    _boot()
    import comfy.ldm.modules.attention as attention
    import nodes
    import psutil
    import torch
    from sdxl_random import PROPORTIONED, build_random_sdxl

    from infinite_id.demo.tiny_identity import random_identity
    from infinite_id.model_patch.install import apply_patch
    from infinite_id.model_patch.settings import PatchSettings
    from infinite_id.sampling.dual_stream import sample_dual_stream

    attention.optimized_attention = attention.attention_pytorch
    model, adapter = build_random_sdxl(torch.float32, proportioned=True)
    ctx = PROPORTIONED["context_dim"]
    gen = torch.Generator().manual_seed(0)
    cond = [[torch.randn(1, 77, ctx, generator=gen), {"pooled_output": torch.randn(1, 1280, generator=gen)}]]
    neg = [[torch.randn(1, 77, ctx, generator=gen), {"pooled_output": torch.randn(1, 1280, generator=gen)}]]
    side = size // 8
    if run == "core":
        latent = {"samples": torch.zeros(2, 4, side, side), "batch_index": [0, 0]}
        go = lambda: nodes.common_ksampler(model, 1, 1, 5.0, "euler", "normal", cond, neg, latent)  # noqa: E731
    else:
        identity = random_identity(seed=3, tokens=4, token_dim=ctx)
        patched = apply_patch(model, adapter, identity, PatchSettings(adain="mean" if run == "mixed_adain" else "off"))
        latent = {"samples": torch.zeros(1, 4, side, side)}
        go = lambda: sample_dual_stream(patched, 1, 1, 5.0, "euler", "normal", cond, neg, latent)  # noqa: E731
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak, stop = [base], [False]

    def sample():
        while not stop[0]:
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    with torch.inference_mode():
        go()
    stop[0] = True
    thread.join()
    return {"run": run, "extra_bytes": peak[0] - base}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=576)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", choices=RUNS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.size)))
        return
    results: dict[str, list[int]] = {run: [] for run in RUNS}
    for _ in range(args.repeats):
        for run in RUNS:
            out = subprocess.run([sys.executable, __file__, "--child", run, "--size", str(args.size)],
                                 capture_output=True, text=True, check=True)
            results[run].append(json.loads(out.stdout.strip().splitlines()[-1])["extra_bytes"])
    core = min(results["core"])
    print(f"# SDXL-proportioned model, {args.size}x{args.size}, one euler step at cfg 5, float32, torch SDPA; "
          f"minimum of {args.repeats} fresh processes")
    for run in RUNS:
        extra = min(results[run])
        print(f"{run:12s} {extra / 2**20:8.0f} MiB  {extra / core:5.2f}x core at the same call size")


if __name__ == "__main__":
    main()
