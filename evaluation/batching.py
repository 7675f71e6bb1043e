"""Several identities of one (configuration, prompt, seed) in one API prompt.

Why: in a benchmark every identity of a prompt is sampled with the same prompt and the
same seed (``--seed``), so the pairs differ only by the reference photo. The workflow's
``reference photo -> InfiniteIDEncode`` path is copied once per identity, the copies are
joined by ``InfiniteIDIdentityBatch`` into the Apply node's ``identity`` input, and the
sampler (``batch_noise`` ``auto``) gives every row the noise a pair made alone gets, with
one text-stream row for all: row i equals pair i made alone (tests/test_shared_noise.py),
in one sampling call instead of n.

Only paths known to give one row per photo are batched: the identity must come straight
from an ``InfiniteIDEncode`` (which averages its images into one identity) that descends
from the reference photo. Anything else (a Mix or Interpolate after Encode, an identity
from a file, an identity also used elsewhere, a latent batch, ``batch_noise`` ``per
row``) makes one pair per call; :func:`identity_path` says why.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

APPLY = "InfiniteIDApply"
ENCODE = "InfiniteIDEncode"
BATCH_NODE = "InfiniteIDIdentityBatch"
BATCH_SOCKETS = 8  # InfiniteIDIdentityBatch's identity_1..identity_8 (nodes/mixing.py MAX_BATCH)


@dataclass(frozen=True)
class IdentityPath:
    """The part of a workflow copied once per identity, and where its identity goes."""

    nodes: tuple[str, ...]  # from the reference LoadImage to the Encode node, in prompt order
    source: tuple[str, int]  # (Encode node id, output slot) of the identity
    consumers: tuple[tuple[str, str], ...]  # (Apply node id, input name) taking that identity


def _links(node: dict):
    for name, value in node.get("inputs", {}).items():
        if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
            yield name, str(value[0]), value[1]


def _label(prompt: dict, nid: str) -> str:
    return f"node {nid} ({prompt[nid].get('class_type')})"


def identity_path(prompt: dict, reference: str) -> IdentityPath | str:
    """The reference photo's identity path in ``prompt``, or why pairs of it cannot be batched."""
    consumers: dict[str, list[tuple[str, str]]] = {}
    for nid, node in prompt.items():
        for name, src, _ in _links(node):
            consumers.setdefault(src, []).append((nid, name))
    applies = [(nid, "identity") for nid, node in prompt.items()
               if node.get("class_type") == APPLY and isinstance(node.get("inputs", {}).get("identity"), list)]
    if not applies:
        return f"no {APPLY} node takes an identity"
    sources = {(str(prompt[nid]["inputs"]["identity"][0]), prompt[nid]["inputs"]["identity"][1]) for nid, _ in applies}
    if len(sources) > 1:
        return f"the {APPLY} nodes take different identities ({', '.join(sorted(s for s, _ in sources))})"
    (source, slot), = sources
    if source not in prompt:
        return f"{APPLY}'s identity comes from node {source}, which is not in the workflow"
    if prompt[source].get("class_type") != ENCODE:
        return (f"{APPLY}'s identity comes from {_label(prompt, source)}, not straight from {ENCODE}: only one "
                f"encoded photo per pair is copied per identity (a mix or blend is one identity of several inputs)")
    below, todo = {reference}, [reference]  # everything computed from the reference photo
    while todo:
        for nid, _ in consumers.get(todo.pop(), []):
            if nid not in below:
                below.add(nid)
                todo.append(nid)
    if source not in below:
        return f"{_label(prompt, source)} is not computed from the reference photo (node {reference})"
    above, todo = {source}, [source]  # everything the identity is computed from
    while todo:
        for _, src, _ in _links(prompt[todo.pop()]):
            if src in prompt and src not in above:
                above.add(src)
                todo.append(src)
    path = [nid for nid in prompt if nid in below and nid in above]
    wanted = set(applies)
    for nid in path:
        for user, name in consumers.get(nid, []):
            if user not in path and (user, name) not in wanted:
                return (f"{_label(prompt, nid)} also feeds {_label(prompt, user)} (input '{name}'), which would see "
                        f"only the first identity of a batch")
    for (user, name) in applies:
        if prompt[user]["inputs"][name][1] != slot:
            return f"{_label(prompt, user)} takes another output of {_label(prompt, source)}"
    for nid, node in prompt.items():
        inputs = node.get("inputs", {})
        if inputs.get("batch_noise") == "per row":
            return (f"{_label(prompt, nid)} has batch_noise 'per row': each identity row would get other noise than "
                    f"its pair made alone")
        size = inputs.get("batch_size")
        if isinstance(size, int) and not isinstance(size, bool) and size != 1:
            return (f"{_label(prompt, nid)} makes a batch of {size} latents; batched pairs need a latent batch of 1 "
                    f"(it is expanded to the identities)")
    return IdentityPath(tuple(path), (source, slot), tuple(applies))


def _id_maker(prompt: dict):
    """New node ids: numbers after the largest when the workflow's ids are numbers, else ``<id>_b<k>``."""
    numeric = all(nid.isdigit() for nid in prompt)
    counter = [max((int(nid) for nid in prompt), default=0) if numeric else 0]

    def new_id(hint: str) -> str:
        if numeric:
            counter[0] += 1
            return str(counter[0])
        k, candidate = 1, f"{hint}_b1"
        while candidate in prompt:
            k += 1
            candidate = f"{hint}_b{k}"
        return candidate

    return new_id


def add_identity_rows(prompt: dict, path: IdentityPath, reference: str, photos: list[str]) -> None:
    """Copy ``path`` for ``photos[1:]`` (``prompt`` already holds ``photos[0]``) and batch the identities.

    The batch joins at most ``BATCH_SOCKETS`` identities per node; more are chained (a
    batch input adds all its rows), so any number of photos works.
    """
    if len(photos) < 2:
        return
    new_id = _id_maker(prompt)
    outputs = [list(path.source)]
    for photo in photos[1:]:
        renamed = {nid: new_id(nid) for nid in path.nodes}
        for nid in path.nodes:
            node = copy.deepcopy(prompt[nid])
            for name, src, out_slot in list(_links(node)):
                if src in renamed:
                    node["inputs"][name] = [renamed[src], out_slot]
            prompt[renamed[nid]] = node
        prompt[renamed[reference]]["inputs"]["image"] = photo
        outputs.append([renamed[path.source[0]], path.source[1]])
    link, queue = None, outputs
    while queue:
        take = BATCH_SOCKETS - (1 if link else 0)
        parts, queue = ([link] if link else []) + queue[:take], queue[take:]  # always 2 or more
        nid = new_id("batch")
        prompt[nid] = {"class_type": BATCH_NODE,
                       "inputs": {f"identity_{i + 1}": part for i, part in enumerate(parts)},
                       "_meta": {"title": "InfiniteID Identity Batch (evaluation)"}}
        link = [nid, 0]
    for user, name in path.consumers:
        prompt[user]["inputs"][name] = list(link)
