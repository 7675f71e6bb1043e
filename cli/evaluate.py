"""``eval``: the paper's benchmark for your settings (docs/EVALUATION.md).

Generates one image per (configuration, identity, prompt) -- in this process or on
ComfyUI servers, up to ``--batch`` identities of one prompt per sampling call -- skipping
pairs already made, then scores every image (M_FaceNet or
ArcFace, CLIP-I, CLIP-T, optional FID/LPIPS on face crops) and writes the reports.
``--images`` scores a folder made elsewhere instead of generating.
"""
from __future__ import annotations

import argparse
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PACK_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKFLOW = PACK_ROOT / "workflows" / "api" / "raw_photo.json"
# Identities per sampling call: 4 identity rows + 1 shared text row per guidance side, a
# moderate SDXL batch. A batch that runs out of memory is split in halves and the run goes
# on with the smaller size, so a larger value costs one failed try on a smaller GPU.
DEFAULT_BATCH = 4


def add_parser(commands: Any) -> None:
    from ..evaluation.backbones import CLIP_DEFAULT, FACENET_FILE
    from ..evaluation.scoring import BACKBONES

    p = commands.add_parser("eval", help="benchmark identity fidelity and prompt following (M_FaceNet, CLIP-I/T)")
    p.add_argument("--identities", type=Path, help="folder with one photo per person (or one subfolder per person)")
    p.add_argument("--prompts", type=Path, default=None, help="prompt list, one per line (default: the pack's 30)")
    p.add_argument("--limit-prompts", type=int, default=None, metavar="N", help="use only the first N prompts")
    p.add_argument("--workflow", type=Path, action="append", default=[],
                   help="a configuration: workflow JSON (repeat to compare several; default raw_photo)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:NODE.INPUT=VALUE[,...]",
                   help="a configuration: the first workflow with these overrides, e.g. "
                        "'mutual:InfiniteIDApply.attention_mode=mutual'")
    p.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="override an input in every configuration (as in 'run')")
    p.add_argument("--seed", type=int, default=42,
                   help="sampler seed of every pair (all identities of a prompt share it: a controlled comparison)")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, metavar="N",
                   help=f"identities of one prompt per sampling call (default {DEFAULT_BATCH}; 1: one pair per call). "
                        f"Same images as one at a time")
    p.add_argument("--server", action="append", default=[], metavar="URL",
                   help="generate on this ComfyUI server (repeat to spread pairs over several)")
    p.add_argument("--job-timeout", type=float, default=900.0,
                   help="seconds one pair may take on a server (a batch of n: n times as long)")
    p.add_argument("--images", type=Path, default=None,
                   help="score existing images laid out as DIR/<config>/<identity>/<NN>.png (no generation)")
    p.add_argument("--output", type=Path, default=Path("output") / "eval", help="report folder (also the resume state)")
    p.add_argument("--backbone", choices=BACKBONES, default="facenet", help="identity backbone (paper: facenet)")
    p.add_argument("--facenet-model", default=FACENET_FILE, help="file in models/facenet/")
    p.add_argument("--clip-model", default=CLIP_DEFAULT, help="folder or .safetensors in models/clip/")
    p.add_argument("--face-analysis", default="antelopev2", help="insightface pack in models/insightface/models/")
    p.add_argument("--fid", action="store_true", help="add FID of generated vs reference faces")
    p.add_argument("--fid-model", default=None, help="Inception weights in models/fid/ (see docs/EVALUATION.md)")
    p.add_argument("--lpips", action="store_true", help="add LPIPS of each generated face to its reference face")
    p.add_argument("--lpips-model", default=None, help="AlexNet weights in models/lpips/ (see docs/EVALUATION.md)")
    p.add_argument("--demo", action="store_true", help="tiny built-in models and identities (shows the path working)")
    p.set_defaults(handler=evaluate_command)


def evaluate_command(args: argparse.Namespace) -> int:
    from ..evaluation.remote import PromptFailed, ServerDown
    from ..host.executor import PromptError

    try:
        return _evaluate(args)
    except (ValueError, OSError, ServerDown, PromptFailed) as exc:
        log.error("%s", exc)
        return 2
    except PromptError as exc:
        log.error("%s\nFix it and run the same command again: finished pairs are kept.", exc)
        return 1


