"""The local coordinator: flock-based locks with the semantics of ZooKeeper's ephemerals."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import gevent
import pytest

from pooler.cluster.coordinator import NodeInfo, index_of_pid, key_hash, pid_prefix
from pooler.cluster.local import LocalCoordinator

pytestmark = pytest.mark.unit

KEY = "app.t1/db (transaction)"


def node(tmp_path: Path, port: int = 7000) -> LocalCoordinator:
    coord = LocalCoordinator(tmp_path, poll_interval=0.01)
    coord.start("", "127.0.0.1", port)
    return coord


def test_nodes_get_distinct_lowest_free_indexes(tmp_path: Path) -> None:
    a, b = node(tmp_path, 1), node(tmp_path, 2)
    assert (a.info.index, b.info.index) == (1, 2)
    assert a.node_by_index(2) == NodeInfo("n2", 2, "127.0.0.1", 2)
    a.close()
    assert b.node_by_index(1) is None  # its lock file is free: the node is gone
    c = node(tmp_path, 3)
    assert c.info.index == 1
    b.close()
    c.close()


def test_one_owner_per_key_and_the_epoch_grows(tmp_path: Path) -> None:
    a, b = node(tmp_path), node(tmp_path)
    first = a.acquire(KEY)
    assert first == 1
    assert a.acquire(KEY) == 1  # idempotent while held
    assert b.acquire(KEY) is None
    assert b.owner(KEY) == a.info
    assert a.holds(KEY, 1) and not b.holds(KEY, 1)
    assert b.acquire("another key") == 1  # keys are independent
    a.release(KEY)
    assert b.acquire(KEY) == 2
    assert b.owner(KEY) == b.info and a.owner(KEY) == b.info
    a.close()
    b.close()


def test_a_dead_process_releases_its_locks(tmp_path: Path) -> None:
    """kill -9 of the owner: the kernel drops its flocks, another node takes over."""
    script = (
        "import sys, time\n"
        "from pooler.cluster.local import LocalCoordinator\n"
        "c = LocalCoordinator(sys.argv[1]); c.start('', '127.0.0.1', 1)\n"
        f"assert c.acquire({KEY!r}) == 1\n"
        "print('owner', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "owner"
        b = node(tmp_path)
        assert b.acquire(KEY) is None
        assert b.owner(KEY) is not None and b.owner(KEY).index == 1  # type: ignore[union-attr]
        proc.kill()
        proc.wait(5)
        assert b.owner(KEY) is None  # the owner's node lock went with it
        assert b.acquire(KEY) == 2
        b.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_published_config_changes_reach_every_node(tmp_path: Path) -> None:
    a, b = node(tmp_path), node(tmp_path)
    seen: list[str] = []
    b.on_config = lambda: seen.append("b")
    a.on_config = lambda: seen.append("a")
    a.publish_config()
    deadline = time.monotonic() + 2
    while len(seen) < 2 and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert sorted(seen) == ["a", "b"]
    a.close()
    b.close()


def test_pid_prefix_round_trips_and_keys_hash_to_safe_names() -> None:
    for index in (1, 2, 511, 1023):
        pid = pid_prefix(index) | 0x1FFFFF
        assert 0 < pid < 2**31 and index_of_pid(pid) == index
    assert index_of_pid(12345) == 0
    name = key_hash("we/ird ..\\key")
    assert len(name) == 20 and name.isalnum()
