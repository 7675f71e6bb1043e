"""Training batches: the reference features of one photo, the target latent of another.

The paper's recipe (docs/TRAINING.md, "The recipe"): the reference face and the denoising target are *different* photos
of the same person, so the adapter learns the person rather than a copy of the photo's
pose, light and background. Every random choice (person, photo pair, identity drop)
comes from the run's one CPU generator, so a resumed run draws the same batches as an
uninterrupted one.

**Identity drop.** With probability ``identity_drop`` a sample's reference is replaced
by the negative identity that inference uses for classifier-free guidance: a zero
ArcFace embedding and CLIP's view of the blank image (``identity/encode.py``). Without
it the uncond tokens would be untrained and CFG between identity-cond and
identity-uncond would push along an arbitrary direction. Default 0.1 (decision): the
identity is the only condition here, and 10% is the share of samples with no image
condition in IP-Adapter's recipe (image dropped 5%, image and text together 5%).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..identity.encode import prepare_face_embeds
from .cache import CachedData, load_cached


@dataclass
class Batch:
    face_embeds: torch.Tensor  # [B, 512], prepared as the adapter reads them
    clip_hidden: torch.Tensor  # [B, T, C]
    latents: torch.Tensor      # [B, 4, h, w], raw VAE latents
    sizes: list[dict[str, int]]
    dropped: torch.Tensor      # [B] bool


class PairSampler:
    """Draws (reference, target) pairs of the training people."""

    def __init__(self, data: CachedData, people: list[int], identity_drop: float, uncond_clip: torch.Tensor,
                 face_embedding: str = "normalized") -> None:
        if not 0.0 <= identity_drop < 1.0:
            raise ValueError(f"identity_drop must be in [0, 1), got {identity_drop}")
        groups = data.by_person()
        self.people = [groups[p] for p in people]
        self.identity_drop, self.uncond_clip, self.face_embedding = identity_drop, uncond_clip, face_embedding

    def draw(self, batch_size: int, generator: torch.Generator, rows: slice | None = None) -> Batch:
        """``batch_size`` samples drawn from ``generator``; only those in ``rows`` are read and returned.

        Data-parallel ranks all draw the *global* batch (the same generator state on every
        rank keeps them in step) and each reads its own rows of it, so the samples of a
        step do not depend on how many processes share it: two processes with batch 1
        train on exactly the samples one process with batch 2 does.
        """
        picks = []
        for _ in range(batch_size):
            photos = self.people[int(torch.randint(len(self.people), (1,), generator=generator))]
            ref_i, target_i = torch.randperm(len(photos), generator=generator)[:2].tolist()
            drop = bool(torch.rand((), generator=generator) < self.identity_drop)
            picks.append((photos, ref_i, target_i, drop))
        faces, clips, latents, sizes, dropped = [], [], [], [], []
        for photos, ref_i, target_i, drop in picks[rows or slice(None)]:
            ref, _ = load_cached(photos[ref_i], ("face_embedding", "clip_hidden"))
            target, size = load_cached(photos[target_i], ("latent",))
            if drop:
                faces.append(torch.zeros(ref["face_embedding"].shape[-1]))
                clips.append(self.uncond_clip.float())
            else:
                faces.append(prepare_face_embeds(ref["face_embedding"][None].numpy(), self.face_embedding)[0])
                clips.append(ref["clip_hidden"].float())
            latents.append(target["latent"].float())
            sizes.append(size)
            dropped.append(drop)
        return Batch(torch.stack(faces), torch.stack(clips), torch.stack(latents), sizes, torch.tensor(dropped))
