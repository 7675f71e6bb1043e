"""``train``: identity-enhanced training of a native adapter (``training/``).

Loads the models with ComfyUI's own loaders from the usual folders (an SDXL checkpoint
from ``models/checkpoints``, CLIP vision from ``models/clip_vision``, insightface from
``models/insightface``), preprocesses the photo folder into a disk cache, then trains.
``--demo`` uses the tiny built-in models instead, to see the whole path work.

Under ``torchrun`` (``torchrun --nproc-per-node N <pack> train ...``) the same command
runs data-parallel: the ranks split the preprocessing and the batches, rank 0 writes
(``training/distributed.py``). ``train group`` sorts a pile of photos into the
``DATA/<person>/`` layout by face recognition (``training/grouping.py``).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Small mappers for --demo unless sizes are given (the tiny U-Net reads 64-wide tokens).
DEMO_MAPPER = {"face_hidden": 64, "mapper_dim": 64, "mapper_depth": 1, "mapper_heads": 2, "mapper_dim_head": 32}
DEMO_RESOLUTION = 64


def add_parser(commands: Any) -> None:
    from ..training.trainer import PRECISIONS, TrainConfig

    d = TrainConfig()
    p = commands.add_parser("train", help="train a native Infinite-ID adapter on a folder of photos",
                            description="Data: DATA/<person>/<photo>, two or more photos of each person. "
                                        "'train group' sorts a pile of photos into that layout. Data-parallel: "
                                        "torchrun --nproc-per-node N <pack> train ...")
    p.add_argument("--data", type=Path, default=None, help="folder with one subfolder of photos per person")
    p.add_argument("--output", type=Path, default=None,
                   help="run folder: checkpoints, loss.csv, previews, training_state.pt (default output/training/NAME)")
    p.add_argument("--cache", type=Path, default=None,
                   help="preprocessing cache (default DATA/.cache when 'train group' made it, else OUTPUT/cache)")
    _model_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --output from training_state.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in an --output that holds a run: deletes its checkpoints, state, loss.csv and "
                        "previews (not the cache)")
    p.add_argument("--init", default=None, help="warm start from this adapter in models/infiniteid "
                   "(e.g. ip-adapter-faceid-plusv2_sdxl.bin)")
    p.add_argument("--preview-person", default=None,
                   help="person subfolder held out from training and used for previews (default: the last one "
                        "when there are three or more people)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--accumulate", type=int, default=d.accumulate, help="gradient accumulation steps")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--identity-drop", type=float, default=d.identity_drop,
                   help="share of samples trained with the negative identity (for CFG)")
    p.add_argument("--precision", choices=list(PRECISIONS), default=d.precision, help="mixed precision")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=d.gradient_checkpointing)
    p.add_argument("--resolution", type=int, default=None, help=f"target size (default {d.resolution}; "
                   f"--demo {DEMO_RESOLUTION})")
    p.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--save-dtype", choices=["fp16", "bf16", "fp32"], default=d.save_dtype)
    p.add_argument("--preview-every", type=int, default=d.preview_every, help="preview every N steps (0: never)")
    p.add_argument("--preview-prompt", default=d.preview_prompt)
    p.add_argument("--preview-steps", type=int, default=d.preview_steps)
    p.add_argument("--preview-cfg", type=float, default=d.preview_cfg)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--name", default=d.name, help="file name of the adapter")
    for field in ("face_tokens", "clip_tokens", "face_hidden", "mapper_dim", "mapper_depth", "mapper_heads",
                  "mapper_dim_head"):
        p.add_argument("--" + field.replace("_", "-"), type=int, default=None,
                       help=f"mapper size (default {getattr(d, field)})")
    p.set_defaults(handler=train_command)
    sub = p.add_subparsers(dest="train_command", metavar="group")
    g = sub.add_parser("group", help="sort a pile of photos into one folder per person by face recognition",
                       description="Detects and embeds every face once (into the training cache), groups photos "
                                   "whose ArcFace embeddings are at least --threshold similar, writes "
                                   "SORTED/<person>/ and a report (group_report.txt / .json).")
    g.add_argument("--photos", type=Path, required=True, help="folder of photos, any layout (subfolders searched)")
    g.add_argument("--output", type=Path, required=True, help="SORTED folder: one subfolder per person")
    g.add_argument("--cache", type=Path, default=None,
                   help="preprocessing cache (default SORTED/.cache, which 'train --data SORTED' then reuses)")
    _model_arguments(g)
    g.add_argument("--resolution", type=int, default=None, help="training resolution the cache is made for "
                   f"(default {d.resolution}; --demo {DEMO_RESOLUTION}); use the value you will train with")
    g.add_argument("--threshold", type=float, default=None,
                   help="ArcFace cosine similarity from which two photos are the same person (default 0.28, "
                        "insightface's same-person value; with --demo 0.8, which fits the tiny demo recognizer)")
    g.add_argument("--mode", choices=["symlink", "hardlink", "copy"], default="symlink",
                   help="how photos are placed in SORTED (default symlink)")
    g.add_argument("--chunk-size", type=int, default=2048, help="query rows per nearest-neighbour chunk")
    g.add_argument("--overwrite", action="store_true", help="replace a grouping made with other settings")
    g.set_defaults(handler=train_command)


def _model_arguments(p: Any) -> None:
    p.add_argument("--checkpoint", default=None, help="SDXL checkpoint file name in models/checkpoints")
    p.add_argument("--clip-vision", default="CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
                   help="CLIP vision file name in models/clip_vision")
    p.add_argument("--face-analysis", default="antelopev2", help="insightface pack in models/insightface/models")
    p.add_argument("--provider", default="CPU", help="onnxruntime provider for insightface (CPU, CUDA, ROCM, CoreML)")
    p.add_argument("--demo", action="store_true", help="tiny built-in models instead of real weights")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _find(folder: str, name: str | None, what: str) -> str:
    import folder_paths

    from ..host.folders import missing_file_message, register_folders

    register_folders()
    if not name:
        raise FileNotFoundError(f"--{what}: give a file name from {', '.join(folder_paths.get_folder_paths(folder))}")
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise FileNotFoundError(missing_file_message(name, ", ".join(folder_paths.get_folder_paths(folder))))
    return path


def load_models(args: argparse.Namespace, need_encoders: bool) -> tuple[Any, Any, Any, Any, Any, str, str]:
    """``(model, clip, vae, clip_vision, face_analysis, base name, base hash)`` from files or the demo."""
    if args.demo:
        from ..demo.nodes import _checkpoint, _clip_vision, _face_analysis

        model, clip, vae = _checkpoint(0)
        encoders = (_clip_vision(), _face_analysis(640)) if need_encoders else (None, None)
        return (model, clip, vae, *encoders, "tiny demo SDXL (seed 0)", "demo")
    import comfy.clip_vision
    import comfy.sd
    import folder_paths

    from ..identity.face_analysis import load_face_analysis

    checkpoint = _find("checkpoints", args.checkpoint, "checkpoint")
    clip_vision = face_analysis = None
    if need_encoders:
        clip_vision = comfy.clip_vision.load(_find("clip_vision", args.clip_vision, "clip-vision"))
        face_analysis = load_face_analysis(args.face_analysis, args.provider)
    log.info("hashing %s (recorded in the adapter's metadata)", os.path.basename(checkpoint))
    base_hash = file_sha256(checkpoint)
    loaded = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=True, output_clip=True,
                                                   embedding_directory=folder_paths.get_folder_paths("embeddings"))
    model, clip, vae = loaded[:3]
    return model, clip, vae, clip_vision, face_analysis, os.path.basename(checkpoint), base_hash


def make_config(args: argparse.Namespace) -> Any:
    from ..training.trainer import TrainConfig

    sizes = {f: getattr(args, f) for f in ("face_tokens", "clip_tokens", "face_hidden", "mapper_dim", "mapper_depth",
                                           "mapper_heads", "mapper_dim_head")}
    if args.demo:
        sizes = {k: v if v is not None else DEMO_MAPPER.get(k) for k, v in sizes.items()}
    sizes = {k: v for k, v in sizes.items() if v is not None}
    resolution = args.resolution or (DEMO_RESOLUTION if args.demo else TrainConfig.resolution)
    return TrainConfig(steps=args.steps, batch_size=args.batch_size, accumulate=args.accumulate, lr=args.lr,
                       weight_decay=args.weight_decay, identity_drop=args.identity_drop, precision=args.precision,
                       gradient_checkpointing=args.gradient_checkpointing, resolution=resolution,
                       save_every=args.save_every, save_dtype=args.save_dtype, preview_every=args.preview_every,
                       preview_prompt=args.preview_prompt, preview_steps=args.preview_steps,
                       preview_cfg=args.preview_cfg, seed=args.seed, name=args.name, **sizes)


def preview_person(people: list[str], chosen: str | None) -> tuple[int | None, bool]:
    """Index of the preview person and whether it is held out of training."""
    if chosen is not None:
        if chosen not in people:
            raise ValueError(f"--preview-person: no usable person '{chosen}' (people: {', '.join(people)})")
        return people.index(chosen), True
    if len(people) >= 3:
        return len(people) - 1, True
    log.warning("fewer than three people: previews show '%s', who is also trained on (not held out)", people[0])
    return 0, False


def models_id(args: argparse.Namespace) -> str:
    return "demo" if args.demo else f"{args.checkpoint}|{args.clip_vision}|{args.face_analysis}"


def default_cache(data: Path, output: Path) -> Path:
    """``DATA/.cache`` when ``train group`` wrote one there (nothing is processed twice), else ``OUTPUT/cache``."""
    from ..training.grouping import REPORT_JSON

    grouped = data / ".cache"
    return grouped if grouped.is_dir() and (data / REPORT_JSON).is_file() else output / "cache"


def train_command(args: argparse.Namespace) -> int:
    from ..training.dataset import TrainingDataError
    from ..training.distributed import from_environment
    from ..training.trainer import TrainingError

    dist = None
    try:
        dist = from_environment()
        if getattr(args, "train_command", None) == "group":
            return _group(args, dist)
        return _train(args, dist)
    except (TrainingDataError, FileNotFoundError, FileExistsError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    except TrainingError as exc:
        log.error("%s", exc)
        return 1
    finally:
        if dist is not None:
            dist.close()


def _train(args: argparse.Namespace, dist: Any) -> int:
    from ..training.cache import CacheSettings, Preprocessor, build_cache, cached_uncond_clip, needs_models, photo_keys
    from ..training.dataset import scan_photo_folder
    from ..training.preview import Previewer
    from ..training.state import prepare_output
    from ..training.trainer import Trainer, TrainingModels

    if args.data is None:
        raise ValueError("train: give --data DATA/ (one subfolder of photos per person), or sort a pile of photos "
                         "first with 'train group --photos PILE/ --output DATA/'")
    config = make_config(args)
    folder = scan_photo_folder(args.data)
    output = args.output or Path("output") / "training" / config.name
    prepare_output(output, config.name, args.resume, args.overwrite, dist.is_main)
    dist.barrier()
    cache_dir = args.cache or default_cache(args.data, output)
    settings = CacheSettings(resolution=config.resolution, models=models_id(args))
    keys = photo_keys(folder, settings, dist)
    need = dist.any(needs_models(keys, cache_dir, settings))
    model, clip, vae, clip_vision, face_analysis, base, base_hash = load_models(args, need)
    pre = Preprocessor(face_analysis, clip_vision, vae, settings) if need else None
    data = build_cache(folder, cache_dir, pre, settings, keys, dist)
    uncond = cached_uncond_clip(cache_dir, clip_vision, settings, dist)
    people = [data.people[i] for i in sorted({p.person for p in data.photos})]
    index, held_out = preview_person(people, args.preview_person)
    person = data.people.index(people[index])
    init = None
    if args.init:
        from ..adapter.loader import load_adapter_file

        init = load_adapter_file(_find("infiniteid", args.init, "init"))
    trainer = Trainer(TrainingModels(model, vae, clip, base, base_hash), data, uncond, config, output,
                      holdout=[person] if held_out else [], init=init, dist=dist)
    if config.preview_every and dist.is_main:
        photo = next(p for p in data.photos if p.person == person)
        trainer.preview = Previewer(model, clip, vae, photo, uncond, output, config.preview_prompt,
                                    config.preview_steps, config.preview_cfg, config.resolution, config.seed)
    if args.resume:
        trainer.resume()
    final = trainer.run()
    log.info("trained adapter: %s (copy it to models/infiniteid/ to use it in ComfyUI)", final)
    return 0


def _group(args: argparse.Namespace, dist: Any) -> int:
    from ..training.cache import (
        CacheSettings,
        Preprocessor,
        cache_sources,
        cached_uncond_clip,
        needs_models,
        source_keys,
    )
    from ..training.grouping import (
        BORDERLINE_MARGIN,
        REPORT_TEXT,
        check_grouping,
        check_libraries,
        default_threshold,
        group_photos,
        place_photos,
        prepare_group_output,
        report,
        scan_pile,
        write_report,
    )

    check_libraries()
    threshold = default_threshold(args.demo) if args.threshold is None else args.threshold
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"group: --threshold must be between 0 and 1 (ArcFace cosine similarity), got {threshold}")
    if args.chunk_size < 1:
        raise ValueError("group: --chunk-size must be at least 1")
    resolution = args.resolution or (DEMO_RESOLUTION if args.demo else 1024)
    if resolution % 8:
        raise ValueError(f"group: --resolution must be a multiple of 8 (the VAE's factor), got {resolution}")
    if args.threshold is None:
        log.info("group: threshold %g (the default %s; --threshold changes it)", threshold,
                 "for the tiny demo recognizer" if args.demo else "for ArcFace, insightface's same-person value")
    else:
        log.info("group: threshold %g (--threshold)", threshold)
    output: Path = args.output
    photos = scan_pile(args.photos, exclude=output)
    settings = CacheSettings(resolution=resolution, models=models_id(args))
    recorded = {"threshold": threshold, "borderline_from": round(max(threshold - BORDERLINE_MARGIN, 0.0), 6),
                "mode": args.mode, "models": settings.models, "resolution": resolution}
    prepare_group_output(output, recorded, args.overwrite, dist.is_main)
    cache_dir = args.cache or output / ".cache"
    keys = source_keys(photos, settings, dist)
    need = dist.any(needs_models(keys, cache_dir, settings))
    if need:
        _, _, vae, clip_vision, face_analysis, _, _ = load_models(args, True)
        pre = Preprocessor(face_analysis, clip_vision, vae, settings)
    else:
        clip_vision, pre = None, None
    results, new = cache_sources(photos, cache_dir, pre, keys, dist, desc="detecting and embedding faces")
    cached_uncond_clip(cache_dir, clip_vision, settings, dist)  # so that training loads no encoder
    log.info("group: %d photos (%d newly processed)", len(photos), new)
    if not dist.is_main:
        dist.barrier()
        return 0
    try:
        grouping = group_photos(results, threshold, args.chunk_size)
        data = report(grouping, args.photos, recorded)
        output.mkdir(parents=True, exist_ok=True)
        write_report(data, output)
        check_grouping(grouping, len(photos))
        written = place_photos(grouping, args.photos, output, args.mode)
    finally:
        dist.barrier()
    log.info("group: %d people (%d photos, %d placed now as %ss) in %s; %d alone, %d without a usable face, %d with "
             "several faces, %d unreadable, %d borderline pairs: see %s", data["people_found"], data["photos_sorted"],
             written, args.mode, output, len(grouping.single), len(grouping.no_face), len(grouping.several_faces),
             len(grouping.unreadable), len(grouping.borderline), output / REPORT_TEXT)
    log.info("next: train --data %s (the cache in %s is reused)", output, cache_dir)
    return 0
