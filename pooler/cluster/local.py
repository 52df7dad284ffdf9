"""The local coordinator: the cluster of the processes of one host, held together by flock.

Everything lives in a runtime directory shared by the node processes (``--workers`` makes
one). A lock is an ``flock`` on a file, and the kernel releases it when the process that
holds it dies, like ZooKeeper deletes an ephemeral znode when its session ends:

* ``nodes/<index>.lock`` (held) + ``nodes/<index>.json`` (NodeInfo): membership. A node is
  live while somebody holds its lock file; the index is the lowest free one.
* ``pools/<hash>.lock`` (held by the owner), ``pools/<hash>.epoch`` (a counter the new
  owner increments while holding the lock: monotonic per pool key), ``pools/<hash>.owner``
  (the owner's index).
* ``config_version``: rewritten by :meth:`publish_config`; every node polls its contents
  (a ``stat``-sized read every 100 ms) and calls ``on_config`` when it changes.

A process cannot lose a lock it holds while it lives, so there is nothing to fence: a
stopped (SIGSTOP) owner keeps its pools, and nobody else opens their servers meanwhile.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import gevent

from pooler.cluster.coordinator import MAX_INDEX, Coordinator, NodeInfo, key_hash


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


class LocalCoordinator(Coordinator):
    def __init__(self, directory: str | Path, poll_interval: float = 0.1) -> None:
        self.dir = Path(directory)
        self.poll_interval = poll_interval
        self.locks: dict[str, tuple[int, int]] = {}  # key -> (fd, epoch)
        self.index_fd: int | None = None
        self.watcher: gevent.Greenlet | None = None
        self.closed = False

    # -- membership -----------------------------------------------------------------------

    def start(self, node_id: str, host: str, internal_port: int) -> NodeInfo:
        (self.dir / "nodes").mkdir(parents=True, exist_ok=True)
        (self.dir / "pools").mkdir(parents=True, exist_ok=True)
        for index in range(1, MAX_INDEX + 1):
            fd = _try_lock(self.dir / "nodes" / f"{index}.lock")
            if fd is not None:
                self.index_fd = fd
                break
        else:
            raise RuntimeError(f"more than {MAX_INDEX} live nodes in {self.dir}")
        self.info = NodeInfo(node_id or f"n{index}", index, host, internal_port)
        _write_atomic(self.dir / "nodes" / f"{index}.json", self.info.dumps())
        self.watcher = gevent.spawn(self._watch_config, _read(self.dir / "config_version"))
        return self.info

    def node_by_index(self, index: int) -> NodeInfo | None:
        if index == self.info.index:
            return self.info
        data = _read(self.dir / "nodes" / f"{index}.json")
        if data is None:
            return None
        fd = _try_lock(self.dir / "nodes" / f"{index}.lock")
        if fd is not None:  # nobody holds it: that node is gone
            os.close(fd)
            return None
        return NodeInfo.loads(data)

    def close(self) -> None:
        self.closed = True
        if self.watcher is not None:
            self.watcher.kill(block=False)
        for key in list(self.locks):
            self.release(key)
        if self.index_fd is not None:
            os.close(self.index_fd)
            self.index_fd = None

    # -- ownership ------------------------------------------------------------------------

    def acquire(self, key: str) -> int | None:
        held = self.locks.get(key)
        if held is not None:
            return held[1]
        base = self.dir / "pools" / key_hash(key)
        fd = _try_lock(base.with_suffix(".lock"))
        if fd is None:
            return None
        epoch_file = base.with_suffix(".epoch")
        epoch = int((_read(epoch_file) or b"0").decode() or 0) + 1
        _write_atomic(epoch_file, str(epoch).encode())
        _write_atomic(base.with_suffix(".owner"), str(self.info.index).encode())
        self.locks[key] = (fd, epoch)
        return epoch

    def owner(self, key: str) -> NodeInfo | None:
        held = self.locks.get(key)
        if held is not None:
            return self.info
        data = _read((self.dir / "pools" / key_hash(key)).with_suffix(".owner"))
        if not data:
            return None
        return self.node_by_index(int(data.decode()))

    def holds(self, key: str, epoch: int) -> bool:
        held = self.locks.get(key)
        return held is not None and held[1] == epoch

    def release(self, key: str) -> None:
        held = self.locks.pop(key, None)
        if held is not None:
            os.close(held[0])

    # -- configuration --------------------------------------------------------------------

    def publish_config(self) -> None:
        path = self.dir / "config_version"
        current = int((_read(path) or b"0").decode() or 0)
        _write_atomic(path, str(current + 1).encode())

    def _watch_config(self, last: bytes | None) -> None:
        path = self.dir / "config_version"
        while not self.closed:
            gevent.sleep(self.poll_interval)
            data = _read(path)
            if data != last:
                last = data
                if self.on_config is not None:
                    self.on_config()
