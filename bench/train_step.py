"""Seconds and peak memory of one training step (the training benchmark, docs/BENCHMARKS.md), as ratios in one process.

    .venv/bin/python bench/train_step.py                                   # tiny model, CPU
    .venv/bin/python bench/train_step.py --model sdxl --size 1024 --precision bf16   # GPU

One step = the native mappers on random ArcFace/CLIP features, the frozen U-Net's
forward with identity-only cross-attention, the backward pass and an AdamW update: the
training loop's work without the data loading (which reads small cached files). Runs
with gradient checkpointing on and off and a plain no-grad U-Net forward alternate over
``--repeats`` rounds; medians and ratios to the forward are printed. ``--model sdxl``
builds a real-size SDXL U-Net with random weights (``bench/sdxl_random.py``) and a
native adapter of the default sizes; nothing is downloaded.

Data-parallel throughput, the same step under ``torchrun`` with torch's DDP
over the trainable modules (as ``training/trainer.py`` does), images per second over
all processes:

    OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 bench/train_step.py \
        --model sdxl-0.3 --size 256 --throughput 6

``--model sdxl-0.3``: SDXL's layout with every width x0.3 (96/192/384 channels, head
dim 48, context 640, all 70 transformer blocks), a size a CPU can step. ``--flops``
counts one training step's FLOPs of the real-size SDXL U-Net at ``--size`` with
``torch.utils.flop_counter`` on the meta device (no memory, no time), the number the
8-GPU projection in docs/TRAINING.md is made from.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dual_stream_speed import PeakMemory, _boot


def proportioned_unet_config(scale: float = 0.3) -> dict:
    """SDXL's unet_config with its widths x``scale`` (0.3: 96/192/384 channels, head dim 48), same 70 blocks."""
    from sdxl_random import sdxl_unet_config

    config = dict(sdxl_unet_config())
    config.update({"model_channels": 96, "num_head_channels": 48, "context_dim": 640,
                   "adm_in_channels": 384 + 6 * 256})  # pooled 1280 x0.3, plus SDXL's six size embeddings
    return config


