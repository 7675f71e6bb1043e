"""What an evaluation run consists of: identities x prompts x configurations, and where
each image lives.

Why a plan of files: the benchmark is 720 images per configuration (24 identities x 30
prompts), hours of sampling. Each pair's image is written atomically to
``images/<config>/<identity>/<NN>.png`` the moment it exists, so an interrupted run
resumes by skipping pairs whose file is there, and a folder of images made elsewhere can
be scored by putting it in the same layout.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
PROMPTS_FILE = Path(__file__).resolve().parent / "prompts.txt"
MAX_PROMPT_CHARS = 1000
_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ReferencePhoto:
    """One person of an evaluation: a reference photo and the name its images are filed under.

    Not the pack's ``identity.types.Identity`` (the encoded tokens): evaluation works on
    files, and each workflow run encodes the photo itself."""

    name: str
    path: Path


@dataclass(frozen=True)
class Config:
    """One compared setting: a workflow plus ``--set`` overrides (NODE.INPUT=VALUE)."""

    name: str
    workflow: Path
    sets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pair:
    config: str
    identity: str
    prompt_index: int

    @property
    def key(self) -> str:
        return f"{self.config}/{self.identity}/{self.prompt_index:02d}"


def safe_name(text: str) -> str:
    """A file-system name: letters, digits, ``.-_`` (others become ``_``)."""
    name = _NAME.sub("_", text).strip("._")
    return name or "unnamed"


def load_identities(folder: Path) -> list[ReferencePhoto]:
    """One photo per person: ``folder/<name>.png``, or ``folder/<name>/`` with photos (the first, by name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--identities: {folder} is not a folder; put one photo per person in it (e.g. "
                         f"{folder}/alice.png) or one subfolder per person")
    found: dict[str, Path] = {}
    sources: dict[str, list[str]] = {}  # case-folded identity name -> the entries that give it
    for entry in sorted(folder.iterdir()):
        name = None
        if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES:
            name, photo = safe_name(entry.stem), entry
        elif entry.is_dir():
            photos = sorted(p for p in entry.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if photos:
                name, photo = safe_name(entry.name), photos[0]
        if name is not None:
            found.setdefault(name, photo)
            sources.setdefault(name.casefold(), []).append(entry.name + ("/" if entry.is_dir() else ""))
    # Names are folder and file names in the output (and case-insensitive on some disks):
    # two entries giving one name would silently share, or drop, a person.
    clashes = {key: entries for key, entries in sources.items() if len(entries) > 1}
    if clashes:
        listed = "; ".join(" and ".join(entries) for entries in clashes.values())
        raise ValueError(f"--identities: these entries in {folder} give the same identity name (names are compared "
                         f"without case, and characters other than letters, digits, '.', '-', '_' become '_'): "
                         f"{listed}. Rename or remove all but one of each")
    if not found:
        raise ValueError(f"--identities: no identity photos in {folder} (expected {', '.join(IMAGE_SUFFIXES)} "
                         f"files, one per person, or one subfolder per person)")
    return [ReferencePhoto(name, path) for name, path in found.items()]


def load_prompts(path: Path | None = None) -> list[str]:
    """One prompt per line; blank lines and ``#`` comment lines are skipped."""
    path = Path(path) if path is not None else PROMPTS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"--prompts: {path} does not exist (a text file with one prompt per line)") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"--prompts: {path} is not UTF-8 text ({exc})") from None
    except OSError as exc:
        raise ValueError(f"--prompts: cannot read {path} ({exc})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"--prompts: {path} has no prompts (one per line; '#' lines are comments)")
    long = [i + 1 for i, p in enumerate(prompts) if len(p) > MAX_PROMPT_CHARS]
    if long:
        raise ValueError(f"--prompts: prompt(s) {long} in {path} are longer than {MAX_PROMPT_CHARS} characters "
                         f"(is this a prompt list?)")
    return prompts


def parse_configs(workflows: Sequence[Path], variants: Sequence[str], default: Path) -> list[Config]:
    """Configurations from ``--workflow`` files and ``--variant NAME:SET[,SET...]`` items.

    The workflows (the default one when none is given) are configurations themselves, so
    an ablation is always compared with its baseline; variants modify the first workflow.
    Names must be unique: they are folder names in the output.
    """
    workflows = [Path(w) for w in workflows] or [Path(default)]
    base = workflows[0]
    configs = [Config(safe_name(w.stem), w) for w in workflows]
    for item in variants:
        name, sep, sets = item.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--variant {item!r}: use NAME:NODE.INPUT=VALUE[,NODE.INPUT=VALUE...]")
        configs.append(Config(safe_name(name.strip()), base, tuple(s.strip() for s in sets.split(",") if s.strip())))
    names = [c.name for c in configs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"configuration names must differ, got {', '.join(dupes)} twice (name variants "
                         f"NAME:..., or rename the workflow files)")
    for c in configs:
        if not c.workflow.is_file():
            raise ValueError(f"--workflow: {c.workflow} does not exist")
    return configs


def pairs(configs: Iterable[Config], identities: Iterable[ReferencePhoto], n_prompts: int) -> list[Pair]:
    """Every pair, identity-major within a configuration (a grid row is one identity)."""
    ids = list(identities)
    return [Pair(c.name, i.name, p) for c in configs for i in ids for p in range(n_prompts)]


def image_path(out: Path, pair: Pair) -> Path:
    return Path(out) / "images" / pair.config / pair.identity / f"{pair.prompt_index:02d}.png"


def pending(out: Path, all_pairs: Iterable[Pair]) -> list[Pair]:
    """The pairs whose image is not written yet (the resume rule)."""
    return [p for p in all_pairs if not image_path(out, p).is_file()]


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file + rename: a half-written image is never taken as done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def record(out: Path, pair: Pair, **info: object) -> None:
    """Append one line to ``manifest.jsonl``: which pair was made where, with what settings."""
    with open(Path(out) / "manifest.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"pair": pair.key, **info}) + "\n")


def scan_images(folder: Path) -> tuple[list[str], list[str], dict[str, list[int]]]:
    """For ``--images``: configurations, identities and prompt indices found in the layout."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--images: {folder} is not a folder (expected {folder}/<config>/<identity>/<NN>.png)")
    configs, identities, found = [], set(), {}
    for cfg in sorted(p for p in folder.iterdir() if p.is_dir()):
        for ident in sorted(p for p in cfg.iterdir() if p.is_dir()):
            idx = sorted(int(f.stem) for f in ident.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.stem.isdigit())
            if idx:
                found[f"{cfg.name}/{ident.name}"] = idx
                identities.add(ident.name)
                if cfg.name not in configs:
                    configs.append(cfg.name)
    if not found:
        raise ValueError(f"--images: no images in {folder} (expected <config>/<identity>/<NN>.png, NN = the "
                         f"prompt's line number from 0)")
    return configs, sorted(identities), found
