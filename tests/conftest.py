"""Shared fixtures for process-level tests: one Postgres cluster per session, pooler factories."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.pg import PgCluster, find_bindir
from tests.support.pooler import PoolerProcess, both_modes, migrated_sqlite, tenant_doc

#: Every password in the test cluster, by role (letters and digits only: safe in URLs).
PASSWORDS = {
    "postgres": "superPw4tests",
    "app1user": "app1Pw4tests",
    "app2user": "app2Pw4tests",
    "trustuser": "trustPw4tests",
    "pwuser": "plainPw4tests",
    "md5user": "md5Pw4tests",
}

#: How each role's password is stored (pg_hba.conf picks the auth method by role name).
ROLE_STORAGE = {
    "app1user": "scram-sha-256",
    "app2user": "scram-sha-256",
    "trustuser": "scram-sha-256",
    "pwuser": "scram-sha-256",
    "md5user": "md5",
}

PoolerFactory = Callable[..., PoolerProcess]

_live_poolers: list[PoolerProcess] = []


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    """One Postgres cluster for the session: databases app1/app2 and the auth-method roles."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    cluster = PgCluster(PASSWORDS["postgres"], bindir)
    try:
        cluster.start()
        for role, storage in ROLE_STORAGE.items():
            cluster.create_role(role, PASSWORDS[role], storage)
        cluster.create_database("app1", owner="app1user")
        cluster.create_database("app2", owner="app2user")
        for role in ("trustuser", "pwuser", "md5user"):
            cluster.grant_connect("app1", role)
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite metadata DB, copied by each pooler instead of migrating again."""
    return migrated_sqlite(tmp_path_factory.mktemp("meta-template") / "meta.sqlite3")


@pytest.fixture(scope="module")
def pooler_factory(
    tmp_path_factory: pytest.TempPathFactory, pg: PgCluster, sqlite_template: Path
) -> Iterator[PoolerFactory]:
    """Start poolers for this module: ``make(tenants_doc, **PoolerProcess kwargs)``."""
    started: list[PoolerProcess] = []

    def make(tenants: dict[str, Any], **kwargs: Any) -> PoolerProcess:
        kwargs.setdefault("sqlite_template", sqlite_template)
        process = PoolerProcess(tmp_path_factory.mktemp("pooler"), tenants, **kwargs)
        started.append(process)
        process.start()
        _live_poolers.append(process)
        return process

    try:
        yield make
    finally:
        for process in started:
            process.stop()
            if process in _live_poolers:
                _live_poolers.remove(process)


def default_tenants(pg: PgCluster) -> dict[str, Any]:
    """t1 -> app1 as app1user, t2 -> app2 as app2user; both modes, pool_size 5."""
    return {
        "tenants": [
            tenant_doc("t1", "app1", pg.port, both_modes("app1user", PASSWORDS["app1user"])),
            tenant_doc("t2", "app2", pg.port, both_modes("app2user", PASSWORDS["app2user"])),
        ]
    }


@pytest.fixture(scope="module")
def pooler(pooler_factory: PoolerFactory, pg: PgCluster) -> PoolerProcess:
    """The default pooler of a module (tenants t1 and t2)."""
    return pooler_factory(default_tenants(pg))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that look inside the plain-Python hot path (bytecode counts) are deselected, not
    skipped, while the compiled one runs: `make test` runs the unit tests once more with
    GREENVISOR_PURE_PYTHON=1, where they run (pooler/hotpath.py)."""
    from pooler import hotpath

    if not hotpath.compiled:
        return
    kept = [item for item in items if item.get_closest_marker("pure_python") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On a failure, attach the tail of every running pooler's log to the report. With
    GREENVISOR_NO_SKIP=1 (set by .ci/run) a skip is a failure: every skip here means a
    missing install, which must never pass CI silently."""
    report = yield
    if report.skipped and os.environ.get("GREENVISOR_NO_SKIP") == "1":
        report.outcome = "failed"
        report.longrepr = f"skipped, and skips are failures in CI: {report.longrepr}"
    if report.failed:
        for process in _live_poolers:
            report.sections.append((f"pooler log tail ({process.log_path})", process.log_tail(60)))
    return report
