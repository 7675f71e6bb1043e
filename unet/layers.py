"""Where SDXL's 70 cross-attention layers sit in ComfyUI, in adapter order.

ComfyUI addresses a transformer layer as ``(block, block_index, transformer_index)``.
The middle block is ``("middle", 0)``: one popular pack registers ``("middle", 1)``,
which ComfyUI never sends, and so leaves 10 of 70 layers unpatched.

Adapter files number their per-layer projections in diffusers' attention-processor
order (down blocks, then up blocks, then the middle block), cross-attention layers
taking the odd numbers ``1, 3, ..., 139``. ``SDXL_LAYERS[i]`` is the ComfyUI key of
the layer an adapter stores as ``ip.{2 * i + 1}``.
"""
from __future__ import annotations

BlockKey = tuple[str, int]          # ("input", 4)
LayerKey = tuple[str, int, int]     # ("input", 4, 0)

_SDXL_DEPTHS: list[tuple[BlockKey, int]] = [
    (("input", 4), 2), (("input", 5), 2), (("input", 7), 10), (("input", 8), 10),
    (("output", 0), 10), (("output", 1), 10), (("output", 2), 10),
    (("output", 3), 2), (("output", 4), 2), (("output", 5), 2),
    (("middle", 0), 10),
]

SDXL_LAYERS: list[LayerKey] = [(b, i, t) for (b, i), depth in _SDXL_DEPTHS for t in range(depth)]
SDXL_BLOCKS: list[BlockKey] = [key for key, _ in _SDXL_DEPTHS]
assert len(SDXL_LAYERS) == 70


def adapter_layer_number(layer_index: int) -> int:
    """The ``ip.{n}`` number an adapter file uses for ``SDXL_LAYERS[layer_index]``."""
    return 2 * layer_index + 1


def parse_block_list(spec: str) -> set[BlockKey]:
    """Parse the per-block enable setting.

    ``"all"`` (or empty) enables every block; otherwise a comma-separated list such as
    ``"input_7, input_8, middle_0, output_0"`` or whole groups ``"input, output"``.
    A list that names no block (``",,"``, ``" ; "``) is refused: it would patch nothing
    and the image would silently come out without the identity. Block numbers are ASCII
    digits only (``str.isdigit`` also accepts ``"²"``, which ``int`` cannot read).
    """
    text = (spec or "").strip().lower()
    if text in ("", "all"):
        return set(SDXL_BLOCKS)
    valid = ", ".join(f"{b}_{i}" for b, i in SDXL_BLOCKS)
    chosen: set[BlockKey] = set()
    for item in (part.strip() for part in text.replace(";", ",").split(",")):
        if not item:
            continue
        if item in ("input", "middle", "output"):
            chosen.update(key for key in SDXL_BLOCKS if key[0] == item)
            continue
        name, _, number = item.partition("_")
        key = (name, int(number)) if number.isascii() and number.isdigit() else None
        if key not in SDXL_BLOCKS:
            raise ValueError(f"blocks: unknown block '{item}' in '{spec}'. Use 'all', 'input', 'middle', "
                             f"'output' or any of: {valid}")
        chosen.add(key)
    if not chosen:
        raise ValueError(f"blocks: '{spec}' names no block, so nothing would be patched. Use 'all', 'input', "
                         f"'middle', 'output' or any of: {valid}")
    return chosen
