"""The ZooKeeper coordinator (kazoo with its gevent handler: calls block only a greenlet).

Layout under the root (``--zk-root``, default /greenvisor):

* ``nodes/<node_id>`` ephemeral, NodeInfo JSON: membership.
* ``index/<n>`` ephemeral, NodeInfo JSON: the node's short index, claimed by creating the
  lowest free one (creation is atomic, so two nodes never share an index).
* ``pools/<hash>/locks/lock-<seq>`` ephemeral sequential, data = owner's node id. The
  owner is the lowest sequence; its sequence number is the epoch (ZooKeeper's counter per
  parent only grows). :meth:`acquire` does not queue: it creates its candidate node and
  deletes it again if it is not the lowest.
* ``pools/<hash>/backends/<epoch>-<pid>`` persistent: each server connection's backend
  pid, created in one transaction with a check that this owner's lock node still exists,
  so a node whose session expired can never register (and so never use) a server.
* ``config_version``: its data is rewritten by :meth:`publish_config`; every node keeps a
  data watch on it.

Session states map to SUSPENDED (connection lost, session maybe alive: stop lending
servers), LOST (session expired: every lock is gone) and CONNECTED.
"""

from __future__ import annotations

import logging
import time

import gevent
from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError
from kazoo.handlers.gevent import SequentialGeventHandler
from kazoo.recipe.watchers import DataWatch

from pooler.cluster.coordinator import (
    CONNECTED,
    LOST,
    MAX_INDEX,
    SUSPENDED,
    Coordinator,
    NodeInfo,
    key_hash,
)

log = logging.getLogger("pooler.cluster")


