"""Keeps a node's config snapshot in step with the metadata DB.

Every ``interval`` seconds the version counter is read (one primary-key SELECT); when it
moved, the whole snapshot is rebuilt and applied. Database calls run on a dedicated OS
thread so a slow metadata DB never stalls the relay; the pooler never queries the ORM per
client connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gevent.event import Event
from gevent.threadpool import ThreadPool

from pooler.config import ConfigSnapshot
from pooler.node import Node

log = logging.getLogger("pooler.configsync")


class ConfigSync:
    def __init__(
        self,
        node: Node,
        version: Callable[[], int],
        load: Callable[[], ConfigSnapshot],
        interval: float = 0.5,
    ) -> None:
        self.node = node
        self.version = version
        self.load = load
        self.interval = interval
        self.thread = ThreadPool(1)  # one thread: SQLite connections stay on their thread
        self.failing = False
        self.woken = Event()

    def wake(self) -> None:
        """Check now (a cluster peer announced a change) instead of at the next poll."""
        self.woken.set()

    def load_now(self) -> ConfigSnapshot:
        return self.thread.apply(self.load)

    def run(self) -> None:
        while True:
            self.woken.wait(self.interval)
            self.woken.clear()
            self.poll_once()

    def poll_once(self) -> None:
        try:
            current = self.thread.apply(self.version)
            if current != self.node.registry.snapshot.version:
                self.node.apply_snapshot(self.thread.apply(self.load))
            if self.failing:
                log.warning("metadata DB reachable again; configuration is live")
            self.failing = False
        except Exception as exc:  # noqa: BLE001 - keep serving with the last good config
            if not self.failing:
                log.error(
                    "cannot read the tenant configuration (%s: %s); serving with the "
                    "last one loaded until the metadata DB answers again",
                    exc.__class__.__name__,
                    exc,
                )
            self.failing = True
