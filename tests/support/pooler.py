"""The pooler as a subprocess: migrate + applytenants into a private metadata DB, then runpooler."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg2

from tests.support.net import free_port, port_open

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
#: A fixed 32-character key for the tests' metadata DBs (never used outside tests).
TEST_VAULT_KEY = "greenvisor-tests-vault-key-32chr"


class PoolerError(RuntimeError):
    """The pooler (or one of its management commands) failed; the message has its output."""


def manage_env(database_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for `python manage.py ...`: our metadata DB, no inherited PG* vars."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["DATABASE_URL"] = database_url
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("VAULT_ENC_KEY", TEST_VAULT_KEY)  # db_password is encrypted at rest
    env.update(extra or {})
    return env


def migrated_sqlite(path: Path) -> Path:
    """Create ``path`` as a fully migrated SQLite metadata DB (a template for poolers)."""
    run_manage(["migrate", "--noinput", "-v", "0"], manage_env(f"sqlite:///{path}"))
    return path


def run_manage(
    args: Sequence[str], env: Mapping[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `python manage.py args` from the repository root; raise PoolerError on failure."""
    cmd = [sys.executable, "manage.py", *args]
    try:
        out = subprocess.run(
            cmd, cwd=REPO_ROOT, env=dict(env), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise PoolerError(f"`manage.py {' '.join(args)}` did not finish in {timeout} s") from exc
    if out.returncode != 0:
        raise PoolerError(
            f"`manage.py {' '.join(args)}` exited with {out.returncode}:\n"
            f"{out.stdout[-3000:]}{out.stderr[-3000:]}"
        )
    return out


class PoolerProcess:
    """One `manage.py runpooler` subprocess with its own metadata DB and log file.

    ``tenants`` is an applytenants document ({"tenants": [...]}). The three ports are picked
    free (set the attributes before ``start()`` to choose others). ``stop()`` always ends
    the process (SIGTERM, then SIGKILL after 10 s).
    """

    def __init__(
        self,
        workdir: Path,
        tenants: Mapping[str, Any],
        *,
        client_auth: str | None = None,
        database_url: str | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        sqlite_template: Path | None = None,
        migrate: bool = True,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tenants = tenants
        self.client_auth = client_auth
        self.database_url = database_url or f"sqlite:///{self.workdir / 'meta.sqlite3'}"
        # An already migrated SQLite file to start from (saves a `migrate` run per pooler).
        self.sqlite_template = None if database_url else sqlite_template
        self.migrate = migrate  # False: a metadata DB shared with a node already started
        self.extra_args = list(extra_args)
        self.env = manage_env(self.database_url, env)
        self.host = HOST
        self.transaction_port = free_port()
        self.session_port = free_port()
        self.http_port = free_port()
        self.log_path = self.workdir / "pooler.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._docs = itertools.count(1)

    # -- lifecycle ------------------------------------------------------------------------

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "manage.py", "runpooler",
            "--listen", self.host,
            "--proxy-port-transaction", str(self.transaction_port),
            "--proxy-port-session", str(self.session_port),
            "--http-port", str(self.http_port),
        ]  # fmt: skip
        if self.client_auth:
            cmd += ["--client-auth", self.client_auth]
        return cmd + self.extra_args

    def start(self, timeout: float = 30.0) -> PoolerProcess:
        """Migrate, apply the tenants, start runpooler and wait until all three ports accept."""
        if self.sqlite_template is not None:
            shutil.copyfile(self.sqlite_template, self.workdir / "meta.sqlite3")
        elif self.migrate:
            run_manage(["migrate", "--noinput", "-v", "0"], self.env)
        if self.migrate:
            self.apply(self.tenants, settle=False)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        ports = [self.transaction_port, self.session_port, self.http_port]
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise PoolerError(f"runpooler exited with {code} at start:\n{self.log_tail()}")
            if all(port_open(self.host, port) for port in ports):
                return
            time.sleep(0.05)
        raise PoolerError(
            f"runpooler did not open ports {ports} within {timeout} s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; return the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.proc = None
        return proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> PoolerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- configuration --------------------------------------------------------------------

    def apply(self, doc: Mapping[str, Any], settle: bool = True, timeout: float = 5.0) -> int:
        """Run applytenants with ``doc``; return the new config version.

        With ``settle`` wait until the running pooler logs that it applied that version
        (the contract promises ~1 s); raise PoolerError if it does not within ``timeout``.
        """
        path = self.workdir / f"tenants-{next(self._docs)}.json"
        path.write_text(json.dumps(doc, indent=2))
        out = run_manage(["applytenants", str(path)], self.env)
        match = re.search(r"config version (\d+)", out.stdout)
        version = int(match.group(1)) if match else -1
        if settle and self.alive():
            self.wait_for_log(f"configuration version {version} applied", timeout)
        return version

    # -- log ------------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, needle: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_text():
                return
            time.sleep(0.05)
        raise PoolerError(f"the pooler log never showed {needle!r}:\n{self.log_tail()}")

    # -- client helpers -------------------------------------------------------------------

    def port(self, mode: str) -> int:
        return self.transaction_port if mode == "transaction" else self.session_port

    def dsn(self, user: str, password: str, dbname: str, mode: str = "transaction") -> str:
        """A libpq keyword DSN through this pooler (``user`` is already "<alias>.<tenant>")."""
        return (
            f"host={self.host} port={self.port(mode)} user={user} password={password} "
            f"dbname={dbname} connect_timeout=10"
        )

    def url(self, user: str, password: str, dbname: str, mode: str = "transaction") -> str:
        return f"postgresql://{user}:{password}@{self.host}:{self.port(mode)}/{dbname}"

    def connect(
        self, user: str, password: str, dbname: str, mode: str = "transaction", **kwargs: Any
    ) -> Any:
        """A psycopg2 connection through this pooler (not in autocommit mode)."""
        return psycopg2.connect(self.dsn(user, password, dbname, mode), **kwargs)

    def connect_eventually(
        self, user: str, password: str, dbname: str, mode: str = "transaction", timeout: float = 3.0
    ) -> tuple[Any, float]:
        """Retry a login every 50 ms until it works (e.g. after a config change); return the
        connection and the seconds it took. The last error is raised after ``timeout``."""
        started = time.monotonic()
        while True:
            try:
                conn = self.connect(user, password, dbname, mode)
            except psycopg2.OperationalError:
                if time.monotonic() - started > timeout:
                    raise
                time.sleep(0.05)
            else:
                return conn, time.monotonic() - started


# -- applytenants documents -----------------------------------------------------------------


def user_doc(
    db_user: str, password: str, mode: str = "transaction", **fields: Any
) -> dict[str, Any]:
    """One user entry of an applytenants document (pool_size 5 unless given)."""
    doc: dict[str, Any] = {
        "db_user": db_user,
        "db_password": password,
        "mode_type": mode,
        "pool_size": 5,
    }
    doc.update(fields)
    return doc


def both_modes(db_user: str, password: str, **fields: Any) -> list[dict[str, Any]]:
    """The same user in transaction and session mode."""
    return [user_doc(db_user, password, mode, **fields) for mode in ("transaction", "session")]


def tenant_doc(
    external_id: str, database: str, port: int, users: Sequence[Mapping[str, Any]], **fields: Any
) -> dict[str, Any]:
    """One tenant entry pointing at ``database`` on 127.0.0.1:``port``."""
    doc: dict[str, Any] = {
        "external_id": external_id,
        "db_host": HOST,
        "db_port": port,
        "db_database": database,
        "default_pool_size": 5,
        "users": [dict(user) for user in users],
    }
    doc.update(fields)
    return doc
