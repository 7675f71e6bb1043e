"""Run an API-format prompt through ComfyUI's real executor, without the web server.

Used by the headless runner and by the tests: the prompt is validated by the host's
``validate_prompt`` and executed by its ``PromptExecutor``, exactly as the server would.
Values a caller wants back are collected by a small output node, ``InfiniteIDCapture``,
which this module registers only when asked (it is not part of the pack's node list).
"""
from __future__ import annotations

import logging
import uuid
from typing import Any

from . import compat
from .errors import InfiniteIDError

log = logging.getLogger(__name__)

CAPTURE_NODE = "InfiniteIDCapture"
# Typed optional inputs: the 2024 validator refuses wildcard ("*") inputs.
_CAPTURE_TYPES = ("LATENT", "IMAGE", "MASK", "INT", "MODEL", "CONDITIONING", "INFINITEID_IDENTITY", "INFINITEID_ADAPTER",
                  "CLIP_VISION_OUTPUT", "FLOAT", "STRING", "GUIDER")


class PromptError(RuntimeError):
    """The host refused or failed the prompt; ``node_type`` names the failing node."""

    def __init__(self, message: str, node_id: str | None = None, node_type: str | None = None,
                 details: Any = None):
        super().__init__(message)
        self.node_id = node_id
        self.node_type = node_type
        self.details = details


class _QuietServer:
    """The few attributes ``PromptExecutor`` expects of the web server; messages are kept."""

    def __init__(self) -> None:
        self.client_id = None
        self.last_node_id = None
        self.messages: list[tuple[str, Any]] = []

    def send_sync(self, event: str, data: Any, sid: Any = None) -> None:
        self.messages.append((event, data))

    def queue_updated(self) -> None:
        pass


_captured: dict[str, dict[str, Any]] = {}


class InfiniteIDCapture:
    """Output node that stores whatever reaches it under ``label`` for the caller."""

    CATEGORY = "InfiniteID/testing"
    RETURN_TYPES = ()
    FUNCTION = "capture"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"label": ("STRING", {"default": "out"})},
            "optional": {t.lower(): (t,) for t in _CAPTURE_TYPES},
        }

    def capture(self, label: str, **values):
        _captured[label] = values
        return {}


def register_capture_node() -> None:
    import nodes

    nodes.NODE_CLASS_MAPPINGS.setdefault(CAPTURE_NODE, InfiniteIDCapture)


def capture(label: str, **inputs: Any) -> dict:
    """An API-format node entry that captures ``inputs`` (links or values) under ``label``."""
    return {"class_type": CAPTURE_NODE, "inputs": {"label": label, **inputs}}


class _QuietUserErrors(logging.Filter):
    """Drop the executor's traceback log lines while it handles a user-facing node error.

    Both hosts log ``!!! Exception during processing !!!`` and the full traceback of any
    node exception. For the pack's own messages (``InfiniteIDError``: the node, the input
    and what to do) the traceback only buries them; the caller reports the message. Any
    other exception keeps its traceback, which is what a bug report needs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        import sys

        if record.levelno < logging.ERROR or not isinstance(sys.exc_info()[1], InfiniteIDError):
            return True
        text = str(record.msg)
        return not (text.startswith("!!! Exception during processing") or text.startswith("Traceback"))


class Runner:
    """One executor kept across prompts, so unchanged nodes are cached as in the server."""

    def __init__(self) -> None:
        register_capture_node()
        self.server = _QuietServer()
        self.executor = compat.make_executor(self.server)

    def run(self, prompt: dict, extra_data: dict | None = None) -> dict[str, dict[str, Any]]:
        """Validate and execute ``prompt``; return what capture nodes received, by label."""
        valid, error, outputs, node_errors = compat.validate_prompt(prompt)
        if not valid:
            raise PromptError(_format_validation(error, node_errors), details=node_errors)
        _captured.clear()
        self.server.messages.clear()
        quiet = _QuietUserErrors()
        root = logging.getLogger()
        root.addFilter(quiet)
        try:
            self.executor.execute(prompt, str(uuid.uuid4()), extra_data or {}, list(outputs))
        finally:
            root.removeFilter(quiet)
        # status_messages holds every event, also those the server would not broadcast.
        for event, data in self.executor.status_messages:
            if event == "execution_error":
                raise PromptError(
                    f"{data.get('node_type')} (node {data.get('node_id')}): {data.get('exception_message')}",
                    node_id=data.get("node_id"), node_type=data.get("node_type"), details=data,
                )
        if not self.executor.success:
            raise PromptError("the prompt did not finish (interrupted)")
        return dict(_captured)


def _format_validation(error: Any, node_errors: dict) -> str:
    lines = [str(error.get("message") if isinstance(error, dict) else error)]
    for node_id, info in (node_errors or {}).items():
        for err in info.get("errors", []):
            lines.append(f"  {info.get('class_type')} (node {node_id}): {err.get('message')}: {err.get('details')}")
    return "\n".join(lines)
