"""The training loop: AdamW over the mappers and the image key/value projections.

Everything about the *method* is in ``objective.py`` (what the U-Net sees) and
``pairs.py`` (which photos make a sample); this module is the practical part: mixed
precision, gradient accumulation and checkpointing, checkpoints with metadata, resume,
the loss log, the progress bar, previews and the out-of-memory message.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..adapter.native import build_native_adapter
from ..attention.blocks import SDXL_LAYERS
from ..attention.patch import cross_attention_widths
from ..identity.types import Adapter
from .cache import CachedData, load_cached
from .objective import IdentityObjective, gradient_checkpointing
from .pairs import PairSampler
from .state import adapter_copy, load_state, save_adapter, save_state
from .warm_start import warm_start

log = logging.getLogger(__name__)

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
LOSS_LOG = "loss.csv"


class TrainingError(RuntimeError):
    """Training cannot go on; the message says which setting to change."""


@dataclass
class TrainConfig:
    steps: int = 10000
    batch_size: int = 1
    accumulate: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    identity_drop: float = 0.1
    precision: str = "bf16"
    gradient_checkpointing: bool = True
    resolution: int = 1024
    save_every: int = 500
    save_dtype: str = "fp16"
    preview_every: int = 250
    preview_prompt: str = "a photo of a person"
    preview_steps: int = 20
    preview_cfg: float = 5.0
    seed: int = 0
    name: str = "infinite-id"
    # Mapper sizes (the paper publishes none; the defaults are the native format's).
    face_tokens: int = 4
    clip_tokens: int = 4
    face_hidden: int = 1024
    mapper_dim: int = 1024
    mapper_depth: int = 4
    mapper_heads: int = 16
    mapper_dim_head: int = 64

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not '{self.precision}'")
        for name in ("steps", "batch_size", "accumulate", "resolution"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8 (the VAE's factor), got {self.resolution}")


# Settings a resumed run must share with the run it continues (they shape weights or data).
RESUME_FIXED = ("resolution", "face_tokens", "clip_tokens", "face_hidden", "mapper_dim", "mapper_depth",
                "mapper_heads", "mapper_dim_head", "seed")


@dataclass
class TrainingModels:
    """What the loop needs from ComfyUI: the U-Net (a ``ModelPatcher``) and, for previews,
    the text encoder and the VAE. ``base_model_hash`` is recorded in every checkpoint."""

    model: Any
    vae: Any = None
    clip: Any = None
    base_model: str = ""
    base_model_hash: str = ""


def leave_inference_mode(module: torch.nn.Module) -> int:
    """Replace inference-mode tensors among ``module``'s weights by ordinary copies (same values).

    ComfyUI runs nodes under ``torch.inference_mode``; weights it touched there (patched
    and restored, or moved) become inference tensors, which autograd refuses to save
    for the backward pass. A U-Net used for inference in the same process before
    training would otherwise fail with a cryptic autograd error. Returns the count.
    """
    count = 0
    for owner in module.modules():
        for name, param in list(owner._parameters.items()):
            if param is not None and param.is_inference():
                owner._parameters[name] = torch.nn.Parameter(param.clone(), requires_grad=False)
                count += 1
        for name, buffer in list(owner._buffers.items()):
            if buffer is not None and buffer.is_inference():
                owner._buffers[name] = buffer.clone()
                count += 1
    if count:
        log.info("copied %d U-Net tensors out of inference mode for training", count)
    return count


def oom_types() -> tuple[type, ...]:
    found = [getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)]
    return tuple(t for t in found if isinstance(t, type))


class Trainer:
    def __init__(self, models: TrainingModels, data: CachedData, uncond_clip: torch.Tensor, config: TrainConfig,
                 output: Path, holdout: list[int] | None = None, init: Adapter | None = None,
                 preview: Callable[[Adapter, int], Path | None] | None = None) -> None:
        import comfy.model_management as mm

        self.models, self.data, self.config, self.output = models, data, config, Path(output)
        self.output.mkdir(parents=True, exist_ok=True)
        self.device = mm.get_torch_device()
        self.preview = preview
        people = sorted({p.person for p in data.photos})
        self.holdout = [p for p in (holdout or []) if p in people]
        train_people = [p for p in people if p not in self.holdout]
        if not train_people:
            raise TrainingError("data: every person is held out for previews; keep at least one for training")
        # Frozen: no U-Net gradient is ever computed or stored (ComfyUI leaves requires_grad on;
        # its sampling runs under no_grad, so this changes nothing for inference).
        models.model.model.diffusion_model.requires_grad_(False)
        leave_inference_mode(models.model.model.diffusion_model)
        self.adapter = self._build_adapter(data, init)
        self.objective = IdentityObjective(models.model, self.adapter.kv, PRECISIONS[config.precision])
        self.sampler = PairSampler(data, train_people, config.identity_drop, uncond_clip,
                                   self.adapter.info["face_embedding"])
        self.params = [p for m in (self.adapter.mapper, self.adapter.kv) for p in m.parameters()]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.train_people = train_people
        self.warm_start = init.name if init is not None else ""

    # ------------------------------------------------------------------ set-up
    def _build_adapter(self, data: CachedData, init: Adapter | None) -> Adapter:
        c = self.config
        unet = self.models.model.model.diffusion_model
        widths = cross_attention_widths(unet)
        missing = [key for key in SDXL_LAYERS if key not in widths]
        if missing:
            raise TrainingError(f"checkpoint: not an SDXL model ({len(missing)} of SDXL's 70 cross-attention layers "
                                "are missing); Infinite-ID adapters are trained for SDXL")
        sample, _ = load_cached(data.photos[0])
        adapter = build_native_adapter(
            [widths[key][0] for key in SDXL_LAYERS], token_dim=widths[SDXL_LAYERS[0]][1],
            clip_width=sample["clip_hidden"].shape[-1], face_tokens=c.face_tokens, clip_tokens=c.clip_tokens,
            face_hidden=c.face_hidden, clip_dim=c.mapper_dim, clip_depth=c.mapper_depth, clip_heads=c.mapper_heads,
            clip_dim_head=c.mapper_dim_head, seed=c.seed, name=c.name)
        if init is not None:
            copied = warm_start(adapter, init)
            log.info("warm start from '%s': %s", init.name, ", ".join(copied))
        adapter.kv.to(self.device).requires_grad_(True).train()
        adapter.mapper.to(self.device).requires_grad_(True).train()
        return adapter

    def fingerprint(self) -> str:
        names = sorted(f"{self.data.people[p.person]}/{p.path.name}" for p in self.data.photos)
        return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ one optimiser step
    def train_step(self) -> float:
        c = self.config
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(c.accumulate):
            loss = self.micro_batch_loss()
            self.scaler.scale(loss / c.accumulate).backward()
            total += float(loss.detach()) / c.accumulate
        if not torch.isfinite(torch.tensor(total)):
            raise TrainingError(f"the loss became {total} at step {self.step + 1}. Lower --lr, or use --precision "
                                "bf16 instead of fp16")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return total

    def micro_batch_loss(self, context: torch.Tensor | None = None) -> torch.Tensor:
        batch = self.sampler.draw(self.config.batch_size, self.generator)
        tokens = self.adapter.mapper(batch.face_embeds.to(self.device), batch.clip_hidden.to(self.device))
        base = self.models.model.model
        latents = base.latent_format.process_in(batch.latents).to(self.device)
        y = self.objective.size_conditioning(batch.sizes, self.config.resolution)
        # The wrappers only need to be there for the forward pass: checkpoint keeps what it recomputes.
        with gradient_checkpointing(self.models.model.model.diffusion_model, self.config.gradient_checkpointing):
            return self.objective.loss(latents, tokens, y, self.generator, context=context)

    # ------------------------------------------------------------------ the run
    def run(self) -> Path:
        """Train to ``config.steps``; returns the final adapter file."""
        from tqdm import tqdm

        c = self.config
        self._load_unet()
        log.info("training %d steps: batch %d x %d accumulated, lr %g, %s, gradient checkpointing %s, %d people "
                 "(%d photos), identity drop %.2f", c.steps, c.batch_size, c.accumulate, c.lr, c.precision,
                 "on" if c.gradient_checkpointing else "off", len(self.train_people), len(self.data.photos),
                 c.identity_drop)
        bar = tqdm(total=c.steps, initial=self.step, desc="training", unit="step", dynamic_ncols=True)
        start, first_step = time.perf_counter(), self.step
        with self._log_file() as writer:
            while self.step < c.steps:
                try:
                    loss = self.train_step()
                except oom_types() as exc:
                    raise TrainingError(self.oom_message()) from exc
                elapsed = time.perf_counter() - start
                rate = (self.step - first_step) * c.batch_size * c.accumulate / max(elapsed, 1e-9)
                writer.writerow([self.step, f"{loss:.6f}", c.lr, f"{elapsed:.2f}", f"{rate:.3f}"])
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.2f}")
                bar.update(1)
                if c.save_every and self.step % c.save_every == 0 and self.step < c.steps:
                    self.save()
                if self.preview is not None and c.preview_every and self.step % c.preview_every == 0:
                    self.preview(adapter_copy(self.adapter), self.step)
                    self._load_unet()  # sampling may have moved models around
        bar.close()
        return self.save()

    def _load_unet(self) -> None:
        import comfy.model_management as mm

        mm.load_models_gpu([self.models.model])

    def oom_message(self) -> str:
        c = self.config
        return (f"out of GPU memory at batch size {c.batch_size}, resolution {c.resolution}, precision {c.precision}, "
                f"gradient checkpointing {'on' if c.gradient_checkpointing else 'off'}. Lower --batch-size (and raise "
                "--accumulate to keep the effective batch), lower --resolution, "
                + ("" if c.gradient_checkpointing else "turn on --gradient-checkpointing, ")
                + ("" if c.precision != "fp32" else "use --precision bf16, ")
                + "or close other programs using the GPU")

    @contextlib.contextmanager
    def _log_file(self) -> Iterator[Any]:
        """``loss.csv``, one row per step; a resumed run drops rows past its checkpoint."""
        path = self.output / LOSS_LOG
        rows = []
        if path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in list(csv.reader(f))[1:] if r and int(r[0]) <= self.step]
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "loss", "lr", "seconds", "images_per_second"])
            writer.writerows(rows)
            yield writer

    # ------------------------------------------------------------------ checkpoints
    def metadata(self) -> dict[str, str]:
        c = self.config
        return {"training_steps": str(self.step), "training_base_model": self.models.base_model,
                "training_base_model_sha256": self.models.base_model_hash,
                "training_people": str(len(self.train_people)),
                "training_photos": str(sum(p.person in self.train_people for p in self.data.photos)),
                "training_batch_size": str(c.batch_size * c.accumulate), "training_lr": str(c.lr),
                "training_resolution": str(c.resolution), "training_identity_drop": str(c.identity_drop),
                "training_precision": c.precision, "training_warm_start": self.warm_start,
                "training_data_fingerprint": self.fingerprint()}

    def save(self) -> Path:
        c = self.config
        step_file = self.output / f"{c.name}-{self.step:06d}.safetensors"
        save_adapter(self.adapter, step_file, self.metadata(), c.save_dtype)
        latest = self.output / f"{c.name}.safetensors"
        save_adapter(self.adapter, latest, self.metadata(), c.save_dtype)
        save_state(self.output, {
            "step": self.step, "config": dataclasses.asdict(c), "fingerprint": self.fingerprint(),
            "mapper": self.adapter.mapper.state_dict(), "kv": self.adapter.kv.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(), "warm_start": self.warm_start})
        log.info("step %d: saved %s", self.step, step_file)
        return latest

    def resume(self) -> None:
        """Continue from ``training_state.pt`` in the output folder."""
        state = load_state(self.output)
        saved = state["config"]
        changed = [k for k in RESUME_FIXED if saved.get(k) != getattr(self.config, k)]
        if changed:
            raise TrainingError("resume: these settings differ from the run being resumed: " + ", ".join(
                f"{k} {saved.get(k)} -> {getattr(self.config, k)}" for k in changed) + ". Use the same values, or "
                "start a new run in another --output folder")
        if state["fingerprint"] != self.fingerprint():
            log.warning("resume: the training photos changed since the checkpoint; the run goes on with the new set")
        self.adapter.mapper.load_state_dict(state["mapper"])
        self.adapter.kv.load_state_dict(state["kv"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
        self.warm_start = state.get("warm_start", "")
        log.info("resumed at step %d of %d", self.step, self.config.steps)
