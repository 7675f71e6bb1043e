"""Generate evaluation pairs on running ComfyUI servers through their HTTP API.

Why: 720 images per configuration is a job for several GPUs. Each server gets one
worker thread; workers take pairs from one shared queue, so a fast server simply does
more. A task is one API prompt: one pair, or several identities of one prompt (a batch,
``evaluation/generate.py``). A server that stops answering (connection refused/reset, or
no answer within the HTTP timeout) is dropped and the task it held goes back to the
queue for the others: a task's images are written only once all are fetched, each
atomically, so nothing is lost and nothing is delivered twice. A prompt the server
*refuses or fails* is not a dead server: it stops the run with the server's message (the
same workflow would fail everywhere); only a batch that ran out of memory is split in
halves and queued again.

Endpoints (present in every ComfyUI since 2023): ``POST /upload/image`` (the identity
photo, into the server's input folder), ``POST /prompt``, ``GET /history/<id>``,
``GET /view``. Every loop is bounded by a deadline.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


class ServerDown(RuntimeError):
    """The server does not answer: its pair is handed to another server."""


class PromptFailed(RuntimeError):
    """The server answered, but refused or failed the prompt: the run stops with this message."""


class Client:
    """The few ComfyUI endpoints the evaluation needs, with timeouts on every call."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex
        self.uploaded: dict[str, str] = {}

    def _request(self, path: str, data: bytes | None = None, headers: dict | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace")
            what = "refused the prompt" if path == "/prompt" else f"answered {path} with"
            raise PromptFailed(f"{self.url} {what} (HTTP {exc.code}): {_explain(body)}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            raise ServerDown(f"{self.url} does not answer ({getattr(exc, 'reason', exc)})") from None

    def check(self, node: str = "InfiniteIDApply") -> None:
        """Reachable and with this pack installed, or a message saying which."""
        try:
            info = json.loads(self._request(f"/object_info/{node}"))
        except ServerDown as exc:
            raise ServerDown(f"--server {self.url} is unreachable ({str(exc).split('(', 1)[-1].rstrip(')')}); start "
                             f"ComfyUI there (with --listen for another machine) or drop it from --server") from None
        except (PromptFailed, ValueError) as exc:
            raise PromptFailed(f"--server {self.url} is not a ComfyUI server ({exc})") from None
        if node not in info:
            raise PromptFailed(f"--server {self.url} does not have the Infinite-ID nodes ({node}); install this "
                               f"pack in its custom_nodes and restart it")

    def upload(self, path: Path, name: str) -> str:
        """Upload an input image once; returns the name LoadImage should use."""
        if name in self.uploaded:
            return self.uploaded[name]
        boundary = uuid.uuid4().hex
        parts = []
        for key, value in (("type", "input"), ("overwrite", "true")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                     f'Content-Type: application/octet-stream\r\n\r\n'.encode() + Path(path).read_bytes() + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        answer = json.loads(self._request("/upload/image", b"".join(parts),
                                          {"Content-Type": f"multipart/form-data; boundary={boundary}"}))
        stored = answer["name"] if not answer.get("subfolder") else f"{answer['subfolder']}/{answer['name']}"
        self.uploaded[name] = stored
        return stored

    def submit(self, prompt: dict) -> str:
        body = json.dumps({"prompt": prompt, "client_id": self.client_id}).encode()
        answer = json.loads(self._request("/prompt", body, {"Content-Type": "application/json"}))
        if answer.get("node_errors"):
            raise PromptFailed(f"{self.url} refused the prompt: {_explain(json.dumps(answer))}")
        return str(answer["prompt_id"])

    def wait(self, prompt_id: str, timeout: float, poll: float = 0.25) -> dict:
        """The prompt's history entry once it has finished; bounded by ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = json.loads(self._request(f"/history/{prompt_id}")).get(prompt_id)
            if entry:
                status = entry.get("status", {})
                if status.get("status_str") == "error":
                    raise PromptFailed(f"{self.url} failed the prompt: {_explain(json.dumps(status))}")
                if status.get("completed", True) and entry.get("outputs"):
                    return entry
            time.sleep(poll)
        raise ServerDown(f"{self.url} did not finish prompt {prompt_id} within {timeout:.0f}s")

    def image(self, entry: dict, node_id: str) -> bytes:
        return self.images(entry, node_id)[0]

    def images(self, entry: dict, node_id: str) -> list[bytes]:
        """Every image the SaveImage node saved, in batch order (all fetched before any is used)."""
        images = entry.get("outputs", {}).get(node_id, {}).get("images", [])
        if not images:
            raise PromptFailed(f"{self.url}: the prompt finished without an image from SaveImage node {node_id}")
        found = []
        for info in images:
            query = urllib.parse.urlencode({"filename": info["filename"], "subfolder": info.get("subfolder", ""),
                                            "type": info.get("type", "output")})
            found.append(self._request(f"/view?{query}"))
        return found


def _explain(body: str) -> str:
    """The useful part of a ComfyUI error answer (node errors and exception messages)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:500]
    lines = []
    if isinstance(data.get("error"), dict):
        lines.append(str(data["error"].get("message", "")))
    for nid, err in (data.get("node_errors") or {}).items():
        for e in err.get("errors", []):
            lines.append(f"node {nid} ({err.get('class_type')}): {e.get('message')}: {e.get('details')}")
    for message in data.get("messages", []) if isinstance(data.get("messages"), list) else []:
        if isinstance(message, list) and message and message[0] == "execution_error":
            info = message[1]
            lines.append(f"{info.get('node_type')} (node {info.get('node_id')}): {info.get('exception_message')}")
    return "; ".join(line for line in lines if line) or body[:500]


def out_of_memory(message: str, details: object = None) -> bool:
    """Whether a failed prompt ran out of (GPU) memory: then a smaller batch may fit."""
    text = f"{message} {details.get('exception_type', '') if isinstance(details, dict) else ''}".lower()
    return "out of memory" in text or "outofmemory" in text or "allocation on device" in text


@dataclass
class Task:
    """One API prompt to run: ``build(client)`` gives (prompt, SaveImage node id); ``deliver`` stores the
    images it saved (in batch order). ``pairs`` are the pair keys it makes (``[key]`` when not given);
    ``split`` gives smaller tasks for the same pairs when it ran out of memory (none: it cannot)."""

    key: str
    build: Callable[[Client], tuple[dict, str]]
    deliver: Callable[[list[bytes], str], None]
    pairs: list[str] = field(default_factory=list)
    split: Callable[[], list[Task]] | None = None

    def __post_init__(self) -> None:
        self.pairs = self.pairs or [self.key]


@dataclass
class Outcome:
    done: dict[str, str] = field(default_factory=dict)  # pair key -> server URL
    dead: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    error: str = ""


def run_on_servers(tasks: Sequence[Task], clients: Sequence[Client], job_timeout: float = 900.0,
                   on_submit: Callable[[Task, Client], None] | None = None) -> Outcome:
    """Spread ``tasks`` over ``clients`` until all are done, all servers are dead, or a prompt fails.

    ``job_timeout`` is per pair: a task of n pairs may take n times as long.
    """
    queue = list(tasks)
    outcome = Outcome()
    in_flight = 0
    lock = threading.Condition()

    def worker(client: Client) -> None:
        nonlocal in_flight
        while True:
            with lock:
                while not queue and in_flight and not outcome.error:
                    lock.wait(0.5)
                if not queue or outcome.error:
                    return
                task = queue.pop(0)
                in_flight += 1
            try:
                prompt, save_node = task.build(client)
                prompt_id = client.submit(prompt)
                if on_submit is not None:
                    on_submit(task, client)
                images = client.images(client.wait(prompt_id, job_timeout * len(task.pairs)), save_node)
                task.deliver(images, client.url)
            except ServerDown as exc:
                log.warning("%s; its %s %s goes to the other servers", exc,
                            "pair" if len(task.pairs) == 1 else "pairs", task.key)
                with lock:
                    queue.insert(0, task)
                    in_flight -= 1
                    outcome.dead.append(client.url)
                    lock.notify_all()
                return
            except Exception as exc:  # noqa: BLE001 - a failed prompt stops the run with its message
                smaller = (task.split() if isinstance(exc, PromptFailed) and task.split is not None
                           and out_of_memory(str(exc)) else [])
                with lock:
                    in_flight -= 1
                    lock.notify_all()
                    if smaller:  # a batch too big for this GPU: the same pairs in halves
                        log.warning("%s ran out of memory for %s; trying %d smaller batches", client.url, task.key,
                                    len(smaller))
                        queue[:0] = smaller
                        continue
                    what = "pair" if len(task.pairs) == 1 else "pairs"
                    outcome.error = outcome.error or f"{what} {task.key}: {exc}"
                    queue.insert(0, task)
                return
            with lock:
                outcome.done.update({key: client.url for key in task.pairs})
                in_flight -= 1
                lock.notify_all()

    threads = [threading.Thread(target=worker, args=(c,), name=f"eval-{c.url}", daemon=True) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outcome.left = [key for t in queue for key in t.pairs]
    return outcome
