"""Real client programs through the pooler: psql and pgbench from the Postgres installation."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PASSWORDS
from tests.support.pg import PgCluster
from tests.support.pooler import PoolerProcess

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def client_env(password: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = password
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


def run(cmd: list[str], password: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, env=client_env(password), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def bindir(pg: PgCluster) -> Path:
    for program in ("psql", "pgbench"):
        if not (pg.bindir / program).is_file():
            pytest.skip(f"{program} is not installed in {pg.bindir}")
    return pg.bindir


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_psql_with_a_connection_url(pooler: PoolerProcess, bindir: Path, mode: str) -> None:
    url = pooler.url("app1user.t1", PASSWORDS["app1user"], "app1", mode)
    out = run([str(bindir / "psql"), url, "-X", "-At", "-c", "select 1"], "unused")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_psql_runs_a_script_with_a_transaction(pooler: PoolerProcess, bindir: Path) -> None:
    script = (
        "BEGIN;\n"
        "CREATE TEMP TABLE psql_t (x int) ON COMMIT DROP;\n"
        "INSERT INTO psql_t SELECT generate_series(1, 100);\n"
        "SELECT sum(x) FROM psql_t;\n"
        "COMMIT;\n"
        "SELECT current_user;\n"
    )
    out = subprocess.run(
        [str(bindir / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1",
         "-h", pooler.host, "-p", str(pooler.transaction_port),
         "-U", "app1user.t1", "-d", "app1"],
        input=script, env=client_env(PASSWORDS["app1user"]),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "BEGIN",
        "CREATE TABLE",
        "INSERT 0 100",
        "5050",
        "COMMIT",
        "app1user",
    ]


def test_psql_shows_the_login_error(pooler: PoolerProcess, bindir: Path) -> None:
    url = pooler.url("app1user.t1", "wrongPw4tests", "app1")
    out = run([str(bindir / "psql"), url, "-X", "-At", "-c", "select 1"], "unused")
    assert out.returncode == 2
    assert "password authentication failed" in out.stderr


def pgbench_figures(output: str) -> tuple[int, int]:
    """(transactions processed, failed transactions) from pgbench 15's summary."""
    processed = re.search(r"number of transactions actually processed: (\d+)", output)
    failed = re.search(r"number of failed transactions: (\d+)", output)
    assert processed and failed, output
    return int(processed.group(1)), int(failed.group(1))


@pytest.fixture(scope="module")
def pgbench_db(pg: PgCluster, bindir: Path) -> str:
    """pgbench tables in app1, created straight against Postgres."""
    out = run(
        [str(bindir / "pgbench"), "-i", "-s", "1", "-q",
         "-h", pg.host, "-p", str(pg.port), "-U", "app1user", "app1"],
        PASSWORDS["app1user"], timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return "app1"


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["simple", "extended", "prepared"])
def test_pgbench_through_the_transaction_port(
    pooler: PoolerProcess, bindir: Path, pgbench_db: str, protocol: str
) -> None:
    """50 clients over a pool of 5 servers: TPC-B-like load, no failed transaction."""
    out = run(
        [str(bindir / "pgbench"), "-n", "-M", protocol, "-c", "50", "-j", "2", "-T", "5",
         "-h", pooler.host, "-p", str(pooler.transaction_port),
         "-U", "app1user.t1", pgbench_db],
        PASSWORDS["app1user"], timeout=90,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    processed, failed = pgbench_figures(out.stdout)
    assert failed == 0, out.stdout
    assert processed > 0, out.stdout
    assert "number of failed transactions: 0" in out.stdout
