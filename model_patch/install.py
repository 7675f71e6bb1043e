"""Installing the dual-stream patch on a ComfyUI ``ModelPatcher``, and checking it before sampling.

``apply_patch`` clones the model and sets, for every patched layer, a self-attention and
a cross-attention replacement plus the per-call wrapper, all sharing one
``DualStreamPatch`` (adapter, identity, settings). On hosts with keyed wrappers
(``comfy.patcher_extension``) the per-call wrapper is a keyed ``APPLY_MODEL`` wrapper and
a keyed ``OUTER_SAMPLE`` wrapper turns every sampling of the MODEL into the dual-stream
run (``model_patch/outer_sample.py``); older hosts get the single ``model_function_wrapper`` slot.
Nothing heavy is stored in ``model_options``: the adapter weights stay where the adapter
loader put them and are read once per run.

``check_before_sampling`` runs when a sampler starts: nodes applied after
``InfiniteIDApply`` that would silently switch part of the method off are refused there,
with the node order to change.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..adapter.model import Adapter
from ..host import compat
from ..identity.types import Identity, recorded_adapters
from ..unet.layers import SDXL_LAYERS, LayerKey
from ..unet.walk import sdxl_widths
from .replacements import CrossAttentionPatch, SelfAttentionPatch
from .settings import PatchSettings
from .wrapper import APPLY_KEY, ApplyModelWrapper, UnetWrapper

log = logging.getLogger(__name__)

PATCH_KEY = "infinite_id_patch"  # the DualStreamPatch, in transformer_options (found even under other wrappers)

# ComfyUI's memory estimate for a patched model, relative to the same model unpatched
# with the same (doubled) batch: the peak extra memory of one U-Net call measured by
# bench/memory_extra.py on the SDXL-proportioned model, worst case (mixed attention with
# AdaIN-mean: 1.12x; without AdaIN 1.08x; docs/BENCHMARKS.md, "Memory").
MEMORY_FACTOR = 1.12


@dataclass
class DualStreamPatch:
    """What one ``InfiniteIDApply`` installed: shared by its replacements and wrapper."""

    adapter: Adapter
    identity: Identity
    settings: PatchSettings
    layers: tuple[LayerKey, ...]

    def __deepcopy__(self, memo: dict) -> DualStreamPatch:
        return self


def find_patch(model: Any) -> DualStreamPatch | None:
    """The Infinite-ID patch a ``ModelPatcher`` carries, if any."""
    return model.model_options.get("transformer_options", {}).get(PATCH_KEY)


def _block_level(table: dict, layers: tuple[LayerKey, ...]) -> list:
    """Two-part ``(block, index)`` keys on blocks we patch: our three-part keys would hide them."""
    blocks = {key[:2] for key in layers}
    return [key for key in table if isinstance(key, tuple) and len(key) == 2 and key in blocks]


def apply_patch(model: Any, adapter: Adapter, identity: Identity, settings: PatchSettings) -> Any:
    """Return a clone of ``model`` (a ``ModelPatcher``) with the dual-stream patch installed."""
    if find_patch(model) is not None:
        raise ValueError("this MODEL already carries an Infinite-ID patch. To use several people, combine "
                         "their identities with 'InfiniteID Mix' and apply once.")
    if identity.cond.shape[-1] != adapter.token_dim:
        raise ValueError(
            f"identity: its tokens are {identity.cond.shape[-1]}-d but the adapter '{adapter.name}' expects "
            f"{adapter.token_dim}-d: encode the identity with the adapter you apply")
    try:
        widths = sdxl_widths(model.model.diffusion_model)
    except ValueError as exc:
        raise ValueError(f"model: {exc}") from None
    wrong = [key for i, key in enumerate(SDXL_LAYERS) if widths[key][0] != adapter.kv.to_k[i].out_features]
    if wrong:
        key = wrong[0]
        raise ValueError(f"adapter: does not match the MODEL: layer {key} is {widths[key][0]} wide in the MODEL but "
                         f"{adapter.kv.to_k[SDXL_LAYERS.index(key)].out_features} in the adapter '{adapter.name}'.")
    layers = tuple(key for key in SDXL_LAYERS if key[:2] in settings.blocks)
    patched = model.clone()
    options = patched.model_options.setdefault("transformer_options", {})
    existing = options.get("patches_replace", {})
    attn1 = existing.get("attn1", {})
    clash = [key for key in layers if key in attn1] + _block_level(attn1, layers)
    if clash:
        raise ValueError(f"model: another node already replaces self-attention on {len(clash)} layer(s) (first: "
                         f"{clash[0]}); Infinite-ID's mixed attention cannot share them. Remove that node, or use a "
                         "separate MODEL branch for it.")
    patch = DualStreamPatch(adapter=adapter, identity=identity, settings=settings, layers=layers)
    attn2 = existing.get("attn2", {})
    for key in layers:
        patched.set_model_attn1_replace(SelfAttentionPatch(patch, key), *key)
        previous = attn2.get(key, attn2.get(key[:2]))
        patched.set_model_attn2_replace(CrossAttentionPatch(patch, key, previous), *key)
    if compat.has_keyed_wrappers():
        from .outer_sample import OuterSample  # outer_sample imports this module: import at use

        compat.add_keyed_wrappers(patched, APPLY_KEY, OuterSample(patch), ApplyModelWrapper(patch))
    else:
        patched.set_model_unet_function_wrapper(UnetWrapper(patch, patched.model_options.get("model_function_wrapper")))
    patched.model_options["transformer_options"][PATCH_KEY] = patch
    compat.scale_memory_estimate(patched, MEMORY_FACTOR)
    return patched


def per_call_wrapper(model: Any) -> Any:
    """The per-call wrapper a patched ``ModelPatcher`` holds: keyed ``APPLY_MODEL`` or the slot's."""
    if compat.has_keyed_wrappers():
        found = compat.keyed_wrappers(model, "apply_model", APPLY_KEY)
        return found[0] if found else None
    return model.model_options.get("model_function_wrapper")


