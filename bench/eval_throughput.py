"""Evaluation throughput: pairs per minute of ``python . eval`` generation, by ``--batch``.

    .venv/bin/python bench/eval_throughput.py                              # demo models, CPU
    .venv/bin/python bench/eval_throughput.py --identities 8 --batch 1 4 8 --repeats 3

Generation only (scoring is the same work whatever the batch): the in-process path of
``python . eval --demo`` (``evaluation/generate.py`` ``generate_local``, the host's real
executor, a fresh executor per run so every run loads its models alike) on the demo's
tiny models at its sizes (128 x 128, 8 steps). All runs happen in one process,
interleaved over ``--repeats`` rounds after one warm-up run; the median is reported, in
wall-clock time and in process CPU time (the machine is shared; CPU time is the steadier).
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import sys
import tempfile
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--identities", type=int, default=4, help="demo identities (people)")
    parser.add_argument("--prompts", type=int, default=3, help="prompts of the pack's list")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4], help="--batch values compared")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE")
    args = parser.parse_args()
    host = _boot()

    import logging

    import folder_paths
    from PIL import Image

    from infinite_id.cli.evaluate import DEFAULT_WORKFLOW
    from infinite_id.cli.run_workflow import demo_photo, use_demo_models
    from infinite_id.evaluation import generate, plan
    from infinite_id.evaluation.workflow import PairWorkflow

    logging.getLogger().setLevel(logging.WARNING)
    scratch = Path(tempfile.mkdtemp(prefix="infiniteid-bench-eval-"))
    try:
        people = scratch / "identities"
        people.mkdir()
        for i in range(args.identities):
            Image.fromarray(demo_photo(f"demo_{i}")).save(people / f"demo_{i}.png")
        identities = plan.load_identities(people)
        prompts = plan.load_prompts()[:args.prompts]
        config = plan.Config("raw_photo", DEFAULT_WORKFLOW)
        wf = PairWorkflow(config, tuple(args.set))
        use_demo_models(wf.base, scratch)
        jobs = [generate.Job(p, next(i for i in identities if i.name == p.identity), prompts[p.prompt_index], 42)
                for p in plan.pairs([config], identities, len(prompts))]
        folder_paths.set_input_directory(str(scratch))

        def once(batch: int) -> tuple[float, float]:
            out = scratch / f"out_{batch}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            wall, cpu = time.perf_counter(), time.process_time()
            generate.generate_local(jobs, {config.name: wf}, out, batch=batch)
            return time.perf_counter() - wall, time.process_time() - cpu

        once(args.batch[0])  # warm-up: imports, first model builds, OS caches
        times: dict[int, list[tuple[float, float]]] = {b: [] for b in args.batch}
        for _ in range(args.repeats):
            for batch in args.batch:
                times[batch].append(once(batch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    import torch

    print(f"{host.describe()}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"{len(jobs)} pairs ({args.identities} identities x {args.prompts} prompts), demo models, median of "
          f"{args.repeats}")
    print("| --batch | sampling calls | wall s | pairs/min (wall) | CPU s | pairs/min (CPU) |")
    print("|---|---|---|---|---|---|")
    for batch, runs in times.items():
        wall = statistics.median(t[0] for t in runs)
        cpu = statistics.median(t[1] for t in runs)
        calls = args.prompts * -(-args.identities // batch)
        print(f"| {batch} | {calls} | {wall:.1f} | {60 * len(jobs) / wall:.1f} | {cpu:.1f} | "
              f"{60 * len(jobs) / cpu:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
