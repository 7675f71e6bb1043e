"""The training loop: AdamW over the mappers and the image key/value projections.

Everything about the *method* is in ``objective.py`` (what the U-Net sees) and
``pairs.py`` (which photos make a sample); this module is the practical part: mixed
precision, gradient accumulation and checkpointing, checkpoints with metadata, resume,
the loss log, the progress bar, previews and the out-of-memory message.

**Data-parallel** (``torchrun``, ``distributed.py``): the trainable modules are wrapped in
torch's ``DistributedDataParallel``, which averages their gradients over the ranks in
the backward pass; every rank keeps the same generator, draws the same global batch
(``batch_size x ranks`` samples per micro-batch) and computes its own rows of it, so the
run's samples, and its results up to float rounding, do not depend on the number of
processes. The logged loss is the mean over the ranks. Rank 0 alone writes files.
Global batch = ``batch_size`` x ranks x ``accumulate``.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..adapter.model import Adapter
from ..adapter.native import build_native_adapter
from ..unet.layers import SDXL_LAYERS
from ..unet.walk import sdxl_widths
from .cache import CachedData, load_cached, write_atomic
from .distributed import DistContext
from .objective import IdentityObjective, gradient_checkpointing
from .pairs import PairSampler
from .state import LOSS_LOG, adapter_copy, load_state, save_adapter, save_state
from .warm_start import warm_start

log = logging.getLogger(__name__)

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
LOSS_HEADER = ["step", "loss", "lr", "seconds", "images_per_second"]


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


class _Trainable(torch.nn.Module):
    """The trained modules as one module for ``DistributedDataParallel``; its forward is one micro-batch's loss."""

    def __init__(self, trainer: Trainer) -> None:
        super().__init__()
        self.mapper, self.kv = trainer.adapter.mapper, trainer.adapter.kv
        object.__setattr__(self, "_loss", trainer.rank_loss)  # not a submodule: the U-Net stays out of DDP

    def forward(self, context: torch.Tensor | None = None) -> torch.Tensor:
        return self._loss(context)


