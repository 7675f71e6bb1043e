"""Make the missing images of an evaluation: in this process, or on ComfyUI servers.

In-process runs use the host's real ``PromptExecutor`` (``host/executor.py``), keeping
one executor so unchanged nodes (the checkpoint, the adapter, face analysis) are cached
between pairs exactly as in a server. Each image is moved into the plan's layout the
moment it exists (``plan.image_path``), so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .plan import Identity, Pair, image_path, record, safe_name, write_atomic
from .remote import Client, Outcome, Task, run_on_servers
from .workflow import PREFIX, PairWorkflow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    pair: Pair
    identity: Identity
    text: str
    seed: int

    @property
    def upload_name(self) -> str:
        """Top level of the input folder: LoadImage lists only that level in older hosts."""
        return f"{PREFIX}_{self.identity.name}{self.identity.path.suffix.lower()}"

    @property
    def tag(self) -> str:
        return safe_name(self.pair.key.replace("/", "__"))


def _deliver(out: Path, job: Job, data: bytes, where: str) -> None:
    write_atomic(image_path(out, job.pair), data)
    record(out, job.pair, prompt=job.text, seed=job.seed, identity_photo=str(job.identity.path), made_by=where)


def generate_local(jobs: Sequence[Job], workflows: dict[str, PairWorkflow], out: Path,
                   progress: Callable[[int, int], None] | None = None) -> None:
    """Run each job's prompt through the host's executor; raises ``PromptError`` on the first failure."""
    import folder_paths

    from ..host.executor import PromptError, Runner

    runner = Runner()
    input_dir = Path(folder_paths.get_input_directory())
    saved_output = folder_paths.get_output_directory()
    work = Path(out) / ".work"
    work.mkdir(parents=True, exist_ok=True)
    folder_paths.set_output_directory(str(work.resolve()))
    try:
        for n, job in enumerate(jobs):
            target = input_dir / job.upload_name
            input_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(job.identity.path, target)
            prompt = workflows[job.pair.config].build(job.upload_name, job.text, job.seed, job.tag)
            try:
                runner.run(prompt)
            except PromptError as exc:
                raise PromptError(f"pair {job.pair.key}: {exc}", exc.node_id, exc.node_type, exc.details) from exc
            made = sorted((work / PREFIX).glob(f"{job.tag}_*.png"), key=lambda p: p.stat().st_mtime)
            if not made:
                raise PromptError(f"pair {job.pair.key}: the workflow saved no image (does its SaveImage node run?)")
            _deliver(out, job, made[-1].read_bytes(), "in-process")
            for path in made:
                path.unlink()
            if progress is not None:
                progress(n + 1, len(jobs))
    finally:
        folder_paths.set_output_directory(saved_output)


def generate_remote(jobs: Sequence[Job], workflows: dict[str, PairWorkflow], out: Path, urls: Sequence[str],
                    job_timeout: float = 900.0, http_timeout: float = 30.0,
                    on_submit: Callable[[Task, Client], None] | None = None) -> Outcome:
    """Spread the jobs over the servers (``remote.run_on_servers``); check every server first."""
    clients = [Client(u, timeout=http_timeout) for u in urls]
    for client in clients:
        client.check()

    def task(job: Job) -> Task:
        def build(client: Client) -> tuple[dict, str]:
            name = client.upload(job.identity.path, job.upload_name)
            wf = workflows[job.pair.config]
            return wf.build(name, job.text, job.seed, job.tag), wf.save

        return Task(job.pair.key, build, lambda data, where: _deliver(out, job, data, where))

    return run_on_servers([task(j) for j in jobs], clients, job_timeout=job_timeout, on_submit=on_submit)