def _evaluate(args: argparse.Namespace) -> int:
    from ..evaluation import plan

    out = Path(args.output)
    prompts = plan.load_prompts(args.prompts)
    if args.limit_prompts is not None:
        if args.limit_prompts < 1:
            raise ValueError("--limit-prompts: must be at least 1")
        prompts = prompts[:args.limit_prompts]
    # Optional libraries first: nothing may fail for a missing one after hours of work.
    draw_scatter = report_needs()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--output {out}: cannot use it as the report folder ({exc.strerror or exc})") from None
    with tempfile.TemporaryDirectory(prefix="infiniteid-eval-") as scratch:
        identities = _identities(args, Path(scratch))
        scorer, restore = _scorer(args, out)  # before generating: a missing file must not wait hours
        scorer.draw_scatter = draw_scatter
        try:
            if args.images is not None:
                configs, found, _ = plan.scan_images(args.images)
                unknown = sorted(set(found) - {i.name for i in identities})
                if unknown:
                    log.warning("--images: no reference photo in --identities for %s; their images are not scored",
                                ", ".join(unknown))
                images_root = Path(args.images)
            else:
                configs = _generate(args, out, identities, prompts, Path(scratch))
                if configs is None:
                    return 1
                images_root = out / "images"
            return _report(args, out, images_root, configs, identities, prompts, scorer)
        finally:
            restore()


