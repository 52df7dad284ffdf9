"""A node's reactions to its coordinator session: pause, resume, drop; who opens servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from pooler.cluster.cluster import Cluster
from pooler.cluster.coordinator import CONNECTED, LOST, SUSPENDED, index_of_pid
from pooler.cluster.local import LocalCoordinator
from pooler.config import TenantConfig, UserConfig
from pooler.node import Node, NodeSettings
from pooler.pool import PoolKey
from pooler.server import UpstreamError

pytestmark = pytest.mark.unit

USER = UserConfig("app", "app", "secret")
TENANT = TenantConfig("t1", "127.0.0.1", 1, users=(USER,))


def member(tmp_path: Path) -> tuple[Node, Cluster]:
    node = Node(NodeSettings())
    cluster = Cluster(node, LocalCoordinator(tmp_path), b"k" * 32)
    cluster.start("", "127.0.0.1", 1)
    return node, cluster


def test_first_login_owns_and_others_are_told_the_owner(tmp_path: Path) -> None:
    (node_a, a), (_node_b, b) = member(tmp_path), member(tmp_path)
    key = PoolKey("t1", "app", "db", "transaction")
    assert a.owner_for(key) is None and key in a.owned
    assert b.owner_for(key) == a.info
    pid, _ = node_a.new_backend_key()
    assert index_of_pid(pid) == a.info.index
    a.close()
    b.close()


def test_suspended_pauses_owned_pools_connected_resumes_lost_drops(tmp_path: Path) -> None:
    node, cluster = member(tmp_path)
    key = PoolKey("t1", "app", "db", "transaction")
    assert cluster.owner_for(key) is None
    pool = node.pool_for(TENANT, USER, "db", "transaction")
    cluster._on_state(SUSPENDED)
    assert pool.paused
    with pytest.raises(LookupError):  # no new ownership while cut off
        cluster.owner_for(PoolKey("t1", "app", "other", "transaction"))
    with pytest.raises(UpstreamError):  # and no server is opened
        cluster.open_server(pool, node._target(TENANT, USER, "db"))
    cluster._on_state(CONNECTED)
    assert not pool.paused
    cluster._on_state(LOST)
    assert pool.closed and key not in node.pools and not cluster.owned
    cluster.close()


def test_a_node_that_does_not_own_the_pool_opens_no_server(tmp_path: Path) -> None:
    (_node_a, a), (node_b, b) = member(tmp_path), member(tmp_path)
    key = PoolKey("t1", "app", "db", "transaction")
    assert a.owner_for(key) is None
    pool = node_b.pool_for(TENANT, USER, "db", "transaction")  # a stray pool on b
    with pytest.raises(UpstreamError) as err:
        b.open_server(pool, node_b._target(TENANT, USER, "db"))
    assert err.value.sqlstate == "57P03"
    a.close()
    b.close()