def check_before_sampling(model: Any, node: str) -> DualStreamPatch:
    """Refuse what nodes applied after ``InfiniteIDApply`` did to its patch, naming the order to change."""
    patch = find_patch(model)
    if patch is None:
        raise ValueError(f"{node}: model: the MODEL has no Infinite-ID patch: connect it through 'InfiniteID Apply' "
                         "(which takes the adapter and the identity) before this sampler")
    after = "a node applied after 'InfiniteID Apply'"
    move = "Connect that node before 'InfiniteID Apply' (between the checkpoint and Apply), or remove it."
    if compat.has_keyed_wrappers():
        # A later model_function_wrapper chains: it calls apply_model, which runs the keyed wrappers.
        ours = [w for w in compat.keyed_wrappers(model, "apply_model", APPLY_KEY)
                if isinstance(w, ApplyModelWrapper) and w.patch is patch]
        if len(ours) != 1:
            raise ValueError(f"{node}: model: {after} removed or duplicated Infinite-ID's '{APPLY_KEY}' model wrapper "
                             f"({len(ours)} found), which would disable the identity stream. {move}")
    else:
        wrapper = model.model_options.get("model_function_wrapper")
        if not (isinstance(wrapper, UnetWrapper) and wrapper.patch is patch):
            raise ValueError(f"{node}: model: {after} replaced the U-Net wrapper Infinite-ID needs "
                             f"({type(wrapper).__name__}), which would disable the identity stream. {move}")
    replaced = model.model_options["transformer_options"].get("patches_replace", {})
    for name, ours in (("attn1", SelfAttentionPatch), ("attn2", CrossAttentionPatch)):
        table = replaced.get(name, {})
        foreign = [key for key in patch.layers
                   if not (isinstance(table.get(key), ours) and table[key].patch is patch)]
        if foreign:
            what = "self-attention" if name == "attn1" else "cross-attention"
            raise ValueError(f"{node}: model: {after} replaced {what} on {len(foreign)} layer(s) (first: "
                             f"{foreign[0]}, by {type(table.get(foreign[0])).__name__}), which switches the method "
                             f"off there. {move}")
        block_level = [key for key in _block_level(table, patch.layers)
                       if not any(getattr(table.get(k), "previous", None) is table[key] for k in patch.layers)]
        if block_level:
            raise ValueError(f"{node}: model: {after} set a block-level {name} replacement on {block_level[0]}, "
                             f"which Infinite-ID's per-layer replacements would silently override. {move}")
    return patch


def check_identity_adapter(identity: Identity, adapter: Adapter) -> None:
    """An identity's tokens only mean something to the adapter whose mappers made them.

    A different adapter format is refused. A different file name alone is only logged: a
    renamed copy of the same file, or a later checkpoint of the same training run, is a
    legitimate use that names cannot tell from a wrong one.
    """
    formats, names = recorded_adapters(identity)
    own_format = adapter.info.get("format", "")
    if formats and own_format and own_format != "demo" and own_format not in formats:
        raise ValueError(
            f"identity: it was encoded with a {'/'.join(sorted(formats))} adapter "
            f"('{', '.join(sorted(names))}') but the adapter connected here, "
            f"'{adapter.name}', is {own_format}: re-encode the identity with this adapter (InfiniteID Encode), or "
            "connect the adapter it was encoded with")
    if names and adapter.name not in names:
        log.warning("InfiniteIDApply: the identity was encoded with adapter '%s' and is applied with '%s'; if these "
                    "are not the same weights, re-encode the identity with '%s'",
                    ", ".join(sorted(names)), adapter.name, adapter.name)
