"""The running node of this process, for the HTTP side (API, admin, metrics) to read.

runpooler registers the node and its listeners here; a process that is not a pooler (tests,
`manage.py shell`) has none, and the HTTP views say so instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pooler.node import Node


@dataclass
class Runtime:
    node: Node | None = None
    listeners: list[Any] = field(default_factory=list)  # pooler.listener.Listener


current = Runtime()


def get_node() -> Node | None:
    return current.node


def listeners() -> list[dict[str, Any]]:
    """name, host, port and whether each listener is serving."""
    return [
        {
            "name": item.name,
            "host": item.host,
            "port": item.port,
            "serving": bool(getattr(item.server, "started", False)),
        }
        for item in current.listeners
    ]
