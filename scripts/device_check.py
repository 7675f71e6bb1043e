"""The GPU check: the tests that mean something on CUDA, under each memory manager, and the
SDXL-size benchmark, in one command on the device machine.

    .venv/bin/python scripts/device_bundle.py                  # here: builds .device/ (ignored)
    # device tool: run, carry [".device"], timeout_s 570:
    python3 scripts/device_check.py --bundle .device --out "$OUT"
    .venv/bin/python scripts/device_check.py --dry-run --out /tmp/check   # the same path on the CPU, tiny

It installs the carried wheels into a private folder (never into the machine's Python),
points ``COMFYUI_PATH`` at the carried ComfyUI tree, then:

1. records the machine (GPU, driver, torch, CUDA, host);
2. runs ``GPU_TESTS`` once per memory manager (``INFINITEID_VRAM``: dynamic VRAM, the
   default on NVIDIA; estimate-based normal loading; ``--lowvram``; ``--novram``);
3. runs ``bench/dual_stream_speed.py`` on a real-size SDXL U-Net with random weights:
   1024x1024, 30 steps, fp16, interleaved in one process; groups ``main`` (core KSampler,
   full mixing, mixing over the first half, the two-pass reference), ``sweep:11`` and
   ``batch:4``, each against core KSampler at its batch size, with peak GPU memory;
4. writes ``device_check.json`` (everything), ``device_check.md`` (the summary) and
   ``device_check.log`` (every command's output) to ``--out``, after each step, so a
   run cut short still returns what it measured.

It keeps to ``--budget`` seconds (default 450) by giving each step what is left.
``--dry-run`` runs every step on the CPU at tiny sizes with a few tests (the suite's
tests/test_device_check.py does this, so a broken script fails CI, not the device).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("dynamic", "normal", "lowvram", "novram")
# Cheap and device-specific first: a mode stopped by the clock still reports them.
# tests/test_engine_per_run.py last: under dynamic VRAM its first test outlasted the time
# left on the first GPU run (2026-12-04), and a test stopped by --timeout ends its file.
GPU_TESTS = ["tests/test_device.py", "tests/test_engine_dtypes.py", "tests/test_sampling_contract.py",
             "tests/test_any_sampler.py", "tests/test_engine_per_run.py"]
TEST_TIMEOUT_S = 60  # per test, where pytest-timeout is installed (the GPU machine has it)
# Partial loading (--lowvram, --novram) gets the tests whose models it moves: every dtype's
# contract and keys/values on the call's device; the float32 contract runs under the two
# full-loading managers (a device's time is minutes).
PARTIAL_LOADING_TESTS = [GPU_TESTS[0], GPU_TESTS[1], GPU_TESTS[4]]
DRY_TESTS = ["tests/test_device.py"]
BENCH = ["--model", "sdxl", "--size", "1024", "--steps", "30", "--groups", "main,batch:4,sweep:11",
         "--repeats", "3", "--group-repeats", "1", "--warmup-steps", "1"]
DRY_BENCH = ["--model", "tiny", "--size", "64", "--steps", "2", "--groups", "main,batch:2,sweep:3",
             "--repeats", "1", "--warmup-steps", "1"]
# Targets the benchmark is compared with (docs/BENCHMARKS.md): ratio of seconds, or of peak memory.
TARGETS = {"InfiniteIDSampler (full mixing)": 2.1, "InfiniteIDSampler (mixing first half)": 1.5,
           "InfiniteIDSampler sweep of 11 (shared noise)": 1.25}
MEMORY_TARGET = 1.15
SUMMARY = re.compile(r"^(?:=+ )?(\d+ \w+(?:, \d+ \w+)*) in [\d.]+s", re.MULTILINE)


class Check:
    """The report being built, written to disk after every step."""

    def __init__(self, out: Path, budget: float, dry_run: bool) -> None:
        self.out, self.deadline, self.dry_run = out, time.monotonic() + budget, dry_run
        out.mkdir(parents=True, exist_ok=True)
        self.log = (out / "device_check.log").open("w")
        self.report: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dry_run": dry_run,
                             "budget_s": budget, "tests": {}, "bench": None}
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, title: str, cmd: list[str], limit: float, env: dict | None = None) -> tuple[int, str, float]:
        """Run ``cmd`` for at most ``limit`` seconds; its output goes to the log and is returned."""
        self.log.write(f"\n===== {title}: {' '.join(cmd)}\n")
        self.log.flush()
        start = time.monotonic()
        try:
            done = subprocess.run(cmd, cwd=ROOT, env=env or self.env, capture_output=True, text=True,
                                  timeout=max(limit, 1))
            code, text = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as exc:
            code = 124
            text = ((exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or ""))
            text += f"\n[device_check] stopped after {limit:.0f} s"
        seconds = time.monotonic() - start
        self.log.write(text + f"\n===== exit {code} after {seconds:.1f} s\n")
        self.log.flush()
        return code, text, seconds

    def save(self) -> None:
        (self.out / "device_check.json").write_text(json.dumps(self.report, indent=1))
        (self.out / "device_check.md").write_text(summary(self.report))


def set_up(check: Check, bundle: Path) -> None:
    """Carried wheels into a private folder on PYTHONPATH; the carried ComfyUI as the host."""
    wheels = sorted((bundle / "wheels").glob("*.whl")) if bundle.is_dir() else []
    if wheels and not check.dry_run:
        site = Path("/tmp/infiniteid-site")
        code, text, _ = check.run("wheels", [sys.executable, "-m", "pip", "install", "-q", "--no-index",
                                             "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
                                             "--target", str(site), *map(str, wheels)], 120)
        if code:
            raise SystemExit(f"installing the carried wheels failed:\n{text[-2000:]}")
        check.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), check.env.get("PYTHONPATH")]))
    host = bundle / "comfyui"
    if (host / "comfy" / "model_patcher.py").is_file() and not check.dry_run:
        check.env["COMFYUI_PATH"] = str(host.resolve())


def record_machine(check: Check) -> None:
    probe = ("import json, sys, torch, platform; c = torch.cuda.is_available(); print(json.dumps({"
             "'python': platform.python_version(), 'torch': torch.__version__, 'cuda': torch.version.cuda, "
             "'gpu': torch.cuda.get_device_name() if c else None, 'cudnn': torch.backends.cudnn.version() if c "
             "else None, 'gpu_memory_gib': torch.cuda.get_device_properties(0).total_memory / 2**30 if c else None}))")
    code, text, _ = check.run("machine", [sys.executable, "-c", probe], 120)
    machine = json.loads(text.strip().splitlines()[-1]) if code == 0 else {"error": text[-500:]}
    machine["platform"] = platform.platform()
    code, text, _ = check.run("nvidia-smi", ["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                             "--format=csv,noheader"], 30) if not check.dry_run else (1, "", 0)
    machine["nvidia_smi"] = text.strip() if code == 0 else None
    check.report["machine"] = machine
    check.save()


def parse_pytest(text: str) -> dict:
    """Counts from pytest's closing line, the failed tests, and the suite's device header line."""
    counts = {}
    matches = list(SUMMARY.finditer(text))
    match = matches[-1] if matches else None  # the last one is the closing line
    if match:
        for part in match.group(1).split(","):
            number, _, word = part.strip().partition(" ")
            if number.isdigit():
                counts[{"errors": "error", "warnings": "warning"}.get(word, word)] = int(number)
    failed = [line.split(" ", 1)[1] for line in text.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    device = next((line for line in text.splitlines() if line.startswith("device: ")), None)
    host = next((line for line in text.splitlines() if line.startswith("ComfyUI host: ")), None)
    return {"counts": counts, "failed": failed, "device": device, "host": host}


def timeout_options() -> list[str]:
    """A hung test fails alone instead of stopping every test after it (pytest-timeout)."""
    import importlib.util

    if importlib.util.find_spec("pytest_timeout") is None:
        return []
    return ["-p", "pytest_timeout", f"--timeout={TEST_TIMEOUT_S}"]


def run_tests(check: Check, tests: list[str], modes: list[str]) -> None:
    for i, mode in enumerate(modes):
        share = check.left() * (0.55 if not check.dry_run else 1.0) / (len(modes) - i)
        if share < 20:
            check.report["tests"][mode] = {"skipped": "no time left"}
            continue
        # Only the suite's own fixtures: the machine's pytest plugins (jaxtyping, hypothesis...) stay out.
        env = dict(check.env, INFINITEID_VRAM=mode, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
        code, text, seconds = check.run(f"tests, INFINITEID_VRAM={mode}", [
            sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "--tb=line", *timeout_options(),
            *(PARTIAL_LOADING_TESTS if mode in ("lowvram", "novram") and tests == GPU_TESTS else tests)], share, env)
        result = parse_pytest(text)
        result.update(exit=code, seconds=round(seconds, 1))
        if code == 124:  # no closing line: count the progress characters
            progress = "".join(line for line in text.splitlines() if re.fullmatch(r"[.FEsx]+(\s+\[\s*\d+%\])?", line))
            result["counts"] = {"passed": progress.count("."), "failed": progress.count("F"),
                                "error": progress.count("E"), "skipped": progress.count("s")}
            result["stopped"] = f"stopped by the clock after {share:.0f} s"
        check.report["tests"][mode] = result
        check.save()


def run_bench(check: Check, bench_args: list[str]) -> None:
    limit = check.left() - 5
    if limit < 30:
        check.report["bench"] = {"skipped": "no time left"}
        return
    path = check.out / "bench.json"
    # Estimate-based loading: the benchmark's peak memory is PyTorch's allocator's, which
    # dynamic VRAM's own allocator would bypass for the weights.
    env = dict(check.env, INFINITEID_VRAM="normal" if not check.dry_run else "default")
    code, text, seconds = check.run("benchmark", [sys.executable, "bench/dual_stream_speed.py", *bench_args,
                                                  "--json", str(path)], limit, env)
    bench = json.loads(path.read_text()) if path.is_file() else {}
    bench.update(exit=code, seconds=round(seconds, 1), args=bench_args)
    if code:
        bench["error"] = text[-1500:]
    check.report["bench"] = bench
    path.unlink(missing_ok=True)
    check.save()


def summary(report: dict) -> str:
    """The Markdown summary: machine, tests per memory manager, benchmark against the targets."""
    machine = report.get("machine", {})
    lines = [f"# Infinite-ID GPU check, {report['date']}{' (dry run on the CPU)' if report['dry_run'] else ''}", "",
             f"- GPU: {machine.get('gpu') or 'none'} ({machine.get('nvidia_smi') or 'no nvidia-smi'})",
             f"- Python {machine.get('python')}, torch {machine.get('torch')}, CUDA {machine.get('cuda')}, "
             f"cuDNN {machine.get('cudnn')}", "", "## Tests per memory manager", "",
             "| INFINITEID_VRAM | passed | failed | skipped | seconds | device line |", "|---|---|---|---|---|---|"]
    for mode, result in report["tests"].items():
        if "counts" not in result:
            lines.append(f"| {mode} | {result.get('skipped', '?')} | | | | |")
            continue
        c = result["counts"]
        note = " ".join(filter(None, [result.get("device"), result.get("stopped")]))
        lines.append(f"| {mode} | {c.get('passed', 0)} | {c.get('failed', 0) + c.get('error', 0)} | "
                     f"{c.get('skipped', 0)} | {result['seconds']} | {note} |")
    failures = [(mode, f) for mode, result in report["tests"].items() for f in result.get("failed", [])]
    if failures:
        lines += ["", "Failed:", ""] + [f"- `{mode}`: {f}" for mode, f in failures]
    bench = report.get("bench") or {}
    lines += ["", "## Benchmark", ""]
    if not bench.get("groups"):
        lines.append(f"not run: {bench.get('skipped') or bench.get('error', '?')}")
    else:
        lines += [f"{bench.get('device_name')}; model {bench.get('model')}, {bench.get('size')}x{bench.get('size')}, "
                  f"{bench.get('steps')} steps {bench.get('sampler')}, {bench.get('clock')}", "",
                  "| run | s/image | ratio | target | peak MiB | peak / core | memory target |",
                  "|---|---|---|---|---|---|---|"]
        for group in bench["groups"]:
            rows = max(int(group["group"].partition(":")[2] or 1), 1)
            for row in group["runs"]:
                target = TARGETS.get(row["run"])
                verdict = "" if target is None else f"{target} {'met' if row['ratio'] <= target else 'MISSED'}"
                mem = row.get("peak_total_ratio")
                mem_verdict = "" if mem is None or row["run"].startswith("core") else \
                    f"{MEMORY_TARGET} {'met' if mem <= MEMORY_TARGET else 'MISSED'}"
                lines.append(f"| {row['run']} | {row['seconds'] / rows:.2f} | {row['ratio']:.2f} | {verdict} | "
                             f"{row['peak_total_mib']:.0f} | {mem if mem is None else round(mem, 2)} | {mem_verdict} |")
        if bench.get("exit"):
            lines += ["", f"The benchmark stopped early (exit {bench['exit']})."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "device_check_out")))
    parser.add_argument("--bundle", type=Path, default=ROOT / ".device")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for the whole check")
    parser.add_argument("--dry-run", action="store_true", help="the whole path on the CPU at tiny sizes")
    parser.add_argument("--modes", default=None, help=f"comma-separated memory managers (default {','.join(MODES)})")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    check = Check(args.out, args.budget, args.dry_run)
    set_up(check, args.bundle)
    record_machine(check)
    modes = args.modes.split(",") if args.modes else list(MODES)
    if args.dry_run and not args.modes:
        modes = ["normal", "lowvram"]  # dynamic VRAM needs an NVIDIA GPU
    if not args.skip_tests:
        run_tests(check, DRY_TESTS if args.dry_run else GPU_TESTS, modes)
    if not args.skip_bench:
        run_bench(check, DRY_BENCH if args.dry_run else BENCH)
    check.save()
    print(summary(check.report))
    failed = any(r.get("exit") not in (0, None) for r in check.report["tests"].values())
    bench_failed = bool(check.report["bench"] and check.report["bench"].get("exit"))
    sys.exit(1 if failed or bench_failed else 0)


if __name__ == "__main__":
    main()
