"""A throwaway PostgreSQL cluster (initdb + pg_ctl) on a free port, with per-user auth methods."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2 import sql

from tests.support.net import free_port

SUPERUSER = "postgres"
DEFAULT_BINDIR = Path("/usr/lib/postgresql/15/bin")

#: Roles whose name picks their host auth method in pg_hba.conf (everyone else: SCRAM).
HBA_METHOD_BY_USER = {"trustuser": "trust", "pwuser": "password", "md5user": "md5"}

SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "16MB",
    "log_min_messages": "warning",
    "log_connections": "off",
}


class PgError(RuntimeError):
    """A cluster command failed; the message carries its output or the server log's tail."""


def find_bindir() -> Path | None:
    """The directory holding initdb/pg_ctl: `pg_config --bindir`, then PATH, then Debian's."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    candidates.append(DEFAULT_BINDIR)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    return None


def _hba_lines() -> list[str]:
    lines = [
        "# written by tests/support/pg.py",
        f"local all {SUPERUSER} trust",
        "local all all scram-sha-256",
    ]
    for address in ("127.0.0.1/32", "::1/128"):
        for user, method in HBA_METHOD_BY_USER.items():
            lines.append(f"host all {user} {address} {method}")
        lines.append(f"host all all {address} scram-sha-256")
    return lines


class PgCluster:
    """One Postgres cluster in its own temporary directory, listening on 127.0.0.1 only.

    When the tests run as root, the cluster runs as the ``postgres`` OS user (Postgres
    refuses to run as root). Call :meth:`start` then :meth:`stop`/:meth:`destroy`.
    """

    def __init__(
        self,
        superuser_password: str,
        bindir: Path | None = None,
        port: int | None = None,
        os_user: str | None = None,
    ) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise PgError("no PostgreSQL server binaries found (initdb, pg_ctl)")
        self.bindir = found
        self.password = superuser_password
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.os_user = os_user or ("postgres" if os.geteuid() == 0 else None)
        self.base = Path(tempfile.mkdtemp(prefix="greenvisor-pg-"))
        self.datadir = self.base / "data"
        self.socket_dir = self.base / "sock"
        self.log_path = self.base / "postgres.log"
        self.running = False
        self._initialized = False

    # -- lifecycle ------------------------------------------------------------------------

    def init(self) -> None:
        """Run initdb and write postgresql.conf / pg_hba.conf."""
        self.socket_dir.mkdir()
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._give_to_os_user(self.base, self.socket_dir, pwfile)
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        pwfile.unlink()
        settings = dict(SERVER_SETTINGS)
        settings["port"] = str(self.port)
        settings["unix_socket_directories"] = f"'{self.socket_dir}'"
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/support/pg.py\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        (self.datadir / "pg_hba.conf").write_text("\n".join(_hba_lines()) + "\n")
        self._initialized = True

    def start(self) -> None:
        """Start the server (initdb first if needed); on failure raise with the log's tail."""
        if not self._initialized:
            self.init()
        try:
            self._run(
                "pg_ctl", "-D", str(self.datadir), "-l", str(self.log_path), "-w", "-t", "60",
                "start",
            )  # fmt: skip
        except PgError as exc:
            raise PgError(
                f"{exc}\n--- last lines of {self.log_path} ---\n{self.log_tail()}"
            ) from None
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server with ``pg_ctl -m mode``; fall back to immediate if that fails."""
        if not self.running:
            return
        try:
            self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "30", "stop")
        except PgError:
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop")
        self.running = False

    def destroy(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log file)"
        return "\n".join(text.splitlines()[-lines:])

    # -- SQL as the superuser -------------------------------------------------------------

    def dsn(
        self, user: str = SUPERUSER, password: str | None = None, dbname: str = "postgres"
    ) -> str:
        """A libpq keyword DSN for a TCP connection straight to this cluster."""
        if password is None and user == SUPERUSER:
            password = self.password
        parts = [f"host={self.host}", f"port={self.port}", f"user={user}", f"dbname={dbname}"]
        if password is not None:
            parts.append(f"password={password}")
        return " ".join(parts)

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> Any:
        """A psycopg2 connection as the superuser, in autocommit mode."""
        conn = psycopg2.connect(self.dsn(dbname=dbname), connect_timeout=10, **kwargs)
        conn.autocommit = True
        return conn

    def execute(
        self,
        query: str | sql.Composable,
        params: Sequence[Any] | None = None,
        dbname: str = "postgres",
    ) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser (autocommit); return its rows ([] if none)."""
        conn = self.connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return list(cur.fetchall()) if cur.description is not None else []
        finally:
            conn.close()

    def create_role(self, name: str, password: str, method: str = "scram-sha-256") -> None:
        """CREATE ROLE name LOGIN, its password stored as ``method`` (md5 or scram-sha-256)."""
        encryption = "md5" if method == "md5" else "scram-sha-256"
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SET password_encryption = %s", (encryption,))
                cur.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(name)),
                    (password,),
                )
        finally:
            conn.close()

    def create_database(self, name: str, owner: str = SUPERUSER) -> None:
        self.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(owner)
            )
        )

    def grant_connect(self, database: str, role: str) -> None:
        self.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(database), sql.Identifier(role)
            )
        )

    # -- running the binaries -------------------------------------------------------------

    def _give_to_os_user(self, *paths: Path) -> None:
        if self.os_user is None:
            return
        entry = pwd.getpwnam(self.os_user)
        for path in paths:
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _run(self, program: str, *args: str) -> str:
        cmd = [str(self.bindir / program), *args]
        kwargs: dict[str, Any] = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if self.os_user is not None:
            entry = pwd.getpwnam(self.os_user)
            kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
            env["HOME"] = str(self.base)
        try:
            out = subprocess.run(
                cmd,
                cwd=self.base,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
                **kwargs,
            )
        except subprocess.TimeoutExpired as exc:
            raise PgError(f"{program} did not finish within 120 s") from exc
        if out.returncode != 0:
            raise PgError(
                f"{program} exited with {out.returncode}: "
                f"{out.stderr.strip() or out.stdout.strip()}"
            )
        return out.stdout
