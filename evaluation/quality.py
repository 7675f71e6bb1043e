"""FID (quality) and LPIPS of generated faces (supplementary A.5), optional columns.

Why these libraries: torchmetrics' ``FrechetInceptionDistance`` and the ``lpips``
package are the reference implementations people compare against. Neither may download:

- FID: with torch-fidelity installed, torchmetrics builds its Inception from a local file
  (``feature_extractor_weights_path``): torch-fidelity's ``pt_inception-2015-12-05-6726825d.pth``
  in ``models/fid/``. Any ``torch.nn.Module`` mapping uint8 ``[N, 3, H, W]`` to ``[N, D]``
  works too (the tests and ``--demo`` use a tiny seeded one).
- LPIPS: the package's AlexNet variant; its linear heads ship inside the package
  (``lpips/weights/v0.1/alex.pth``), the AlexNet trunk is torchvision's ImageNet file
  ``alexnet-owt-7be5be79.pth`` in ``models/lpips/``. Both are read with
  ``comfy.utils.load_torch_file`` (``weights_only=True``), never by the library itself.

FID compares each configuration's generated face crops with the reference face crops
(few references make it a coarse number; docs/EVALUATION.md); LPIPS is each generated
face against its own reference face (lower = closer), averaged per configuration.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

FID_FOLDER = "fid"
FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
LPIPS_FOLDER = "lpips"
LPIPS_FILE = "alexnet-owt-7be5be79.pth"
TORCHMETRICS_INSTALL = "pip install torchmetrics==1.9.0  (it keeps the installed torch)"
LPIPS_INSTALL = 'pip install --no-deps "lpips==0.1.4"'


class TinyFeatures(torch.nn.Module):
    """A seeded random conv feature extractor (tests, ``--demo``): uint8 images -> ``[N, 8]``."""

    num_features = 8

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, self.num_features, 5, stride=4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) * 0.2)
            self.conv.bias.zero_()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1.0
        return torch.tanh(self.conv(x)).mean(dim=(2, 3)).double()


def _full_path(folder: str, name: str, what: str, flag: str) -> str:
    import folder_paths

    from ..host.folders import register_folders

    register_folders()
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        where = " or ".join(folder_paths.get_folder_paths(folder))
        raise ValueError(f"{flag}: '{name}' was not found. Put {what} in {where}; nothing is downloaded "
                         f"automatically.")
    return path


def load_fid_extractor(name: str | None, demo: bool = False) -> Any:
    """The FID feature network: a tiny one under ``--demo``, else the local Inception file."""
    try:
        import torchmetrics  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"--fid needs torchmetrics ({exc}); run: {TORCHMETRICS_INSTALL}") from exc
    if demo:
        return TinyFeatures(0)
    path = _full_path(FID_FOLDER, name or FID_FILE, f"{FID_FILE} (torch-fidelity's FID Inception weights)",
                      "--fid-model")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"--fid with the Inception file needs torch-fidelity ({exc}); run: pip install --no-deps "
                         f"torch-fidelity==0.4.0") from exc
    return path


def fid(gen_crops: Sequence[np.ndarray], real_crops: Sequence[np.ndarray], extractor: Any) -> float:
    """torchmetrics' FID between two sets of ``H x W x 3`` uint8 face crops; NaN under 2 per set."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(gen_crops) < 2 or len(real_crops) < 2:
        log.warning("FID needs at least 2 faces per set (got %d generated, %d reference); left empty",
                    len(gen_crops), len(real_crops))
        return float("nan")
    if isinstance(extractor, str):
        metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=extractor)
    else:
        metric = FrechetInceptionDistance(feature=extractor)

    def batch(crops: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()

    metric.update(batch(real_crops), real=True)
    metric.update(batch(gen_crops), real=False)
    return float(metric.compute())


def load_lpips(name: str | None, demo: bool = False) -> Any:
    """LPIPS (AlexNet) from local files; under ``--demo`` the trunk is seeded random."""
    import comfy.utils

    try:
        import lpips
    except ImportError as exc:
        raise ValueError(f"--lpips needs the lpips package ({exc}); run: {LPIPS_INSTALL}") from exc
    trunk_path = None if demo else _full_path(LPIPS_FOLDER, name or LPIPS_FILE,
                                              f"{LPIPS_FILE} (torchvision's ImageNet AlexNet)", "--lpips-model")
    torch.manual_seed(0)
    net = lpips.LPIPS(pretrained=False, net="alex", pnet_rand=True, verbose=False)
    heads = comfy.utils.load_torch_file(os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "alex.pth"),
                                        safe_load=True)
    missing = [k for k in heads if k not in net.state_dict()]
    if missing:
        raise ValueError(f"the lpips package's alex.pth does not match its model ({missing[:3]})")
    net.load_state_dict(heads, strict=False)
    if trunk_path is not None:
        trunk = comfy.utils.load_torch_file(trunk_path, safe_load=True)
        mapped = {}
        for key in net.net.state_dict():  # slice{k}.{i}.weight <- features.{i}.weight
            source = "features." + key.split(".", 1)[1]
            if source not in trunk:
                raise ValueError(f"--lpips-model: {os.path.basename(trunk_path)} is not torchvision's AlexNet "
                                 f"(no {source}); use {LPIPS_FILE}")
            mapped[key] = trunk[source]
        net.net.load_state_dict(mapped)
    return net.eval()


@torch.no_grad()
def lpips_distance(net: Any, a_rgb: np.ndarray, b_rgb: np.ndarray) -> float:
    """LPIPS of two same-size uint8 RGB crops (inputs scaled to [-1, 1] as lpips expects)."""
    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None].float() / 127.5 - 1.0

    return float(net(tensor(a_rgb), tensor(b_rgb)).reshape(-1)[0])
