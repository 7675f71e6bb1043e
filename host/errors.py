"""The pack's user-facing error type, low enough for every room to raise or recognise it.

The host glue (``host/executor.py`` drops the executor's traceback for these), the nodes
(which wrap ``ValueError``s into it with :func:`node_error`) and the CLI all need the one
class.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator


class InfiniteIDError(ValueError):
    """A user-facing error: the message names the node and, where known, the input.

    ComfyUI shows an error's type as ``module.ClassName`` (``execution.full_type_name``)
    and names a custom node pack's modules by their file path, so a class defined here
    would show the user's directory tree in every message. Declared as a builtin, the
    type reads ``InfiniteIDError`` and the message ``InfiniteIDApply: ...``.
    """

    __module__ = "builtins"


@contextlib.contextmanager
def node_error(node: str) -> Iterator[None]:
    """Re-raise ``ValueError``s from inside a node with the node's name in front."""
    try:
        yield
    except InfiniteIDError:
        raise
    except ValueError as exc:
        message = str(exc)
        raise InfiniteIDError(message if message.startswith(node) else f"{node}: {message}") from exc
