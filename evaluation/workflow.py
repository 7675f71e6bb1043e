"""One API prompt per (configuration, identity, prompt): a shipped-style workflow with
its reference photo, positive prompt and seed overridden.

Why by role and not by node id: users compare their own workflows. The reference is the
``LoadImage`` titled "Reference photo" (or the only one), the prompt is the text node
feeding the sampler's ``positive`` input, the seed every sampler's ``seed``/``noise_seed``,
and the image kept is the ``SaveImage`` titled "...identity..." (or the only one); other
``SaveImage`` nodes are dropped so the text-stream image is not computed twice as output.
Several identities of one prompt can share one API prompt (``evaluation/batching.py``).
"""
from __future__ import annotations

import copy
from pathlib import Path

from ..workflow_io.files import apply_overrides, load_workflow
from .batching import IdentityPath, add_identity_rows, identity_path
from .plan import Config

REFERENCE_TITLE = "reference photo"
PREFIX = "infiniteid_eval"


def _title(node: dict) -> str:
    return str(node.get("_meta", {}).get("title", "")).lower()


def _one(prompt: dict, class_type: str, title_part: str, what: str, workflow: Path) -> str:
    ids = [nid for nid, n in prompt.items() if n.get("class_type") == class_type]
    titled = [nid for nid in ids if title_part in _title(prompt[nid])]
    if len(titled) >= 1:
        return titled[0]
    if len(ids) == 1:
        return ids[0]
    raise ValueError(f"{workflow}: {len(ids)} {class_type} nodes; title the {what} one "
                     f"'{title_part.capitalize()}' so the evaluation knows which it is")


def positive_text_nodes(prompt: dict) -> list[str]:
    """Text nodes linked to a sampler's ``positive`` input."""
    found = []
    for node in prompt.values():
        link = node.get("inputs", {}).get("positive")
        if isinstance(link, list) and link and str(link[0]) in prompt:
            src = prompt[str(link[0])]
            if "text" in src.get("inputs", {}) and str(link[0]) not in found:
                found.append(str(link[0]))
    return found


class PairWorkflow:
    """A configuration's workflow, checked once, stamped per pair."""

    def __init__(self, config: Config, extra_sets: tuple[str, ...] = ()) -> None:
        prompt, _ = load_workflow(config.workflow)
        apply_overrides(prompt, list(extra_sets) + list(config.sets))
        self.config = config
        self.reference = _one(prompt, "LoadImage", REFERENCE_TITLE, "reference", config.workflow)
        self.texts = positive_text_nodes(prompt)
        if not self.texts:
            raise ValueError(f"{config.workflow}: no text node feeds a sampler's 'positive' input; the evaluation "
                             f"sets the prompt there")
        self.save = _one(prompt, "SaveImage", "identity", "result", config.workflow)
        for nid in [n for n, node in prompt.items() if node.get("class_type") == "SaveImage" and n != self.save]:
            del prompt[nid]
        self.seeds = [(nid, key) for nid, node in prompt.items() for key in ("seed", "noise_seed")
                      if key in node.get("inputs", {}) and not isinstance(node["inputs"][key], list)]
        self.base = prompt

    def batching(self) -> IdentityPath | str:
        """The identity path copied per identity, or why this workflow makes one pair per call.

        Read from ``base`` when asked: the demo swaps loaders in ``base`` after loading.
        """
        return identity_path(self.base, self.reference)

    def build(self, reference_name: str | list[str], text: str, seed: int, tag: str) -> dict:
        """The API prompt for one pair, or for several identities (a list of photos) of one prompt.

        ``tag`` makes the saved file names unique. With several photos the SaveImage gets
        one image per photo, in the photos' order; the workflow must be batchable
        (:meth:`batching`).
        """
        photos = [reference_name] if isinstance(reference_name, str) else list(reference_name)
        prompt = copy.deepcopy(self.base)
        prompt[self.reference]["inputs"]["image"] = photos[0]
        for nid in self.texts:
            prompt[nid]["inputs"]["text"] = text
        for nid, key in self.seeds:
            prompt[nid]["inputs"][key] = int(seed)
        prompt[self.save]["inputs"]["filename_prefix"] = f"{PREFIX}/{tag}"
        if len(photos) > 1:
            path = identity_path(prompt, self.reference)
            if isinstance(path, str):
                raise ValueError(f"{self.config.workflow}: cannot batch identities: {path}")
            add_identity_rows(prompt, path, self.reference, photos)
        return prompt