def report_needs() -> bool:
    """Whether the scatter plot can be drawn (matplotlib); said at the start, not at the end."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        log.warning("matplotlib is not installed (%s): the report will have no scatter.png (pip install "
                    "matplotlib to get it); everything else is written", exc)
        return False
    return True


def _identities(args: argparse.Namespace, scratch: Path) -> list:
    from ..evaluation import plan

    if args.identities is not None:
        return plan.load_identities(args.identities)
    if not args.demo:
        raise ValueError("--identities: required (a folder with one photo per person)")
    from PIL import Image

    from .run_workflow import demo_photo

    folder = scratch / "identities"
    folder.mkdir()
    for name in ("demo_a", "demo_b"):
        Image.fromarray(demo_photo(name)).save(folder / f"{name}.png")
    return plan.load_identities(folder)


def _generate(args, out: Path, identities, prompts, scratch: Path) -> list[str] | None:
    from ..evaluation import generate, plan
    from ..evaluation.workflow import PairWorkflow
    from .run_workflow import use_demo_models

    if args.batch < 1:
        raise ValueError(f"--batch: must be at least 1 (1 makes one pair per sampling call), got {args.batch}")
    configs = plan.parse_configs(args.workflow, args.variant, DEFAULT_WORKFLOW)
    workflows = {}
    for config in configs:
        wf = PairWorkflow(config, tuple(args.set))
        if args.demo:
            use_demo_models(wf.base, scratch)  # loader swap and small sizes; its reference photos are not used
        elif not args.server:
            from ..host.models import missing_models

            missing = missing_models(wf.base)
            if missing:
                raise ValueError(f"configuration {config.name} needs model files that are not installed:\n  "
                                 + "\n  ".join(missing))
        workflows[config.name] = wf
    all_pairs = plan.pairs(configs, identities, len(prompts))
    todo = plan.pending(out, all_pairs)
    by_name = {i.name: i for i in identities}
    jobs = [generate.Job(p, by_name[p.identity], prompts[p.prompt_index], args.seed) for p in todo]
    log.info("%d pairs (%d configurations x %d identities x %d prompts); %d already made, %d to generate",
             len(all_pairs), len(configs), len(identities), len(prompts), len(all_pairs) - len(todo), len(jobs))
    if jobs and args.server:
        outcome = generate.generate_remote(jobs, workflows, out, args.server, job_timeout=args.job_timeout,
                                           batch=args.batch)
        for url in outcome.dead:
            log.warning("server %s stopped answering; its pairs went to the others", url)
        if outcome.error or outcome.left:
            log.error("%s%d pairs not made (%s). Run the same command again to resume.",
                      f"{outcome.error}\n" if outcome.error else "", len(outcome.left),
                      ", ".join(outcome.left[:5]) + (" ..." if len(outcome.left) > 5 else ""))
            return None
    elif jobs:
        import folder_paths

        saved_input = folder_paths.get_input_directory()
        if args.demo:
            folder_paths.set_input_directory(str(scratch))
        try:
            generate.generate_local(jobs, workflows, out, batch=args.batch,
                                    progress=lambda n, total: log.info("generated %d/%d", n, total))
        finally:
            folder_paths.set_input_directory(saved_input)
    return [c.name for c in configs]


def _scorer(args, out: Path):
    """The backbones (tiny ones under ``--demo``); returns it and a function undoing folder changes."""
    import folder_paths

    from ..evaluation import backbones
    from ..evaluation.score_folder import Scorer

    added: list[tuple[str, str]] = []
    facenet_name, clip_name = args.facenet_model, args.clip_model
    if args.demo:
        from ..demo import tiny_eval
        from ..host.folders import register_folders

        register_folders()
        root = out / ".demo_models"
        # The tiny FaceNet needs facenet-pytorch: only the facenet backbone may ask for it.
        if args.backbone == "facenet" and not (root / "facenet" / tiny_eval.TINY_FACENET_NAME).is_file():
            (root / "facenet").mkdir(parents=True, exist_ok=True)
            try:
                tiny_eval.write_tiny_facenet(root / "facenet")
            except ImportError as exc:
                raise ValueError(f"--backbone facenet needs facenet-pytorch ({exc}); install it "
                                 f"({backbones.FACENET_INSTALL}) or use --backbone arcface") from None
        if not (root / "clip" / tiny_eval.TINY_CLIP_NAME / "config.json").is_file():
            tiny_eval.write_tiny_clip(root / "clip")
        for name in ("facenet", "clip"):
            path = str((root / name).resolve())
            key = backbones.folder_key(name)
            folder_paths.folder_names_and_paths[key][0].append(path)
            added.append((key, path))
        facenet_name, clip_name = tiny_eval.TINY_FACENET_NAME, tiny_eval.TINY_CLIP_NAME

    def restore() -> None:
        for name, path in added:
            if path in folder_paths.folder_names_and_paths[name][0]:
                folder_paths.folder_names_and_paths[name][0].remove(path)

    def face_analysis() -> Any:
        if args.demo:
            from ..demo.nodes import _face_analysis

            return _face_analysis(640)
        from ..identity.face_analysis import load_face_analysis

        return load_face_analysis(args.face_analysis)

    loaded, problems = {}, []  # every missing file at once, not one per attempt
    for key, load in (("face_analysis", face_analysis),
                      ("facenet", lambda: backbones.load_facenet(facenet_name) if args.backbone == "facenet" else None),
                      ("clip", lambda: backbones.load_clip(clip_name)),
                      ("lpips", lambda: _quality_module().load_lpips(args.lpips_model, args.demo) if args.lpips else None),
                      ("fid", lambda: _quality_module().load_fid_extractor(args.fid_model, args.demo) if args.fid
                       else None)):
        try:
            loaded[key] = load()
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        restore()
        raise ValueError("the evaluation backbones are not all installed:\n  " + "\n  ".join(problems))
    return Scorer(loaded["face_analysis"], args.backbone, loaded["facenet"], loaded["clip"], loaded["lpips"],
                  loaded["fid"]), restore


def _quality_module() -> Any:
    from ..evaluation import quality

    return quality


def _report(args, out: Path, images_root: Path, configs, identities, prompts, scorer) -> int:
    from ..evaluation import report
    from ..evaluation.score_folder import score_images

    scored = score_images(images_root, configs, identities, prompts, scorer,
                          progress=lambda n, total: log.info("scored %d/%d identity folders", n, total))
    quality = _quality(scorer, scored, configs)
    report.write_csv(out / "images.csv", scored.rows, report.IMAGE_COLUMNS)
    table = report.summarise(scored.rows, configs, quality)
    report.write_csv(out / "summary.csv", table, report.SUMMARY_COLUMNS)
    report.write_markdown(out / "summary.md", table, scorer.backbone)
    found = {(r["config"], r["identity"], r["prompt_index"]): r["face_found"] for r in scored.rows}
    for config in configs:
        cells = [[(images_root / config / i.name / f"{p:02d}.png", found.get((config, i.name, p), False))
                  for p in range(len(prompts))] for i in identities]
        report.write_grid(out / f"grid_{config}.png", cells)
    if scorer.draw_scatter:
        report.write_scatter(out / "scatter.png", table)
    log.info("summary (%s):\n%s", out / "summary.md", (out / "summary.md").read_text())
    missing = sum(1 for t in table if t["images"] == 0)
    if missing:
        log.warning("%d configuration(s) have no images to score", missing)
    return 0


def _quality(scorer, scored, configs) -> dict[str, dict[str, float]]:
    """FID per configuration and LPIPS per image (written into the rows), when asked for."""
    if scorer.fid is None and scorer.lpips is None:
        return {}
    from ..evaluation import quality

    result: dict[str, dict[str, float]] = {c: {} for c in configs}
    if scorer.lpips is not None:
        net = scorer.lpips
        for row in scored.rows:
            crop = row.get("_crop")
            if crop is not None:
                row["lpips"] = quality.lpips_distance(net, crop, scored.ref_crops[row["identity"]])
        for c in configs:
            values = [r["lpips"] for r in scored.rows if r["config"] == c and not math.isnan(r["lpips"])]
            result[c]["lpips"] = sum(values) / len(values) if values else float("nan")
    if scorer.fid is not None:
        extractor = scorer.fid
        real = list(scored.ref_crops.values())
        for c in configs:
            result[c]["fid"] = quality.fid(scored.gen_crops.get(c, []), real, extractor)
    return result
