"""`manage.py demodb`: a throwaway local Postgres and the demo tenant t1, for `make run`."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

DEMO_TENANT = {
    "external_id": "t1",
    "db_host": "127.0.0.1",
    "db_database": "app",
    "default_pool_size": 5,
    "users": [
        {"db_user": "app", "db_password": "secret", "pool_size": 5, "mode_type": "transaction"},
        {"db_user": "app", "db_password": "secret", "pool_size": 5, "mode_type": "session"},
    ],
}


def postgres_bindir() -> Path:
    """Where initdb and pg_ctl live (Debian keeps them out of PATH)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    if candidates:
        return candidates[0].parent
    raise CommandError(
        "PostgreSQL server binaries not found: install them with "
        "`apt-get install postgresql` (see README)"
    )


class Command(BaseCommand):
    help = "Start a local demo Postgres (role app, password secret, db app); apply tenant t1."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dir", default=".demo", help="where the demo cluster lives")
        parser.add_argument("--port", type=int, default=5433, help="the demo Postgres port")

    def handle(self, *args: Any, **opts: Any) -> None:
        base = Path(opts["dir"]).resolve()
        port = opts["port"]
        bindir = postgres_bindir()
        data = base / "pgdata"
        run_as: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise CommandError(
                    "running as root needs the `postgres` OS user: "
                    "`apt-get install postgresql` creates it"
                ) from None
            run_as = ["runuser", "-u", "postgres", "--"]
        base.mkdir(parents=True, exist_ok=True)
        if run_as:
            shutil.chown(base, "postgres", "postgres")
        if not (data / "PG_VERSION").exists():
            self.stdout.write(f"initialising a demo cluster in {data} ...")
            subprocess.run(
                [
                    *run_as,
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        status = subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "status"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if status.returncode != 0:
            self.stdout.write(f"starting the demo Postgres on 127.0.0.1:{port} ...")
            subprocess.run(
                [
                    *run_as,
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-w",
                    "-l",
                    str(base / "postgres.log"),
                    "-o",
                    f"-p {port} -k {base} -c listen_addresses=127.0.0.1",
                    "start",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        self._psql(
            run_as,
            bindir,
            base,
            port,
            "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles "
            "WHERE rolname='app') THEN CREATE ROLE app LOGIN PASSWORD 'secret'; "
            "END IF; END$$;",
        )
        exists = self._psql(
            run_as, bindir, base, port, "SELECT 1 FROM pg_database WHERE datname='app'"
        )
        if "1" not in exists:
            self._psql(run_as, bindir, base, port, "CREATE DATABASE app OWNER app")

        from tenants.services import apply_tenants

        tenant = dict(DEMO_TENANT, db_port=port)
        apply_tenants({"tenants": [tenant]})
        self.stdout.write(f"demo ready: Postgres on 127.0.0.1:{port}, tenant t1 (app/secret)")

    def _psql(self, run_as: list[str], bindir: Path, base: Path, port: int, sql: str) -> str:
        for _ in range(50):
            result = subprocess.run(
                [
                    *run_as,
                    str(bindir / "psql"),
                    "-h",
                    str(base),
                    "-p",
                    str(port),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-Atqc",
                    sql,
                ],
                capture_output=True,
                text=True,
            )
            if result.returncode == 0:
                return result.stdout
            time.sleep(0.1)
        raise CommandError(
            f"the demo Postgres did not accept `{sql[:40]}...`: "
            f"{result.stderr.strip()}; see {base / 'postgres.log'}"
        )
