"""Remake docs/images/interpolation_sweep_demo.png: the shipped sweep on the demo models,
with a noise per row (before) and with one shared noise (``batch_noise`` auto).

    .venv/bin/python scripts/make_sweep_demo.py
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "example_workflows" / "interpolation_sweep.json"
TARGET = ROOT / "docs" / "images" / "interpolation_sweep_demo.png"
ROWS = (("per row", "batch_noise: per row (before)"), ("auto", "batch_noise: auto = shared"))


def main() -> None:
    from PIL import Image, ImageDraw

    strips = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode, label in ROWS:
            out = Path(tmp) / mode.replace(" ", "_")
            subprocess.run([sys.executable, str(ROOT), "run", str(WORKFLOW), "--demo", "--output", str(out),
                            "--set", f"InfiniteIDSampler.batch_noise={mode}"], check=True)
            strips.append((label, [Image.open(f).convert("RGB") for f in sorted(out.rglob("*.png"))]))
    w, h = strips[0][1][0].size
    pad = 22
    canvas = Image.new("RGB", (w * len(strips[0][1]), (h + pad) * len(strips)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(strips):
        y = r * (h + pad)
        draw.text((4, y + 4), f"{label}   (t = 0 ... 1, person A to person B; demo models)", fill="black")
        for i, image in enumerate(images):
            canvas.paste(image, (i * w, y + pad))
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(TARGET)
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
