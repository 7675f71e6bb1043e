"""Make the missing images of an evaluation: in this process, or on ComfyUI servers.

In-process runs use the host's real ``PromptExecutor`` (``host/executor.py``), keeping
one executor so unchanged nodes (the checkpoint, the adapter, face analysis) are cached
between pairs exactly as in a server. Each image is moved into the plan's layout the
moment it exists (``plan.image_path``), so an interrupted run resumes where it stopped.

Pairs of one configuration, prompt and seed are made ``batch`` at a time in one API
prompt (a :class:`Call`, below; ``evaluation/batching.py`` builds its prompt); each of its images is still
written atomically as its own pair, so resuming after a partly written batch batches
only the missing pairs. A batch that runs out of memory is split in halves and the run
goes on with the smaller size.
"""
from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .plan import Pair, ReferencePhoto, image_path, record, safe_name, write_atomic
from .remote import Client, Outcome, PromptFailed, Task, out_of_memory, run_on_servers
from .workflow import PREFIX, PairWorkflow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    pair: Pair
    identity: ReferencePhoto
    text: str
    seed: int

    @property
    def upload_name(self) -> str:
        """Top level of the input folder: LoadImage lists only that level in older hosts."""
        return f"{PREFIX}_{self.identity.name}{self.identity.path.suffix.lower()}"


@dataclass(frozen=True)
class Call:
    """One API prompt: jobs of one configuration, prompt and seed, one image (row) each."""

    jobs: tuple[Job, ...]

    @property
    def key(self) -> str:
        """The pair's key, or ``config/a+b+c/NN`` for several identities."""
        first = self.jobs[0].pair
        if len(self.jobs) == 1:
            return first.key
        return f"{first.config}/{'+'.join(j.pair.identity for j in self.jobs)}/{first.prompt_index:02d}"

    @property
    def tag(self) -> str:
        """The saved file names' prefix: unique per call, bounded in length."""
        tag = safe_name(self.key.replace("/", "__"))
        if len(tag) > MAX_TAG:
            import hashlib

            tag = f"{tag[:MAX_TAG - 17]}_{hashlib.sha1(tag.encode()).hexdigest()[:16]}"
        return tag

    def split(self, size: int) -> list[Call]:
        size = max(1, size)
        return [Call(self.jobs[i:i + size]) for i in range(0, len(self.jobs), size)]

    def build(self, workflows: dict[str, PairWorkflow], names: Sequence[str]) -> dict:
        job = self.jobs[0]
        photos = names[0] if len(self.jobs) == 1 else list(names)
        return workflows[job.pair.config].build(photos, job.text, job.seed, self.tag)


MAX_TAG = 120


def plan_calls(jobs: Sequence[Job], workflows: dict[str, PairWorkflow], batch: int) -> list[Call]:
    """Group jobs of one configuration, prompt and seed, ``batch`` per call, in the jobs' order.

    A configuration whose workflow cannot batch identities (``PairWorkflow.batching``)
    makes one pair per call, said once in the log with the reason.
    """
    if batch <= 1:
        return [Call((job,)) for job in jobs]
    reasons = {}
    for name in dict.fromkeys(job.pair.config for job in jobs):
        path = workflows[name].batching()
        if isinstance(path, str):
            reasons[name] = path
            log.info("configuration %s: one pair per sampling call, not %d (%s)", name, batch, path)
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        if job.pair.config in reasons:
            groups[("single", job.pair.key)] = [job]
        else:
            groups.setdefault((job.pair.config, job.pair.prompt_index, job.text, job.seed), []).append(job)
    return [call for group in groups.values() for call in Call(tuple(group)).split(batch)]


def _deliver(out: Path, job: Job, data: bytes, where: str, rows: int = 1) -> None:
    write_atomic(image_path(out, job.pair), data)
    record(out, job.pair, prompt=job.text, seed=job.seed, identity_photo=str(job.identity.path), made_by=where,
           batch=rows)


