"""Core KSampler on the patched MODEL against InfiniteID Sampler, and core EasyCache on both.

    COMFYUI_PATH=... OMP_NUM_THREADS=1 .venv/bin/python bench/any_sampler_speed.py --model sdxl03 --size 384 --steps 10

Needs a host with keyed wrappers (ComfyUI from December 2024), where a plain KSampler
runs both Infinite-ID streams. All runs happen in one process on the same model,
interleaved over ``--repeats`` rounds; the median is reported (process CPU time on the
CPU, robust to other jobs on a shared machine). With EasyCache (core
``comfy_extras/nodes_easycache.py``, its default settings unless given) it also reports
the speed gained and the deviation from the uncached result, for plain SDXL and for
Infinite-ID. Deviation: max |cached - uncached| / max |uncached| over the output latent,
and the mean absolute difference relative to the mean absolute value.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from dual_stream_speed import _boot, build  # noqa: E402  (bench/, after the path is set)


def deviation(got, want) -> str:
    diff = (got.double() - want.double()).abs()
    largest, mean = float(diff.max() / want.double().abs().max()), float(diff.mean() / want.double().abs().mean())
    return f"max {largest:.3g}, mean {mean:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["tiny", "sdxl03", "sdxl"], default="tiny")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--reuse-threshold", type=float, default=0.2, help="EasyCache (default: core's default)")
    parser.add_argument("--start-percent", type=float, default=0.15, help="EasyCache (default: core's default)")
    parser.add_argument("--end-percent", type=float, default=0.95, help="EasyCache (default: core's default)")
    args = parser.parse_args()
    args.attention = "pytorch"
    info = _boot()

    import comfy.ldm.modules.attention as attention
    import comfy.model_management as mm
    import nodes
    import torch

    from infinite_id.host import compat
    from infinite_id.model_patch.install import PatchSettings, apply_patch
    from infinite_id.sampling.dual_stream import sample_dual_stream

    if not compat.has_keyed_wrappers():
        raise SystemExit("this host has no keyed wrappers: a plain KSampler refuses the patched MODEL here")
    attention.optimized_attention = attention.attention_pytorch  # torch SDPA, as ComfyUI uses on GPUs
    model, adapter, identity, cond, neg, latent = build(args)
    patched = apply_patch(model, adapter, identity, PatchSettings())
    cfg, seed, n = 5.0, 1, {"steps": args.steps}

    def ksampler(m):
        return lambda: nodes.common_ksampler(m, seed, n["steps"], cfg, args.sampler, "normal", cond, neg,
                                             latent)[0]["samples"]

    runs = {"core KSampler, plain SDXL": ksampler(model),
            "core KSampler, patched MODEL": ksampler(patched),
            "InfiniteID Sampler": lambda: sample_dual_stream(patched, seed, n["steps"], cfg, args.sampler, "normal",
                                                             cond, neg, latent).identity["samples"]}
    try:
        from comfy_extras.nodes_easycache import EasyCacheNode
    except ImportError:
        EasyCacheNode = None
    if EasyCacheNode is not None:
        def easycache(m):
            result = EasyCacheNode.execute(m, args.reuse_threshold, args.start_percent, args.end_percent, False)
            return (result.args if hasattr(result, "args") else result)[0]
        runs["core KSampler + EasyCache, plain SDXL"] = ksampler(easycache(model))
        runs["core KSampler + EasyCache, patched MODEL"] = ksampler(easycache(patched))

    clock = time.process_time if mm.get_torch_device().type == "cpu" else time.perf_counter
    outputs, times, evaluations = {}, {name: [] for name in runs}, {name: 0 for name in runs}
    calls = [0]  # U-Net evaluations that really ran (a skipped step returns before the input convolution)
    model.model.diffusion_model.input_blocks[0][0].register_forward_pre_hook(
        lambda module, inputs: calls.__setitem__(0, calls[0] + 1))
    with torch.inference_mode():
        n["steps"] = 1
        for run in runs.values():  # warm-up: loading, kernels, caches
            run()
        n["steps"] = args.steps
        for _ in range(args.repeats):
            for name, run in runs.items():
                start, calls[0] = clock(), 0
                outputs[name] = run()
                times[name].append(clock() - start)
                evaluations[name] = calls[0]
    base = statistics.median(times["core KSampler, plain SDXL"])
    print(f"# {info.describe()}")
    print(f"# {mm.get_torch_device()}; torch threads {torch.get_num_threads()}; model {args.model}; "
          f"{args.size}x{args.size}; {args.steps} steps {args.sampler}; cfg {cfg}; median of {args.repeats}; "
          f"{'process CPU time' if clock is time.process_time else 'wall time'}; EasyCache threshold "
          f"{args.reuse_threshold}, {args.start_percent}-{args.end_percent}")
    print(f"{'run':44s} {'seconds':>8s} {'ratio':>6s} {'U-Net calls':>11s}")
    for name in runs:
        t = statistics.median(times[name])
        print(f"{name:44s} {t:8.2f} {t / base:6.2f} {evaluations[name]:11d}")
    print("patched KSampler vs InfiniteID Sampler: "
          + deviation(outputs["core KSampler, patched MODEL"], outputs["InfiniteID Sampler"]))
    if EasyCacheNode is not None:
        for kind in ("plain SDXL", "patched MODEL"):
            cached, plain = f"core KSampler + EasyCache, {kind}", f"core KSampler, {kind}"
            gain = statistics.median(times[plain]) / statistics.median(times[cached])
            print(f"EasyCache on {kind}: {gain:.2f}x faster; deviation from uncached "
                  + deviation(outputs[cached], outputs[plain]))


if __name__ == "__main__":
    main()
