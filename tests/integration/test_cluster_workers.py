"""`runpooler --workers 2` without ZooKeeper: two node processes sharing the ports
(SO_REUSEPORT) through the local coordinator, under a supervisor that restarts nothing."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests import conftest
from tests.support.pg import PgCluster
from tests.support.pooler import PoolerProcess, tenant_doc, user_doc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROLE = "wrk"
PW = "wrkPw4tests"
POOL_SIZE = 2


@pytest.fixture(scope="module")
def workers(
    tmp_path_factory: pytest.TempPathFactory, pg: PgCluster, sqlite_template: Path
) -> Iterator[PoolerProcess]:
    pg.create_role(ROLE, PW)
    pg.create_database(ROLE, owner=ROLE)
    users = [user_doc(ROLE, PW, "transaction", pool_size=POOL_SIZE)]
    doc = {"tenants": [tenant_doc("wt", ROLE, pg.port, users)]}
    node = PoolerProcess(
        tmp_path_factory.mktemp("workers"),
        doc,
        extra_args=["--workers", "2"],
        sqlite_template=sqlite_template,
    )
    node.start(timeout=90)  # three Django processes start on a busy CI machine
    conftest._live_poolers.append(node)
    try:
        node.wait_for_log("joined as node n2", timeout=60)
        node.wait_for_log("joined as node n1", timeout=5)
        yield node
    finally:
        node.stop()
        conftest._live_poolers.remove(node)


def role_backends(pg: PgCluster) -> int:
    rows = pg.execute(f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{ROLE}'")
    return int(rows[0][0])


def query_all(node: PoolerProcess, count: int) -> list[Any]:
    conns = [node.connect(f"{ROLE}.wt", PW, ROLE) for _ in range(count)]
    for conn in conns:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        conn.commit()
    return conns


def test_two_workers_serve_one_pool_within_its_size(workers: PoolerProcess, pg: PgCluster) -> None:
    conns = query_all(workers, 16)
    try:
        assert role_backends(pg) <= POOL_SIZE
        text = workers.log_text()
        assert text.count("this node now owns") == 1  # one owner; the other worker relays
    finally:
        for conn in conns:
            conn.close()


def test_a_dead_worker_is_logged_not_restarted_and_the_other_takes_over(
    workers: PoolerProcess, pg: PgCluster
) -> None:
    match = re.search(r"supervisor started 2 workers \(pids (\d+), (\d+)\)", workers.log_text())
    assert match, workers.log_tail()
    pids = [int(match.group(1)), int(match.group(2))]
    os.kill(pids[0], signal.SIGKILL)
    workers.wait_for_log("exited with -9 and is not restarted", timeout=5)
    deadline = time.monotonic() + 10
    while True:  # connections the kernel had queued for the dead worker fail; retry
        try:
            conns = query_all(workers, 6)
            break
        except psycopg2.OperationalError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    try:
        assert role_backends(pg) <= POOL_SIZE
    finally:
        for conn in conns:
            conn.close()
    assert workers.stop() == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pids[1], 0)