class Trainer:
    def __init__(self, models: TrainingModels, data: CachedData, uncond_clip: torch.Tensor, config: TrainConfig,
                 output: Path, holdout: list[int] | None = None, init: Adapter | None = None,
                 preview: Callable[[Adapter, int], Path | None] | None = None,
                 dist: DistContext | None = None) -> None:
        import comfy.model_management as mm

        self.models, self.data, self.config, self.output = models, data, config, Path(output)
        self.dist = dist or DistContext()
        if self.dist.is_main:
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
        self.ddp: torch.nn.parallel.DistributedDataParallel | None = None
        if self.dist.active:
            # DDP copies rank 0's weights to the other ranks here and averages gradients from now on.
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                _Trainable(self), device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False)

    @property
    def global_batch(self) -> int:
        """Samples per optimiser step over all ranks: batch size x ranks x accumulation."""
        return self.config.batch_size * self.dist.world * self.config.accumulate

    # ------------------------------------------------------------------ set-up
    def _build_adapter(self, data: CachedData, init: Adapter | None) -> Adapter:
        c = self.config
        unet = self.models.model.model.diffusion_model
        try:
            widths = sdxl_widths(unet)
        except ValueError as exc:
            raise TrainingError(f"checkpoint: {exc}") from None
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
        for i in range(c.accumulate):
            # DDP all-reduces the gradients in the last micro-batch's backward pass only.
            sync = self.ddp is None or i == c.accumulate - 1
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                loss = self.micro_batch_loss()
                self.scaler.scale(loss / c.accumulate).backward()
            total += float(loss.detach()) / c.accumulate
        total = self.dist.mean(total, self.device)  # every rank sees the same value and stops together
        if not torch.isfinite(torch.tensor(total)):
            raise TrainingError(f"the loss became {total} at step {self.step + 1}. Lower --lr, or use --precision "
                                "bf16 instead of fp16")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return total

    def micro_batch_loss(self, context: torch.Tensor | None = None) -> torch.Tensor:
        """This rank's loss of one micro-batch (through DDP when data-parallel)."""
        if self.ddp is not None:
            return self.ddp(context)
        return self.rank_loss(context)

    def rank_loss(self, context: torch.Tensor | None = None) -> torch.Tensor:
        b, rank, world = self.config.batch_size, self.dist.rank, self.dist.world
        rows = slice(rank * b, (rank + 1) * b)
        batch = self.sampler.draw(b * world, self.generator, rows)
        tokens = self.adapter.mapper(batch.face_embeds.to(self.device), batch.clip_hidden.to(self.device))
        base = self.models.model.model
        latents = base.latent_format.process_in(batch.latents).to(self.device)
        y = self.objective.size_conditioning(batch.sizes, self.config.resolution)
        # The wrappers only need to be there for the forward pass: checkpoint keeps what it recomputes.
        with gradient_checkpointing(self.models.model.model.diffusion_model, self.config.gradient_checkpointing):
            return self.objective.loss(latents, tokens, y, self.generator, context=context, rows=rows,
                                       total=b * world)

    # ------------------------------------------------------------------ the run
    def run(self) -> Path:
        """Train to ``config.steps``; returns the final adapter file."""
        from tqdm import tqdm

        c = self.config
        self._load_unet()
        log.info("training %d steps: global batch %d = %d per process x %d process(es) x %d accumulated, lr %g "
                 "(not scaled with the batch), %d images in all, %s, gradient checkpointing %s, %d people "
                 "(%d photos), identity drop %.2f", c.steps, self.global_batch, c.batch_size, self.dist.world,
                 c.accumulate, c.lr, c.steps * self.global_batch, c.precision,
                 "on" if c.gradient_checkpointing else "off", len(self.train_people), len(self.data.photos),
                 c.identity_drop)
        bar = tqdm(total=c.steps, initial=self.step, desc="training", unit="step", dynamic_ncols=True,
                   disable=not self.dist.is_main)
        start, first_step = time.perf_counter(), self.step
        with self._log_file() as writer:
            while self.step < c.steps:
                try:
                    loss = self.train_step()
                except oom_types() as exc:
                    raise TrainingError(self.oom_message()) from exc
                elapsed = time.perf_counter() - start
                rate = (self.step - first_step) * self.global_batch / max(elapsed, 1e-9)
                writer([self.step, f"{loss:.6f}", c.lr, f"{elapsed:.2f}", f"{rate:.3f}"])
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.2f}")
                bar.update(1)
                if c.save_every and self.step % c.save_every == 0 and self.step < c.steps:
                    self.save()
                if (self.preview is not None and self.dist.is_main and c.preview_every
                        and self.step % c.preview_every == 0):
                    self.preview(adapter_copy(self.adapter), self.step)
                    self._load_unet()  # sampling may have moved models around
        bar.close()
        final = self.save()
        self.dist.barrier()  # the other ranks end once rank 0's last checkpoint is complete
        return final

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
    def _log_file(self) -> Iterator[Callable[[list[Any]], None]]:
        """``loss.csv``, one row per step, appended and flushed to disk as each step ends.

        Why per row: a SIGKILL, an out-of-memory kill or a power cut must not take the
        history with it. A resumed run first drops rows past its checkpoint (they are
        trained again), rewriting the file whole under a temporary name and renaming it,
        so even that step cannot leave it half written. Other ranks write nothing.
        """
        if not self.dist.is_main:
            yield lambda row: None
            return
        path = self.output / LOSS_LOG
        if path.is_file():
            with open(path, newline="") as f:
                rows = list(csv.reader(f))[1:]
            kept = [r for r in rows if r and r[0].isdigit() and int(r[0]) <= self.step]
            if len(kept) != len(rows) or self.step == 0:

                def rewrite(tmp: Path) -> None:
                    with open(tmp, "w", newline="") as f:
                        csv.writer(f).writerows([LOSS_HEADER, *([] if self.step == 0 else kept)])
                write_atomic(path, rewrite)
        else:
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(LOSS_HEADER)
        with open(path, "a", newline="") as f:
            writer = csv.writer(f)

            def write(row: list[Any]) -> None:
                writer.writerow(row)
                f.flush()
                os.fsync(f.fileno())
            yield write

    # ------------------------------------------------------------------ checkpoints
    def metadata(self) -> dict[str, str]:
        c = self.config
        return {"training_steps": str(self.step), "training_base_model": self.models.base_model,
                "training_base_model_sha256": self.models.base_model_hash,
                "training_people": str(len(self.train_people)),
                "training_photos": str(sum(p.person in self.train_people for p in self.data.photos)),
                "training_batch_size": str(self.global_batch), "training_processes": str(self.dist.world),
                "training_lr": str(c.lr),
                "training_resolution": str(c.resolution), "training_identity_drop": str(c.identity_drop),
                "training_precision": c.precision, "training_warm_start": self.warm_start,
                "training_data_fingerprint": self.fingerprint()}

    def save(self) -> Path:
        """Checkpoint (rank 0 only; the others return the path it writes)."""
        c = self.config
        step_file = self.output / f"{c.name}-{self.step:06d}.safetensors"
        latest = self.output / f"{c.name}.safetensors"
        if not self.dist.is_main:
            return latest
        save_adapter(self.adapter, step_file, self.metadata(), c.save_dtype)
        save_adapter(self.adapter, latest, self.metadata(), c.save_dtype)
        save_state(self.output, {
            "step": self.step, "config": dataclasses.asdict(c), "fingerprint": self.fingerprint(),
            "mapper": self.adapter.mapper.state_dict(), "kv": self.adapter.kv.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(), "warm_start": self.warm_start,
            "processes": self.dist.world, "global_batch": self.global_batch})
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
        before = int(state.get("global_batch", saved.get("batch_size", 1) * saved.get("accumulate", 1)))
        if before != self.global_batch:
            log.warning("resume: the global batch changes from %d to %d (per-process batch x processes x "
                        "accumulation); keep it equal to continue the same run (e.g. twice the --batch-size with "
                        "half the processes)", before, self.global_batch)
        log.info("resumed at step %d of %d (%d process(es), was %d)", self.step, self.config.steps, self.dist.world,
                 int(state.get("processes", 1)))
