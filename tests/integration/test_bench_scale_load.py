"""bench/scale_load.py, the load process of `python -m bench.scale`: idle clients logged in
with SCRAM through a real pooler from several loopback source addresses, held, released."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import PoolerFactory
from tests.support.pg import PgCluster
from tests.support.pooler import REPO_ROOT, PoolerProcess, tenant_doc, user_doc

pytestmark = [pytest.mark.integration]

ROLE = "scaleload"
PW = "scaleLoadPw1"


@pytest.fixture(scope="module")
def node(pooler_factory: PoolerFactory, pg: PgCluster) -> PoolerProcess:
    pg.create_role(ROLE, PW)
    pg.create_database(ROLE, owner=ROLE)
    users = [user_doc(ROLE, PW, "transaction", pool_size=1)]
    doc = {"tenants": [tenant_doc(t, ROLE, pg.port, users) for t in ("sa", "sb")]}
    return pooler_factory(doc)


def loader(node: PoolerProcess, password: str, count: int) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "bench.scale_load", "--port", str(node.transaction_port)]
    argv += ["--source", "127.0.0.2,127.0.0.3", "--user", f"{ROLE}.sa,{ROLE}.sb"]
    argv += ["--database", ROLE, "--count", str(count), "--timeout", "30", "--hold", "60"]
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=dict(os.environ, PGPASSWORD=password),
    )


def result_lines(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stdout is not None
    return [ln for ln in proc.stdout.read().splitlines() if not ln.startswith("opened")]


def test_idle_clients_log_in_from_several_sources_and_are_held(node: PoolerProcess) -> None:
    proc = loader(node, PW, 40)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        while first.startswith("opened"):
            first = proc.stdout.readline()
        assert first.startswith("ready 40 "), first + node.log_tail()
        assert proc.stdin is not None
        proc.stdin.close()  # the parent lets go
        assert result_lines(proc) == ["held 40 of 40"]
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_wrong_password_is_reported_and_the_loader_exits_1(node: PoolerProcess) -> None:
    proc = loader(node, "not-the-password", 3)
    try:
        lines = result_lines(proc)
        assert proc.wait(30) == 1
        assert len(lines) == 1 and lines[0].startswith("error after 0 logins"), lines
        assert "28P01" in lines[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
