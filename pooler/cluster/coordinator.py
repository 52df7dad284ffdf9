"""The coordinator interface: who is in the cluster, who owns which pool, config changes.

A coordinator answers four questions for a node, each with the same meaning whatever runs
underneath (ZooKeeper, or file locks on one host):

* membership: :meth:`start` claims a short node index (1..1023, unique among live nodes)
  and publishes this node's :class:`NodeInfo`; :meth:`node_by_index` finds a live node.
* ownership: :meth:`acquire` tries (without queueing) to take the lock of a pool key and
  returns its *epoch*, a number that grows every time the lock changes hands; the lock
  lives as long as the node's session (a ZooKeeper session, a process).
  :meth:`holds` re-checks it authoritatively before a server connection is opened.
* fencing: :meth:`register_backend` records, while the lock is provably held, the backend
  pid of each server connection; a new owner reads the pids of older epochs with
  :meth:`stale_backends` and terminates them before opening its own.
* configuration: :meth:`publish_config` tells every node that the tenant configuration
  changed; ``on_config`` is called on each of them.

Every method may block the calling greenlet (network round trips) and is never called on
the relay's hot path: only at login, server login, cancel and state changes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

#: Node indexes fit in the high bits of a BackendKeyData pid (see pid_prefix).
MAX_INDEX = 1023
PID_SHIFT = 21

SUSPENDED = "suspended"
CONNECTED = "connected"
LOST = "lost"


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_id: str
    index: int
    host: str
    internal_port: int

    def dumps(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def loads(cls, data: bytes) -> NodeInfo:
        doc = json.loads(data.decode())
        return cls(
            str(doc["node_id"]), int(doc["index"]), str(doc["host"]), int(doc["internal_port"])
        )


def key_hash(key: str) -> str:
    """A path-safe, fixed-length name for a pool key (tenant/user/database/mode)."""
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def pid_prefix(index: int) -> int:
    return index << PID_SHIFT


def index_of_pid(pid: int) -> int:
    return (pid >> PID_SHIFT) & MAX_INDEX


class Coordinator:
    """Base class; see the module docstring for the contract."""

    info: NodeInfo
    on_config: Callable[[], None] | None = None
    on_state: Callable[[str], None] | None = None

    def start(self, node_id: str, host: str, internal_port: int) -> NodeInfo:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def acquire(self, key: str) -> int | None:
        raise NotImplementedError

    def owner(self, key: str) -> NodeInfo | None:
        raise NotImplementedError

    def holds(self, key: str, epoch: int) -> bool:
        raise NotImplementedError

    def release(self, key: str) -> None:
        raise NotImplementedError

    def register_backend(self, key: str, epoch: int, pid: int) -> bool:
        return True

    def stale_backends(self, key: str, epoch: int) -> list[int]:
        return []

    def forget_stale(self, key: str, epoch: int) -> None:
        return None

    def node_by_index(self, index: int) -> NodeInfo | None:
        raise NotImplementedError

    def publish_config(self) -> None:
        return None
