"""Speed and peak memory of dual-stream sampling, as ratios to core KSampler.

    .venv/bin/python bench/dual_stream_speed.py                    # tiny model, CPU
    .venv/bin/python bench/dual_stream_speed.py --model sdxl03 --size 576 --steps 6   # SDXL-proportioned, CPU
    .venv/bin/python bench/dual_stream_speed.py --model sdxl --size 1024 --steps 30   # GPU

All runs happen in one process on the same model and settings, interleaved over
``--repeats`` rounds, and the median is reported: machines are noisy, ratios within one
process are what can be compared. ``--model sdxl`` builds a real-size SDXL U-Net with
random weights (no download) and a random adapter of FaceID-Plus-v2's shape.
"""
from __future__ import annotations

import argparse
import importlib.util
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
    """Peak CUDA allocation, or peak process RSS sampled every 5 ms on the CPU."""

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
            self.used = torch.cuda.max_memory_allocated() - self.base
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
                             "with batch N")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="steps of the warm-up round (default: --steps); 1 is enough for loading and caches")
    parser.add_argument("--attention", choices=["host", "pytorch"], default="pytorch",
                        help="pytorch: every run uses torch SDPA, as ComfyUI does on GPUs (the CPU default, "
                             "sub-quadratic attention, is far slower and would dominate the ratios)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(ROOT / "tests"))
    info = _boot()

    import comfy.model_management as mm
    import torch

    import nodes
    from infinite_id.model_patch.install import PatchSettings, apply_patch
    from infinite_id.host import compat
    from infinite_id.sampling.dual_stream import sample_dual_stream

    if args.attention == "pytorch":
        import comfy.ldm.modules.attention as attention

        attention.optimized_attention = attention.attention_pytorch
        if hasattr(attention, "optimized_attention_masked"):
            attention.optimized_attention_masked = attention.attention_pytorch
    model, adapter, identity, cond, neg, latent = build(args)
    full = apply_patch(model, adapter, identity, PatchSettings())
    half = apply_patch(model, adapter, identity, PatchSettings(mix_end_percent=0.5))
    cfg, seed = 5.0, 1

    steps = {"n": args.steps}

    def core():
        return nodes.common_ksampler(model, seed, steps["n"], cfg, args.sampler, "normal", cond, neg, latent)

    def dual(patched):
        return lambda: sample_dual_stream(patched, seed, steps["n"], cfg, args.sampler, "normal", cond, neg, latent)

    runs = {"core KSampler": core, "InfiniteIDSampler (full mixing)": dual(full),
            "InfiniteIDSampler (mixing first half)": dual(half)}
    if args.sweep:
        from infinite_id.demo.tiny_identity import random_identity

        sweep_identity = random_identity(seed=3, n=args.sweep, tokens=identity.cond.shape[1],
                                         token_dim=identity.cond.shape[2])
        sweep_model = apply_patch(model, adapter, sweep_identity, PatchSettings())
        batch = {"samples": latent["samples"].expand(args.sweep, -1, -1, -1).contiguous()}
        runs = {
            "core KSampler": lambda: nodes.common_ksampler(model, seed, steps["n"], cfg, args.sampler, "normal",
                                                           cond, neg, batch),
            f"InfiniteIDSampler sweep of {args.sweep} (shared noise)": lambda: sample_dual_stream(
                sweep_model, seed, steps["n"], cfg, args.sampler, "normal", cond, neg, batch),
        }
    if not args.no_reference and not args.sweep:
        from reference_dual_stream import Reference, RefSettings

        reference = Reference(model, adapter.kv, identity, RefSettings())
        noise = compat.prepare_noise(latent["samples"], seed)

        def two_pass():
            sigmas = compat.compute_sigmas(model, steps["n"], args.sampler, "normal", 1.0)
            mm.load_models_gpu([model])
            with torch.no_grad():
                return reference.sample(noise.to(mm.get_torch_device()), latent["samples"], sigmas, args.sampler,
                                        cfg, cond, neg)
        runs["two-pass reference"] = two_pass

    device = mm.get_torch_device()
    clock = time.process_time if (args.clock or ("wall" if device.type == "cuda" else "cpu")) == "cpu" else \
        time.perf_counter
    with torch.inference_mode():
        steps["n"] = args.warmup_steps or args.steps
        for run in runs.values():  # warm-up: loading, kernels, caches
            run()
        steps["n"] = args.steps
        times = {name: [] for name in runs}
        peaks = {name: 0 for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                with PeakMemory(device) as mem:
                    start = clock()
                    run()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times[name].append(clock() - start)
                peaks[name] = max(peaks[name], mem.used)
    base = statistics.median(times["core KSampler"])
    print(f"# {info.describe()}")
    print(f"# device {device}, {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}; "
          f"torch threads {torch.get_num_threads()}; attention {args.attention}; model {args.model}; "
          f"{args.size}x{args.size}; "
          f"{args.steps} steps {args.sampler}; cfg {cfg}; median of {args.repeats}; "
          f"{'process CPU time' if clock is time.process_time else 'wall time'}")
    print(f"{'run':40s} {'seconds':>8s} {'ratio':>6s} {'peak MiB':>9s}")
    for name in runs:
        t = statistics.median(times[name])
        print(f"{name:40s} {t:8.3f} {t / base:6.2f} {peaks[name] / 2**20:9.0f}")


if __name__ == "__main__":
    main()
