"""``run WORKFLOW``: execute a workflow with ComfyUI's executor, no server needed.

Images are written by the workflow's own ``SaveImage`` nodes (PNG with the prompt and
workflow embedded, as ComfyUI does). ``--demo`` swaps model loaders for tiny built-in
models and feeds ``LoadImage`` a generated reference photo, so the whole path can be
seen working without any weights.
"""
from __future__ import annotations

import argparse
import logging
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..host.models import DEMO_SUBSTITUTES, missing_models
from ..workflow_io.files import apply_overrides, load_workflow

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

DEMO_MAX_STEPS = 8


def add_parser(commands: Any) -> None:
    p = commands.add_parser("run", help="run a workflow (API or UI format) headlessly")
    p.add_argument("workflow", type=Path, help="workflow JSON")
    p.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="override an input; NODE is a node id, title or type (all nodes of it); VALUE is JSON or text")
    p.add_argument("--demo", action="store_true", help="use tiny built-in models instead of real weights")
    p.add_argument("--output", type=Path, default=None, help="folder for saved images (default: ComfyUI's output)")
    p.set_defaults(handler=run_command)


def demo_file_name(name: str, index: int) -> str:
    """The file the demo writes for a ``LoadImage`` value: a plain name inside its own folder.

    Why not the value itself: a (shared) workflow's ``LoadImage`` may name ``../x`` or an
    absolute path, and the demo would overwrite that file anywhere on disk.
    """
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name.replace("\\", "/")).stem).strip("._")[:60]
    return f"demo_{index:02d}_{stem or 'image'}.png"


def use_demo_models(prompt: dict, input_dir: Path) -> None:
    """Swap loaders for tiny ones and write a generated reference photo for each LoadImage.

    The photos are written only inside ``input_dir`` (the demo's temporary folder), under
    names from :func:`demo_file_name`; each ``LoadImage`` is pointed at its photo.
    """
    from PIL import Image

    from ..demo.nodes import register_demo_nodes

    register_demo_nodes()
    written: dict[str, str] = {}
    for node in prompt.values():
        inputs = node.setdefault("inputs", {})
        # Tiny models at tiny sizes: the demo shows the path working, not the picture.
        if node.get("class_type") == "EmptyLatentImage":
            inputs["width"], inputs["height"] = min(inputs.get("width", 128), 128), min(inputs.get("height", 128), 128)
        # Denoising steps only (samplers have a scheduler); Interpolate's ``steps`` is a sweep size.
        if "scheduler" in inputs and isinstance(inputs.get("steps"), int) and inputs["steps"] > DEMO_MAX_STEPS:
            inputs["steps"] = DEMO_MAX_STEPS
        substitute = DEMO_SUBSTITUTES.get(node.get("class_type"))
        if substitute:
            node["class_type"] = substitute
        if node.get("class_type") == "LoadImage":
            name = str(inputs.get("image", "reference.png"))
            if name not in written:
                written[name] = demo_file_name(name, len(written))
                # Each original name keeps its own generated identity (mixing needs two).
                Image.fromarray(demo_photo(name)).save(Path(input_dir) / written[name])
            inputs["image"] = written[name]


def demo_photo(name: str) -> np.ndarray:
    """A generated reference photo; each file name gets its own identity (mixing needs two)."""
    import zlib

    import numpy as np

    from ..demo.tiny_insightface import draw_face

    photo = np.full((512, 512, 3), 128, np.uint8)
    draw_face(photo, 7, 6, identity=zlib.crc32(name.encode()) % 1000)
    return photo


def run_command(args: argparse.Namespace) -> int:
    import folder_paths

    from ..host.executor import PromptError, Runner

    try:
        prompt, ui = load_workflow(args.workflow)
        apply_overrides(prompt, args.set)
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    if args.output is not None:
        try:
            args.output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # an existing file, no permission, a read-only disk
            log.error("--output %s: cannot use it as the output folder (%s); give a folder path",
                      args.output, exc.strerror or exc)
            return 2
        folder_paths.set_output_directory(str(args.output.resolve()))
    input_dir = folder_paths.get_input_directory()
    with tempfile.TemporaryDirectory(prefix="infiniteid-demo-input-") as demo_input:
        try:
            if args.demo:
                folder_paths.set_input_directory(demo_input)
                use_demo_models(prompt, Path(demo_input))
            else:
                missing = missing_models(prompt)
                if missing:
                    log.error("The workflow needs model files that are not installed:\n  %s\nOr run with --demo to "
                              "see the workflow work on tiny built-in models.", "\n  ".join(missing))
                    return 2
            out_dir = Path(folder_paths.get_output_directory())
            before = set(out_dir.rglob("*.png")) if out_dir.exists() else set()
            try:
                Runner().run(prompt, extra_data={"extra_pnginfo": {"workflow": ui}} if ui else None)
            except PromptError as exc:
                log.error("%s", exc)
                return 1
        finally:
            # The demo folder is about to go: a later run in this process must not list it.
            folder_paths.set_input_directory(input_dir)
    written = sorted(set(out_dir.rglob("*.png")) - before)
    for path in written:
        log.info("saved %s", path)
    if written:
        log.info("saved %d image(s) to %s", len(written), out_dir)
    else:
        log.warning("the workflow saved no images (does it have a SaveImage node?)")
    return 0
