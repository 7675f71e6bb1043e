"""Identity-enhanced training of the native adapter (docs/TRAINING.md).

The U-Net is frozen and its text cross-attention is switched off: the face mapper, the
CLIP mapper and the 70 image key/value projections learn to reconstruct a *different*
photo of the reference person from the identity tokens alone. Modules:

- ``dataset.py``: the photo folder (one subfolder per person) and its checks;
- ``cache.py``: faces, ArcFace embeddings, CLIP hidden states and VAE latents, computed
  once and kept on disk;
- ``pairs.py``: training batches, the reference features of one photo and the target
  latent of another photo of the same person;
- ``objective.py``: the training patch (identity-only cross-attention), gradient
  checkpointing and the noise-prediction loss, plain torch over ComfyUI's U-Net;
- ``trainer.py``: the loop (AdamW, mixed precision, accumulation, resume, checkpoints,
  loss log, previews);
- ``warm_start.py``: starting from another adapter's weights (``--init``);
- ``preview.py``: preview images during training, through the pack's own inference path;
- ``state.py``: checkpoint and resume files, and the refusal to reuse a run folder;
- ``distributed.py``: data-parallel runs under ``torchrun`` (rank, process group, the
  few collectives; DDP averages the gradients);
- ``grouping.py``: ``train group``, sorting a pile of photos into people by ArcFace
  similarity.
"""
