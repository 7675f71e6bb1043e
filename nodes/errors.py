"""Turn internal errors into messages that name the node, so users know where to look."""
from __future__ import annotations

import contextlib


class InfiniteIDError(ValueError):
    """A user-facing error: the message names the node and, where known, the input."""


@contextlib.contextmanager
def node_error(node: str):
    """Re-raise ``ValueError``s from inside a node with the node's name in front."""
    try:
        yield
    except InfiniteIDError:
        raise
    except ValueError as exc:
        message = str(exc)
        raise InfiniteIDError(message if message.startswith(node) else f"{node}: {message}") from exc