def generate_local(jobs: Sequence[Job], workflows: dict[str, PairWorkflow], out: Path,
                   progress: Callable[[int, int], None] | None = None, batch: int = 1) -> None:
    """Run each call's prompt through the host's executor; raises ``PromptError`` on the first failure."""
    import folder_paths

    from ..host.executor import PromptError, Runner

    runner = Runner()
    input_dir = Path(folder_paths.get_input_directory())
    saved_output = folder_paths.get_output_directory()
    work = Path(out) / ".work"
    work.mkdir(parents=True, exist_ok=True)
    folder_paths.set_output_directory(str(work.resolve()))
    queue, done, cap = plan_calls(jobs, workflows, batch), 0, max(1, batch)
    try:
        while queue:
            call = queue.pop(0)
            if len(call.jobs) > cap:
                queue[:0] = call.split(cap)
                continue
            input_dir.mkdir(parents=True, exist_ok=True)
            for job in call.jobs:
                shutil.copyfile(job.identity.path, input_dir / job.upload_name)
            prompt = call.build(workflows, [job.upload_name for job in call.jobs])
            try:
                runner.run(prompt)
            except PromptError as exc:
                if len(call.jobs) > 1 and out_of_memory(str(exc), exc.details):
                    cap = max(1, len(call.jobs) // 2)
                    log.warning("%s: out of memory for %d identities in one call; going on with %d per call",
                                call.key, len(call.jobs), cap)
                    queue[:0] = call.split(cap)
                    continue
                raise PromptError(f"{_what(call)}: {exc}", exc.node_id, exc.node_type, exc.details) from exc
            made = sorted((work / PREFIX).glob(f"{call.tag}_*.png"))  # SaveImage numbers a batch in row order
            if len(made) < len(call.jobs):
                raise PromptError(f"{_what(call)}: the workflow saved {len(made)} image(s) for {len(call.jobs)} "
                                  f"pair(s) (does its SaveImage node run, on the identity image?)")
            for job, path in zip(call.jobs, made[-len(call.jobs):]):
                _deliver(out, job, path.read_bytes(), "in-process", len(call.jobs))
            for path in made:
                path.unlink()
            done += len(call.jobs)
            if progress is not None:
                progress(done, len(jobs))
    finally:
        folder_paths.set_output_directory(saved_output)


def _what(call: Call) -> str:
    return f"pair {call.key}" if len(call.jobs) == 1 else f"pairs {call.key}"


def generate_remote(jobs: Sequence[Job], workflows: dict[str, PairWorkflow], out: Path, urls: Sequence[str],
                    job_timeout: float = 900.0, http_timeout: float = 30.0,
                    on_submit: Callable[[Task, Client], None] | None = None, batch: int = 1) -> Outcome:
    """Spread the calls over the servers (``remote.run_on_servers``); check every server first.

    ``job_timeout`` is per pair: a call of n pairs may take n times as long.
    """
    clients = [Client(u, timeout=http_timeout) for u in urls]
    for client in clients:
        client.check()

    def task(call: Call) -> Task:
        def build(client: Client) -> tuple[dict, str]:
            names = [client.upload(job.identity.path, job.upload_name) for job in call.jobs]
            return call.build(workflows, names), workflows[call.jobs[0].pair.config].save

        def deliver(images: list[bytes], where: str) -> None:
            if len(images) < len(call.jobs):
                raise PromptFailed(f"{where}: the prompt saved {len(images)} image(s) for {len(call.jobs)} pair(s)")
            for job, data in zip(call.jobs, images[-len(call.jobs):]):
                _deliver(out, job, data, where, len(call.jobs))

        def split() -> list[Task]:
            return [task(part) for part in call.split(len(call.jobs) // 2)] if len(call.jobs) > 1 else []

        return Task(call.key, build, deliver, pairs=[job.pair.key for job in call.jobs], split=split)

    return run_on_servers([task(c) for c in plan_calls(jobs, workflows, batch)], clients, job_timeout=job_timeout,
                          on_submit=on_submit)
