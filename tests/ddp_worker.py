"""One rank of a data-parallel training run for tests/test_training_ddp.py, started by torchrun.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_worker.py ARGS

Loads the pack into the real host as the CLI does, builds the tiny models (the same
seeds as the tests' in-process runs), reads the already-built cache and trains with the
``Trainer`` of ``training/trainer.py`` under the ``DistContext`` torchrun's variables
describe. ``--per-rank-output`` gives every rank its own output folder, so that a test
can see that ranks other than 0 write nothing (their folder is never created).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

PACK = Path(__file__).resolve().parent.parent


def _boot() -> None:
    spec = importlib.util.spec_from_file_location("infinite_id_bootstrap", PACK / "host" / "locate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.import_host()
    module.load_pack()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--accumulate", type=int, default=1)
    p.add_argument("--save-every", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--per-rank-output", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _boot()
    import torch

    torch.set_num_threads(1)
    from infinite_id.demo.tiny_clip_text import build_tiny_sdxl_clip
    from infinite_id.demo.tiny_sdxl import build_tiny_sdxl
    from infinite_id.demo.tiny_vae import build_tiny_vae
    from infinite_id.training.cache import CacheSettings, build_cache, cached_uncond_clip
    from infinite_id.training.dataset import scan_photo_folder
    from infinite_id.training.distributed import from_environment
    from infinite_id.training.trainer import Trainer, TrainingModels

    sys.path.insert(0, str(PACK / "tests"))
    from test_training_ddp import ddp_config

    dist = from_environment()
    try:
        settings = CacheSettings(resolution=64, models="demo")
        data = build_cache(scan_photo_folder(args.data), args.cache, None, settings, dist=dist)
        uncond = cached_uncond_clip(args.cache, None, settings, dist)
        models = TrainingModels(build_tiny_sdxl(0), build_tiny_vae(0), build_tiny_sdxl_clip(0), "tiny", "demo-hash")
        output = args.output / f"rank{dist.rank}" if args.per_rank_output else args.output
        config = ddp_config(steps=args.steps, batch_size=args.batch_size, accumulate=args.accumulate,
                            save_every=args.save_every)
        trainer = Trainer(models, data, uncond, config, output, holdout=[3], dist=dist)
        if args.resume:
            trainer.resume()
        trainer.run()
    finally:
        dist.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
