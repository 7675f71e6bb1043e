"""Speed and peak memory of dual-stream sampling, as ratios to core KSampler.

    .venv/bin/python bench/dual_stream_speed.py                    # tiny model, CPU
    .venv/bin/python bench/dual_stream_speed.py --model sdxl03 --size 576 --steps 6   # SDXL-proportioned, CPU
    .venv/bin/python bench/dual_stream_speed.py --model sdxl --size 1024 --steps 30   # GPU
    .venv/bin/python bench/dual_stream_speed.py --groups main,sweep:11,batch:4 --json out.json

All runs happen in one process on the same model and settings, interleaved over
``--repeats`` rounds, and the median is reported: machines are noisy, ratios within one
process are what can be compared. ``--model sdxl`` builds a real-size SDXL U-Net with
random weights (no download) and a random adapter of FaceID-Plus-v2's shape.

Groups (``--groups``), each against core KSampler at its own batch size, the model built once:
``main`` (core, full mixing, mixing over the first half, the two-pass reference),
``sweep:N`` (an N-identity Interpolate sweep: shared noise, one text row, against core
at batch N) and ``batch:N`` (an Identity Batch of N people, the same rows as a sweep,
against core at batch N). ``--json`` writes every figure for scripts (the GPU check).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _boot():
    spec = importlib.util.spec_from_file_location("infinite_id_bootstrap", ROOT / "host" / "locate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    info = module.import_host()
    module.load_pack()
    return info


class PeakMemory:
    """Peak CUDA allocation, or peak process RSS sampled every 5 ms on the CPU.

    ``used`` is the peak above what was allocated before the run (the run's own memory);
    on CUDA ``total`` is ``max_memory_allocated`` itself, the model's weights included."""

    def __init__(self, device) -> None:
        self.device = device

    def __enter__(self):
        import psutil
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.proc, self.base, self.peak, self.stop = psutil.Process(), psutil.Process().memory_info().rss, 0, False

        def sample():
            while not self.stop:
                self.peak = max(self.peak, self.proc.memory_info().rss)
                time.sleep(0.005)
        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.total = torch.cuda.max_memory_allocated()  # weights included: what a card must hold
            self.used = self.total - self.base
        else:
            self.stop = True
            self.thread.join()
            self.used = max(self.peak - self.base, 0)


def build(args):
    import torch

    from infinite_id.demo.tiny_identity import build_tiny_adapter, random_identity
    from infinite_id.demo.tiny_sdxl import build_tiny_sdxl

    if args.model == "tiny":
        model = build_tiny_sdxl(0)
        adapter = build_tiny_adapter(model)
        ctx, pooled, tokens = 64, 32, 4
    else:
        from sdxl_random import PROPORTIONED, build_random_sdxl  # bench/sdxl_random.py

        proportioned = args.model == "sdxl03"
        dtype = torch.float32 if proportioned else torch.float16
        model, adapter = build_random_sdxl(dtype, proportioned=proportioned)
        ctx = PROPORTIONED["context_dim"] if proportioned else 2048
        pooled, tokens = 1280, 4
    gen = torch.Generator().manual_seed(0)
    cond = [[torch.randn(1, 77, ctx, generator=gen), {"pooled_output": torch.randn(1, pooled, generator=gen)}]]
    neg = [[torch.randn(1, 77, ctx, generator=gen), {"pooled_output": torch.randn(1, pooled, generator=gen)}]]
    identity = random_identity(seed=3, tokens=tokens, token_dim=ctx)
    latent = {"samples": torch.zeros(1, 4, args.size // 8, args.size // 8)}
    return model, adapter, identity, cond, neg, latent


GROUP_NAMES = ("main", "sweep", "batch")


def parse_groups(text: str) -> list[tuple[str, int]]:
    """``main,sweep:11,batch:4`` -> ``[("main", 1), ("sweep", 11), ("batch", 4)]``."""
    groups = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, count = part.partition(":")
        if name not in GROUP_NAMES or (name != "main" and not count.isdigit()):
            raise SystemExit(f"--groups: {part!r} is not one of main, sweep:N, batch:N")
        groups.append((name, int(count) if count else 1))
    return groups


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["tiny", "sdxl03", "sdxl"], default="tiny")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--no-reference", action="store_true", help="skip the two-pass reference")
    parser.add_argument("--clock", choices=["wall", "cpu"], default=None,
                        help="cpu: this process's CPU time (robust to other jobs on a shared machine; use with "
                             "OMP_NUM_THREADS=1); default: cpu on the CPU, wall on a GPU")
    parser.add_argument("--sweep", type=int, default=0, metavar="N",
                        help="instead: an N-identity sweep (shared noise, one text row) against core KSampler "
                             "with batch N (the same as --groups sweep:N)")
    parser.add_argument("--groups", default=None,
                        help="comma-separated: main, sweep:N, batch:N (default: main, or sweep:N with --sweep)")
    parser.add_argument("--group-repeats", type=int, default=None,
                        help="repeats of the sweep/batch groups (default: --repeats)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="steps of the warm-up round (default: --steps); 1 is enough for loading and caches")
    parser.add_argument("--attention", choices=["host", "pytorch"], default="pytorch",
                        help="pytorch: every run uses torch SDPA, as ComfyUI does on GPUs (the CPU default, "
                             "sub-quadratic attention, is far slower and would dominate the ratios)")
    args = parser.parse_args()
    groups = parse_groups(args.groups or (f"sweep:{args.sweep}" if args.sweep else "main"))
    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(ROOT / "tests"))
    info = _boot()

    import torch

    if args.attention == "pytorch":
        import comfy.ldm.modules.attention as attention

        attention.optimized_attention = attention.attention_pytorch
        if hasattr(attention, "optimized_attention_masked"):
            attention.optimized_attention_masked = attention.attention_pytorch
    import comfy.model_management as mm

    model, adapter, identity, cond, neg, latent = build(args)
    device = mm.get_torch_device()
    clock_name = args.clock or ("wall" if device.type == "cuda" else "cpu")
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    report = {
        "host": info.describe(), "device": str(device),
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "CPU",
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "attention": args.attention,
        "model": args.model, "size": args.size, "steps": args.steps, "sampler": args.sampler, "cfg": 5.0,
        "repeats": args.repeats, "clock": "process CPU time" if clock_name == "cpu" else "wall time",
        "groups": [],
    }
    for name, count in groups:
        runs = group_runs(name, count, args, model, adapter, identity, cond, neg, latent)
        repeats = args.repeats if name == "main" else (args.group_repeats or args.repeats)
        figures = measure(runs, args, device, clock, repeats)
        report["groups"].append({"group": name if name == "main" else f"{name}:{count}", "repeats": repeats,
                                 "runs": figures})
        if args.json:  # after each group: a run cut short still leaves what it measured
            args.json.write_text(json.dumps(report, indent=1))
    print_report(report)


def group_runs(name: str, count: int, args, model, adapter, identity, cond, neg, latent) -> dict:
    """The runs of one group, core KSampler first (the base of its ratios)."""
    import comfy.model_management as mm
    import nodes
    import torch

    from infinite_id.demo.tiny_identity import random_identity
    from infinite_id.host import compat
    from infinite_id.model_patch.install import PatchSettings, apply_patch
    from infinite_id.sampling.dual_stream import sample_dual_stream

    cfg, seed = 5.0, 1  # args.steps is read at call time: the warm-up round changes it

    def core(batch_latent):
        return lambda: nodes.common_ksampler(model, seed, args.steps, cfg, args.sampler, "normal", cond, neg,
                                             batch_latent)

    def dual(patched, batch_latent):
        return lambda: sample_dual_stream(patched, seed, args.steps, cfg, args.sampler, "normal", cond, neg,
                                          batch_latent)

    if name != "main":
        rows = random_identity(seed=3, n=count, tokens=identity.cond.shape[1], token_dim=identity.cond.shape[2])
        patched = apply_patch(model, adapter, rows, PatchSettings())
        batch = {"samples": latent["samples"].expand(count, -1, -1, -1).contiguous()}
        label = f"sweep of {count} (shared noise)" if name == "sweep" else f"identity batch of {count}"
        return {f"core KSampler batch {count}": core(batch), f"InfiniteIDSampler {label}": dual(patched, batch)}
    full = apply_patch(model, adapter, identity, PatchSettings())
    half = apply_patch(model, adapter, identity, PatchSettings(mix_end_percent=0.5))
    runs = {"core KSampler": core(latent), "InfiniteIDSampler (full mixing)": dual(full, latent),
            "InfiniteIDSampler (mixing first half)": dual(half, latent)}
    if not args.no_reference:
        from reference_dual_stream import Reference, RefSettings

        reference = Reference(model, adapter.kv, identity, RefSettings())
        noise = compat.prepare_noise(latent["samples"], seed)

        def two_pass():
            sigmas = compat.compute_sigmas(model, args.steps, args.sampler, "normal", 1.0)
            mm.load_models_gpu([model])
            with torch.no_grad():
                return reference.sample(noise, latent["samples"], sigmas, args.sampler, cfg, cond, neg)
        runs["two-pass reference"] = two_pass
    return runs


def measure(runs: dict, args, device, clock, repeats: int) -> list[dict]:
    """Warm up every run, then time them interleaved; median seconds, ratio to the first, peaks."""
    import torch

    saved_steps = args.steps
    with torch.inference_mode():
        args.steps = args.warmup_steps or saved_steps  # warm-up: loading, kernels, caches
        for run in runs.values():
            run()
        args.steps = saved_steps
        times = {name: [] for name in runs}
        peaks = {name: 0 for name in runs}
        totals = {name: 0 for name in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                with PeakMemory(device) as mem:
                    start = clock()
                    run()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times[name].append(clock() - start)
                peaks[name] = max(peaks[name], mem.used)
                totals[name] = max(totals[name], getattr(mem, "total", 0))
    base = statistics.median(times[next(iter(runs))])
    base_total = totals[next(iter(runs))]
    return [{"run": name, "seconds": statistics.median(times[name]), "all_seconds": times[name],
             "ratio": statistics.median(times[name]) / base, "peak_mib": peaks[name] / 2**20,
             "peak_total_mib": totals[name] / 2**20,
             "peak_total_ratio": totals[name] / base_total if base_total else None} for name in runs]


def print_report(report: dict) -> None:
    print(f"# {report['host']}")
    print(f"# device {report['device']}, {report['device_name']}; torch {report['torch']}, threads "
          f"{report['torch_threads']}; attention {report['attention']}; model {report['model']}; "
          f"{report['size']}x{report['size']}; {report['steps']} steps {report['sampler']}; cfg {report['cfg']}; "
          f"median of the repeats; {report['clock']}")
    print(f"{'run':46s} {'seconds':>8s} {'ratio':>6s} {'peak MiB':>9s} {'total MiB':>10s}")
    for group in report["groups"]:
        for row in group["runs"]:
            print(f"{row['run']:46s} {row['seconds']:8.3f} {row['ratio']:6.2f} {row['peak_mib']:9.0f} "
                  f"{row['peak_total_mib']:10.0f}")


if __name__ == "__main__":
    main()