def build_from_config(unet_config: dict, dtype, device=None):
    """A ModelPatcher around an SDXL-class model built from ``unet_config`` with random weights."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    device = device or mm.get_torch_device()
    config = comfy.supported_models.SDXL(unet_config)
    if hasattr(config, "set_inference_dtype"):
        config.set_inference_dtype(dtype, None)
    else:
        config.unet_config["dtype"] = dtype
    from infinite_id.host.compat import eager_weights

    with eager_weights():
        model = config.get_model({}, device=device)
    if str(device) != "meta":
        from sdxl_random import random_init_

        random_init_(model.diffusion_model, 0)
    model.diffusion_model.to(dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def build(model: str, precision: str):
    import torch

    if model == "sdxl-0.3":
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
        patcher = build_from_config(proportioned_unet_config(), torch.float32 if dtype != torch.float16 else dtype)
        sizes = {"face_hidden": 308, "clip_dim": 308, "clip_depth": 4, "clip_heads": 4, "clip_dim_head": 77}
    elif model == "sdxl":
        from sdxl_random import build_random_sdxl

        patcher, _ = build_random_sdxl(torch.bfloat16 if precision == "bf16" else torch.float16)
        sizes = {}
    else:
        from infinite_id.demo.tiny_sdxl import build_tiny_sdxl

        patcher = build_tiny_sdxl(0)
        sizes = {"face_hidden": 64, "clip_dim": 64, "clip_depth": 1, "clip_heads": 2, "clip_dim_head": 32}
    return patcher, sizes


def frozen_unet_and_adapter(args):
    """``(patcher, frozen U-Net, native adapter, CLIP width)`` for ``--model``, loaded."""
    import comfy.model_management as mm

    from infinite_id.adapter.native import build_native_adapter
    from infinite_id.unet.layers import SDXL_LAYERS
    from infinite_id.unet.walk import cross_attention_widths

    patcher, sizes = build(args.model, args.precision)
    mm.load_models_gpu([patcher])
    unet = patcher.model.diffusion_model.requires_grad_(False)
    widths = cross_attention_widths(unet)
    clip_width = 32 if args.model == "tiny" else 1280
    adapter = build_native_adapter([widths[k][0] for k in SDXL_LAYERS], token_dim=widths[SDXL_LAYERS[0]][1],
                                   clip_width=clip_width, seed=0, **sizes)
    return patcher, unet, adapter, clip_width


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "sdxl", "sdxl-0.3"], default="tiny")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--throughput", type=int, default=0, metavar="STEPS",
                   help="data-parallel mode (works under torchrun): time STEPS steps after one warm-up, print "
                        "images/s over all processes")
    p.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="gradient checkpointing in --throughput mode (the training default: on)")
    p.add_argument("--flops", action="store_true", help="count one step's FLOPs of the real-size SDXL U-Net "
                   "at --size on the meta device and exit")
    args = p.parse_args()
    info = _boot()
    if args.flops:
        count_flops(args.size, args.batch)
        return
    if args.throughput:
        throughput(args, info)
        return
    import comfy.model_management as mm
    import torch

    from infinite_id.training.objective import IdentityObjective, gradient_checkpointing

    device = mm.get_torch_device()
    patcher, unet, adapter, clip_width = frozen_unet_and_adapter(args)
    adapter.kv.to(device).requires_grad_(True)
    adapter.mapper.to(device).requires_grad_(True)
    params = [q for m in (adapter.kv, adapter.mapper) for q in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.precision]
    objective = IdentityObjective(patcher, adapter.kv, autocast)
    latents, face, clip, y, gen = _step_inputs(objective, args, device, clip_width)

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


def _step_inputs(objective, args, device, clip_width: int):
    import torch

    gen = torch.Generator().manual_seed(0)
    side = args.size // 8
    latents = torch.randn(args.batch, 4, side, side, generator=gen).to(device)
    face = torch.nn.functional.normalize(torch.randn(args.batch, 512, generator=gen), dim=-1).to(device)
    clip = torch.randn(args.batch, 257, clip_width, generator=gen).to(device)
    y = objective.size_conditioning([{"height": args.size, "width": args.size, "crop_h": 0, "crop_w": 0}] * args.batch,
                                    args.size)
    return latents, face, clip, y, gen


def throughput(args, info) -> None:
    """Images/s of the DDP training step over all ranks (``torchrun``; one process without it)."""
    import comfy.model_management as mm
    import torch

    from infinite_id.training.distributed import from_environment
    from infinite_id.training.objective import IdentityObjective, gradient_checkpointing

    dist = from_environment()
    device = mm.get_torch_device()
    patcher, unet, adapter, clip_width = frozen_unet_and_adapter(args)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.precision]
    objective = IdentityObjective(patcher, adapter.kv, autocast)
    latents, face, clip, y, gen = _step_inputs(objective, args, device, clip_width)

    class Trainable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mapper, self.kv = adapter.mapper.to(device).requires_grad_(True), adapter.kv.to(device).requires_grad_(True)

        def forward(self):
            with gradient_checkpointing(unet, args.checkpointing):
                return objective.loss(latents, self.mapper(face, clip), y, gen)

    module = Trainable()
    wrapped = torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None) if dist.active else module
    optimizer = torch.optim.AdamW([q for q in module.parameters()], lr=1e-4, weight_decay=0.01)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        wrapped().backward()
        optimizer.step()

    step()  # warm-up
    dist.barrier()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.throughput):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dist.barrier()
    elapsed = time.perf_counter() - start
    images = args.throughput * args.batch * dist.world
    if dist.is_main:
        params = sum(q.numel() for q in unet.parameters())
        trained = sum(q.numel() for q in module.parameters())
        print(info.describe())
        print(f"model {args.model} ({params / 1e6:.0f}M U-Net parameters, {trained / 1e6:.1f}M trained), "
              f"{args.size}x{args.size}, batch {args.batch} "
              f"per process, {dist.world} process(es) ({dist.backend or 'no process group'}), {args.precision}, "
              f"checkpointing {'on' if args.checkpointing else 'off'}, device {device}, torch {torch.__version__}, "
              f"OMP threads {torch.get_num_threads()}")
        print(f"  {args.throughput} steps in {elapsed:.1f} s: {elapsed / args.throughput:.2f} s/step, "
              f"{images / elapsed:.3f} images/s (global batch {args.batch * dist.world})")
    dist.close()


def count_flops(size: int, batch: int) -> None:
    """FLOPs of one training step (forward, recomputed forward with checkpointing, backward) of real-size SDXL."""
    import torch
    from sdxl_random import sdxl_unet_config
    from torch.utils.flop_counter import FlopCounterMode

    from infinite_id.adapter.kv import IdentityKV
    from infinite_id.training.objective import (
        TOKENS_KEY,
        IdentityCrossAttention,
        SdpaSelfAttention,
        gradient_checkpointing,
    )
    from infinite_id.unet.layers import SDXL_LAYERS
    from infinite_id.unet.walk import cross_attention_widths

    meta = torch.device("meta")
    patcher = build_from_config(sdxl_unet_config(), torch.bfloat16, device=meta)
    unet = patcher.model.diffusion_model.requires_grad_(False)
    widths = cross_attention_widths(unet)
    kv = IdentityKV(2048, [widths[k][0] for k in SDXL_LAYERS], dtype=torch.bfloat16, device=meta)
    patches = {"attn1": {k: SdpaSelfAttention() for k in SDXL_LAYERS},
               "attn2": {k: IdentityCrossAttention(kv, k) for k in SDXL_LAYERS}}
    side = size // 8
    x = torch.zeros(batch, 4, side, side, device=meta, dtype=torch.bfloat16)
    t = torch.zeros(batch, device=meta)
    context = torch.zeros(batch, 1, 2048, device=meta, dtype=torch.bfloat16)
    y = torch.zeros(batch, 2816, device=meta, dtype=torch.bfloat16)
    tokens = torch.zeros(batch, 8, 2048, device=meta, dtype=torch.bfloat16, requires_grad=True)
    counter = FlopCounterMode(display=False)
    # Checkpointing as in training: its recomputation runs inside the backward pass and is counted there.
    with counter, gradient_checkpointing(unet, True):
        out = unet(x, t, context=context, y=y, transformer_options={"patches_replace": patches, TOKENS_KEY: tokens})
        forward = counter.get_total_flops()
        out.float().square().mean().backward()
    step = counter.get_total_flops()
    backward = step - 2 * forward
    print(f"real-size SDXL U-Net, {size}x{size}, batch {batch}, identity-only cross-attention (8 tokens):")
    print(f"  forward {forward / 1e12:.2f} TFLOP, backward (activations + key/value weights) {backward / 1e12:.2f} "
          f"TFLOP, step with checkpointing {step / 1e12:.2f} TFLOP ({step / batch / 1e12:.2f} per image)")


if __name__ == "__main__":
    main()