def _seq(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


class ZkCoordinator(Coordinator):
    def __init__(self, hosts: str, root: str = "/greenvisor", session_timeout: float = 10.0):
        self.root = "/" + root.strip("/")
        self.zk = KazooClient(
            hosts=hosts, timeout=session_timeout, handler=SequentialGeventHandler()
        )
        self.session_timeout = session_timeout
        self.locks: dict[str, tuple[str, int]] = {}  # key -> (lock znode path, epoch)
        self.lost = False
        self._config_seen: bytes | None = None
        self._config_started = False

    # -- membership -----------------------------------------------------------------------

    def start(self, node_id: str, host: str, internal_port: int) -> NodeInfo:
        self.zk.add_listener(self._state_changed)
        self.zk.start(timeout=max(self.session_timeout, 10.0))
        self.zk.ensure_path(f"{self.root}/nodes")
        self.zk.ensure_path(f"{self.root}/index")
        self.zk.ensure_path(f"{self.root}/pools")
        self._register(node_id, host, internal_port)
        try:
            self.zk.create(f"{self.root}/config_version", b"0")
        except NodeExistsError:
            pass
        DataWatch(self.zk, f"{self.root}/config_version", self._config_changed)
        return self.info

    def _register(self, node_id: str, host: str, internal_port: int) -> None:
        for index in range(1, MAX_INDEX + 1):
            info = NodeInfo(node_id or f"n{index}", index, host, internal_port)
            try:
                self.zk.create(f"{self.root}/index/{index}", info.dumps(), ephemeral=True)
            except NodeExistsError:
                continue
            break
        else:
            raise RuntimeError(f"more than {MAX_INDEX} live nodes under {self.root}")
        self.info = info
        path = f"{self.root}/nodes/{info.node_id}"
        try:
            self.zk.create(path, info.dumps(), ephemeral=True)
        except NodeExistsError:
            # A previous session of ours (or a node with the same id) not expired yet.
            self.zk.set(path, info.dumps())

    def node_by_index(self, index: int) -> NodeInfo | None:
        if index == self.info.index:
            return self.info
        try:
            data, _ = self.zk.get(f"{self.root}/index/{index}")
        except (NoNodeError, KazooException):
            return None
        return NodeInfo.loads(data)

    def close(self) -> None:
        self.on_state = None  # leaving on purpose: no LOST reaction to our own goodbye
        self.locks.clear()
        try:
            self.zk.stop()  # ends the session: every ephemeral znode goes at once
            self.zk.close()
        except Exception:  # noqa: BLE001 - closing on the way out
            log.debug("closing the ZooKeeper client failed", exc_info=True)

    # -- session state ----------------------------------------------------------------------

    def _state_changed(self, state: str) -> None:
        # Called by kazoo; must not block: the node reacts in a greenlet of its own.
        if state == KazooState.SUSPENDED:
            gevent.spawn(self._notify, SUSPENDED)
        elif state == KazooState.LOST:
            self.lost = True
            self.locks.clear()
            gevent.spawn(self._notify, LOST)
        else:
            gevent.spawn(self._connected)

    def _connected(self) -> None:
        if self.lost:
            # A new session: our ephemeral znodes are gone; join again under the same id.
            self.lost = False
            try:
                self._register(self.info.node_id, self.info.host, self.info.internal_port)
            except Exception:  # noqa: BLE001
                log.exception("cannot register this node again after the session expired")
        self._notify(CONNECTED)

    def _notify(self, state: str) -> None:
        if self.on_state is not None:
            self.on_state(state)

    # -- ownership ------------------------------------------------------------------------

    def _base(self, key: str) -> str:
        return f"{self.root}/pools/{key_hash(key)}"

    def acquire(self, key: str) -> int | None:
        held = self.locks.get(key)
        if held is not None:
            return held[1]
        base = self._base(key)
        self.zk.ensure_path(f"{base}/locks")
        self.zk.ensure_path(f"{base}/backends")
        path = self.zk.create(
            f"{base}/locks/lock-", self.info.node_id.encode(), ephemeral=True, sequence=True
        )
        name = path.rsplit("/", 1)[1]
        try:
            children = self.zk.get_children(f"{base}/locks")
            lowest = min(children, key=_seq)
            if lowest != name:
                self.zk.delete(path)
                return None
        except BaseException:
            self.zk.delete_async(path)  # interrupted (timeout): leave no orphan candidate
            raise
        epoch = _seq(name)
        self.locks[key] = (path, epoch)
        try:
            self.zk.set(base, key.encode())  # the readable key, for operators
        except KazooException:
            pass
        return epoch

    def owner(self, key: str) -> NodeInfo | None:
        if key in self.locks:
            return self.info
        base = self._base(key)
        try:
            children = self.zk.get_children(f"{base}/locks")
            if not children:
                return None
            lowest = f"{base}/locks/{min(children, key=_seq)}"
            data, _ = self.zk.get(lowest)
            if data.decode() == self.info.node_id:
                # A candidate of ours that an interrupted acquire left: not a lock we hold.
                self.zk.delete_async(lowest)
                return None
            info, _ = self.zk.get(f"{self.root}/nodes/{data.decode()}")
        except NoNodeError:
            return None
        return NodeInfo.loads(info)

    def holds(self, key: str, epoch: int) -> bool:
        held = self.locks.get(key)
        if held is None or held[1] != epoch or self.zk.state != KazooState.CONNECTED:
            return False
        try:
            return self.zk.exists(held[0]) is not None
        except KazooException:
            return False

    def release(self, key: str) -> None:
        held = self.locks.pop(key, None)
        if held is not None:
            try:
                self.zk.delete(held[0])
            except KazooException:
                pass

    # -- fencing --------------------------------------------------------------------------

    def register_backend(self, key: str, epoch: int, pid: int) -> bool:
        held = self.locks.get(key)
        if held is None or held[1] != epoch:
            return False
        tx = self.zk.transaction()
        tx.check(held[0], 0)  # our lock znode, never written: version 0 while it exists
        tx.create(f"{self._base(key)}/backends/{epoch}-{pid}", b"")
        try:
            results = tx.commit()
        except KazooException:
            return False
        return not any(isinstance(r, Exception) for r in results)

    def _stale(self, key: str, epoch: int) -> list[str]:
        try:
            names = self.zk.get_children(f"{self._base(key)}/backends")
        except NoNodeError:
            return []
        return [n for n in names if int(n.split("-", 1)[0]) < epoch]

    def stale_backends(self, key: str, epoch: int) -> list[int]:
        return [int(n.split("-", 1)[1]) for n in self._stale(key, epoch)]

    def forget_stale(self, key: str, epoch: int) -> None:
        for name in self._stale(key, epoch):
            try:
                self.zk.delete(f"{self._base(key)}/backends/{name}")
            except NoNodeError:
                pass

    # -- configuration --------------------------------------------------------------------

    def publish_config(self) -> None:
        self.zk.set(f"{self.root}/config_version", str(time.time()).encode())

    def _config_changed(self, data: bytes | None, stat: object) -> None:
        if not self._config_started:
            self._config_started = True  # the watch's first call reports the current data
            self._config_seen = data
            return
        if data != self._config_seen:
            self._config_seen = data
            if self.on_config is not None:
                gevent.spawn(self.on_config)
