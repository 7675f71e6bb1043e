"""The switches of ``InfiniteIDApply``, validated once when the node runs."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..attention.functional import ADAIN_MODES, ATTENTION_MODES
from ..unet.layers import SDXL_BLOCKS


@dataclass(frozen=True)
class PatchSettings:
    """What ``InfiniteIDApply`` was asked to do (see README, "InfiniteIDApply inputs")."""

    weight: float = 1.0
    attention_mode: str = "mixed"
    merge: bool = True
    adain: str = "off"
    start_percent: float = 0.0
    end_percent: float = 1.0
    mix_start_percent: float = 0.0
    mix_end_percent: float = 1.0
    blocks: frozenset = field(default_factory=lambda: frozenset(SDXL_BLOCKS))

    def __post_init__(self) -> None:
        if self.attention_mode not in ATTENTION_MODES:
            raise ValueError(f"attention_mode must be one of {ATTENTION_MODES}, not '{self.attention_mode}'")
        if self.adain not in ADAIN_MODES:
            raise ValueError(f"adain must be one of {ADAIN_MODES}, not '{self.adain}'")
        if not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight):
            raise ValueError(f"weight: must be a finite number, not {self.weight!r}")
        for name in ("start_percent", "end_percent", "mix_start_percent", "mix_end_percent"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}: must be a number between 0 and 1, not {value!r}")
        for lo, hi, what in ((self.start_percent, self.end_percent, "start_percent/end_percent"),
                             (self.mix_start_percent, self.mix_end_percent, "mix_start_percent/mix_end_percent")):
            if not (0.0 <= lo <= hi <= 1.0):
                raise ValueError(f"{what}: must satisfy 0 <= start <= end <= 1; got {lo} and {hi}")
        if not self.blocks:
            raise ValueError("blocks: no block selected; use 'all' or a list such as 'input, middle_0'")
