"""Evaluation of identity fidelity and prompt following (supplementary A.2, A.5).

Plain numpy/torch, no node system: ``metrics`` (the equations), ``backbones`` (FaceNet,
CLIP from local files), ``scoring`` (faces -> per-image scores), ``annotate`` (preview
images), ``quality`` (FID, LPIPS), ``report`` (CSV, summary, grid, scatter), ``plan``
(identities x prompts x configurations, resumable), ``workflow`` (one API prompt per
pair), ``generate`` / ``remote`` (in-process or on ComfyUI servers over HTTP) and
``batch`` (scoring a folder). See docs/EVALUATION.md.
"""
