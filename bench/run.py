"""The benchmark harness: one Postgres, PgBouncer and Greenvisor side by side under pgbench.

Theory of operation: a throwaway cluster is created in a temporary directory and filled once
with ``pgbench -i``; for each scenario the poolers are (re)started with the scenario's pool
size, every target gets a ``SELECT 1`` check and a short warm-up, then the measured runs go
rep by rep with the target order rotated each rep, so drift on a shared machine hits every
target alike. Around each run the harness reads the CPU time (user + system, /proc) of the
Postgres process tree and of each pooler's tree, and takes pgbench's own rusage from wait4().
Every process it starts runs in its own process group, gets a parent-death signal and is
stopped by PID in ``finally``, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import platform
import pwd
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg2  # noqa: E402

from bench.scenarios import (  # noqa: E402
    ALL_TARGETS,
    DEFAULT_DURATION,
    DIRECT,
    GREENVISOR,
    NOT_APPLICABLE,
    PGBOUNCER,
    RUNS_FOR_VERDICT,
    SCENARIOS,
    Scenario,
    combine_checks,
    combined_markdown,
    combined_text,
    markdown_machine,
    markdown_table,
    parse_pgbench,
    scenario_by_name,
    summarize,
    target_checks,
    targets_markdown,
    targets_text,
    text_table,
)

# Ports below the kernel's ephemeral range, never one twice per run: a port the kernel picks
# for bind(0) can be given to an outgoing connection before the target listens on it.
from tests.support.net import free_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
PG_BINDIR = Path(os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin"))
PGBOUNCER_BIN = os.environ.get("PGBOUNCER", "/usr/sbin/pgbouncer")
BENCH_DB = "bench"
BENCH_ROLE = "bench"
TENANT = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 60.0
PR_SET_PDEATHSIG = 1


class BenchError(Exception):
    """A step of the harness failed; the message says which and where its log is."""


# --- processes -------------------------------------------------------------------------------


def _run_as() -> str | None:
    """The OS user that Postgres and PgBouncer run as: ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise BenchError(
            "running as root needs the `postgres` OS user (apt install postgresql)"
        ) from None
    return "postgres"


def _death_signal(signum: int) -> Callable[[], None]:
    """A preexec_fn: the child gets ``signum`` if the harness dies without cleaning up."""

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)

    return preexec


def _popen_kwargs(as_user: str | None, stop_signal: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "process_group": 0,  # Ctrl-C reaches only the harness, which stops children in order
        "preexec_fn": _death_signal(stop_signal),
    }
    if as_user:
        kwargs.update(user=as_user, group=as_user, extra_groups=[])
    return kwargs


@dataclass
class Child:
    """A long-running process the harness started, its log and how to stop it."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    stop_signal: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        for signum in (self.stop_signal, signal.SIGKILL):
            if not self.alive():
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Processes:
    """Every process the harness started, stopped newest first."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.pgbench_pid: int | None = None

    def start(
        self,
        name: str,
        argv: list[str],
        log: Path,
        *,
        as_user: str | None = None,
        env: dict[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> Child:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
                **_popen_kwargs(as_user, stop_signal),
            )
        child = Child(name, proc, log, stop_signal)
        self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        child.stop()
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        if self.pgbench_pid is not None:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(self.pgbench_pid, signal.SIGKILL)
                os.waitpid(self.pgbench_pid, 0)
            self.pgbench_pid = None
        while self.children:
            self.stop(self.children[-1])


def wait_until(ready: Callable[[], bool], child: Child, what: str) -> None:
    """Poll ``ready`` until true; fail fast if ``child`` died, or after READY_TIMEOUT."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if not child.alive():
            raise BenchError(f"{child.name} exited while {what}:\n{child.log_tail()}")
        if ready():
            return
        time.sleep(0.2)
    raise BenchError(f"{child.name}: timed out {what}:\n{child.log_tail()}")


def accepts_tcp(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def run_checked(argv: list[str], what: str, timeout: float, **kwargs: Any) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False, **kwargs
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what}: no answer within {timeout:.0f} s") from None
    if done.returncode != 0:
        raise BenchError(f"{what} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


# --- CPU accounting --------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, CPU seconds of the process plus its reaped children)."""
    table: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()  # fields[0] is stat field 3 (state)
        ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
        table[int(entry.name)] = (int(fields[1]), ticks / CLK_TCK)
    return table


def tree_cpu(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each root process and all its descendants, live or reaped.

    A descendant that exited and was waited for is in its parent's cutime/cstime, so a
    before/after difference also counts Postgres backends that came and went during a run.
    """
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    totals: dict[str, float] = {}
    for name, root in roots.items():
        total, stack = 0.0, [root]
        while stack:
            pid = stack.pop()
            if pid in table:
                total += table[pid][1]
                stack.extend(children.get(pid, ()))
        totals[name] = total
    return totals


# --- Postgres --------------------------------------------------------------------------------


@dataclass
class Cluster:
    """The throwaway Postgres cluster every target ends at."""

    base: Path
    port: int
    password: str
    child: Child | None = None

    @property
    def sockdir(self) -> Path:
        return self.base / "pg"

    def superuser(self) -> Any:
        conn = psycopg2.connect(
            host=str(self.sockdir), port=self.port, user="postgres", dbname="postgres"
        )
        conn.autocommit = True
        return conn

    def _can_connect(self) -> bool:
        try:
            self.superuser().close()
            return True
        except psycopg2.OperationalError:
            return False


POSTGRES_CONF = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockdir}'
fsync = off
synchronous_commit = off
max_connections = 300
shared_buffers = 256MB
"""


def start_cluster(procs: Processes, base: Path, as_user: str | None) -> Cluster:
    cluster = Cluster(base, free_port(), secrets.token_urlsafe(18))
    data = cluster.sockdir / "data"
    cluster.sockdir.mkdir()
    if as_user:
        shutil.chown(cluster.sockdir, as_user, as_user)
    run_checked(
        [str(PG_BINDIR / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8"]
        + ["--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256"],
        "initdb",
        120,
        **_popen_kwargs(as_user, signal.SIGTERM),
    )
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(POSTGRES_CONF.format(port=cluster.port, sockdir=cluster.sockdir))
    cluster.child = procs.start(
        "postgres",
        [str(PG_BINDIR / "postgres"), "-D", str(data)],
        base / "postgres.log",
        as_user=as_user,
        stop_signal=signal.SIGINT,  # fast shutdown
    )
    wait_until(cluster._can_connect, cluster.child, "starting up")
    with contextlib.closing(cluster.superuser()) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE ROLE {BENCH_ROLE} LOGIN PASSWORD %s", (cluster.password,))
        cur.execute(f"CREATE DATABASE {BENCH_DB} OWNER {BENCH_ROLE}")
    return cluster


def scram_secret(cluster: Cluster) -> str:
    with contextlib.closing(cluster.superuser()) as conn, conn.cursor() as cur:
        cur.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (BENCH_ROLE,))
        return str(cur.fetchone()[0])


def client_env(password: str) -> dict[str, str]:
    env = dict(os.environ, PGPASSWORD=password, PGCONNECT_TIMEOUT="30")
    env.pop("PGSERVICE", None)
    return env


def pgbench_init(cluster: Cluster, scale: int) -> None:
    print(f"pgbench -i -s {scale} ...", flush=True)
    run_checked(
        [str(PG_BINDIR / "pgbench"), "-i", "-q", "-s", str(scale)]
        + ["-h", "127.0.0.1", "-p", str(cluster.port), "-U", BENCH_ROLE, BENCH_DB],
        "pgbench -i",
        1800,
        env=client_env(cluster.password),
    )


def reset_tables(cluster: Cluster) -> None:
    """pgbench's own pre-run cleanup, done directly so every target starts alike."""
    conn = psycopg2.connect(
        host=str(cluster.sockdir), port=cluster.port, user="postgres", dbname=BENCH_DB
    )
    conn.autocommit = True
    with contextlib.closing(conn), conn.cursor() as cur:
        for sql in (
            "VACUUM pgbench_branches",
            "VACUUM pgbench_tellers",
            "TRUNCATE pgbench_history",
            "CHECKPOINT",
        ):
            cur.execute(sql)


# --- targets ---------------------------------------------------------------------------------


@dataclass
class Endpoint:
    """Where pgbench connects for one target, and the pooler process that costs CPU there."""

    name: str
    port: int
    user: str
    pooler: Child | None = None


PGBOUNCER_INI = """[databases]
{db} = host=127.0.0.1 port={pg_port} dbname={db}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
pidfile = {dir}/pgbouncer.pid
auth_type = scram-sha-256
auth_file = {dir}/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 20000
"""


def start_pgbouncer(
    procs: Processes, cluster: Cluster, pool_size: int, as_user: str | None
) -> Endpoint:
    folder = cluster.base / f"pgbouncer-{pool_size}"
    folder.mkdir(exist_ok=True)  # two scenarios may share a pool size
    port = free_port()
    ini = folder / "pgbouncer.ini"
    ini.write_text(
        PGBOUNCER_INI.format(
            db=BENCH_DB, pg_port=cluster.port, port=port, dir=folder, pool_size=pool_size
        )
    )
    userlist = folder / "userlist.txt"
    userlist.touch(mode=0o600)
    userlist.write_text(f'"{BENCH_ROLE}" "{scram_secret(cluster)}"\n')
    if as_user:
        for path in (folder, ini, userlist):
            shutil.chown(path, as_user, as_user)
    child = procs.start(
        "pgbouncer", [PGBOUNCER_BIN, str(ini)], cluster.base / "pgbouncer.log", as_user=as_user
    )
    wait_until(lambda: accepts_tcp(port), child, "starting up")
    return Endpoint(PGBOUNCER, port, BENCH_ROLE, child)


def _manage(argv: list[str], env: dict[str, str], what: str) -> None:
    run_checked([sys.executable, str(REPO / "manage.py"), *argv], what, 300, env=env)


def greenvisor_env(base: Path) -> dict[str, str]:
    env = dict(os.environ, DATABASE_URL=f"sqlite:///{base / 'greenvisor' / 'meta.sqlite3'}")
    # Passwords are stored encrypted: one throwaway key for this run's throwaway metadata DB.
    env.setdefault("VAULT_ENC_KEY", _RUN_VAULT_KEY)
    return env


_RUN_VAULT_KEY = secrets.token_hex(32)


def tenants_document(cluster: Cluster, pool_size: int) -> dict[str, Any]:
    """The one tenant Greenvisor serves: clients log in as bench.bench, transaction mode."""
    user = {
        "db_user": BENCH_ROLE,
        "db_password": cluster.password,
        "pool_size": pool_size,
        "mode_type": "transaction",
    }
    tenant = {
        "external_id": TENANT,
        "db_host": "127.0.0.1",
        "db_port": cluster.port,
        "db_database": BENCH_DB,
        "default_pool_size": pool_size,
        "default_max_clients": 20000,  # PgBouncer gets max_client_conn = 20000 too
        "users": [user],
    }
    return {"tenants": [tenant]}


def start_greenvisor(procs: Processes, cluster: Cluster, pool_size: int) -> Endpoint:
    folder = cluster.base / "greenvisor"
    env = greenvisor_env(cluster.base)
    if not folder.exists():
        folder.mkdir()
        _manage(["migrate", "--noinput"], env, "manage.py migrate")
    tenants = folder / "tenants.json"
    tenants.touch(mode=0o600)
    tenants.write_text(json.dumps(tenants_document(cluster, pool_size)))
    _manage(["applytenants", str(tenants)], env, "manage.py applytenants")
    port, session_port, http_port = free_port(), free_port(), free_port()
    argv = [sys.executable, str(REPO / "manage.py"), "runpooler", "--listen", "127.0.0.1"]
    argv += ["--proxy-port-transaction", str(port), "--proxy-port-session", str(session_port)]
    argv += ["--http-port", str(http_port)]
    child = procs.start("greenvisor", argv, cluster.base / "greenvisor.log", env=env)
    wait_until(lambda: accepts_tcp(port) and accepts_tcp(http_port), child, "starting up")
    return Endpoint(GREENVISOR, port, f"{BENCH_ROLE}.{TENANT}", child)


def check_endpoint(endpoint: Endpoint, password: str) -> None:
    """One SELECT 1 through the target, so a broken target fails here with a clear message."""
    try:
        conn = psycopg2.connect(
            host="127.0.0.1",
            port=endpoint.port,
            user=endpoint.user,
            password=password,
            dbname=BENCH_DB,
            connect_timeout=15,
        )
        with contextlib.closing(conn), conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()
    except psycopg2.Error as exc:
        tail = endpoint.pooler.log_tail() if endpoint.pooler else ""
        raise BenchError(f"{endpoint.name}: SELECT 1 failed: {exc}\n{tail}") from None


# --- one run ---------------------------------------------------------------------------------


@dataclass
class PgbenchRun:
    returncode: int
    stdout: str
    stderr: str
    cpu: float
    wall: float


def run_pgbench(
    procs: Processes, argv: list[str], env: dict[str, str], timeout: float
) -> PgbenchRun:
    """Run pgbench to completion (killed after ``timeout``); its own rusage via wait4()."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            **_popen_kwargs(None, signal.SIGKILL),
        )
        procs.pgbench_pid = proc.pid
        status, usage = _wait4(proc.pid, start + timeout)
        procs.pgbench_pid = None
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return PgbenchRun(
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            usage.ru_utime + usage.ru_stime,
            time.monotonic() - start,
        )


def _wait4(pid: int, deadline: float) -> tuple[int, Any]:
    while time.monotonic() < deadline:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return status, usage
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    return status, usage


def pgbench_argv(
    scenario: Scenario, endpoint: Endpoint, duration: int, log_prefix: Path | None = None
) -> list[str]:
    argv = [str(PG_BINDIR / "pgbench"), *scenario.pgbench_args, "-T", str(duration), "-n"]
    if log_prefix is not None:
        argv += ["--log", f"--log-prefix={log_prefix}"]
    argv += ["-h", "127.0.0.1", "-p", str(endpoint.port), "-U", endpoint.user, BENCH_DB]
    return argv


def latency_percentiles(prefix: Path) -> dict[str, float | None]:
    """p50 and p99 in ms from pgbench's per-transaction logs (``prefix.<pid>[.<thread>]``).

    Each line is ``client_id transaction_no time script_no time_epoch time_us [lag]`` with
    ``time`` the transaction's latency in microseconds; the files are deleted afterwards.
    """
    latencies: list[int] = []
    for path in prefix.parent.glob(prefix.name + ".*"):
        with path.open() as log:
            for line in log:
                fields = line.split()
                if len(fields) >= 3 and fields[2].isdigit():
                    latencies.append(int(fields[2]))
        path.unlink()
    if not latencies:
        return {"latency_p50_ms": None, "latency_p99_ms": None, "latency_samples": 0}
    latencies.sort()

    def pick(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000, 4)

    return {
        "latency_p50_ms": pick(0.50),
        "latency_p99_ms": pick(0.99),
        "latency_samples": len(latencies),
    }


def measure(
    procs: Processes,
    cluster: Cluster,
    scenario: Scenario,
    endpoint: Endpoint,
    poolers: dict[str, Endpoint],
    duration: int,
) -> dict[str, Any]:
    """One pgbench run against ``endpoint``, with the CPU time of every component."""
    if scenario.vacuum:
        reset_tables(cluster)
    assert cluster.child is not None
    roots = {"postgres": cluster.child.pid}
    roots.update({name: ep.pooler.pid for name, ep in poolers.items() if ep.pooler})
    load = os.getloadavg()[0]
    log_prefix = cluster.base / "pgbench-latency" if scenario.latency_log else None
    before = tree_cpu(roots)
    argv = pgbench_argv(scenario, endpoint, duration, log_prefix)
    run = run_pgbench(procs, argv, client_env(cluster.password), duration + 120)
    after = tree_cpu(roots)
    extra = latency_percentiles(log_prefix) if log_prefix is not None else {}
    for ep in poolers.values():
        if ep.pooler and not ep.pooler.alive():
            raise BenchError(
                f"{ep.name} died during a {scenario.name} run:\n{ep.pooler.log_tail()}"
            )
    cpu = {name: round(after[name] - before[name], 3) for name in roots}
    cpu["pgbench"] = round(run.cpu, 3)
    parsed = parse_pgbench(run.stdout, run.stderr)
    return {
        "scenario": scenario.name,
        "target": endpoint.name,
        "returncode": run.returncode,
        "wall_s": round(run.wall, 2),
        "loadavg_1m_before": load,
        "cpu_s": cpu,
        **parsed.as_dict(),
        **extra,
        "pgbench_output": run.stdout.splitlines()[-15:],
    }


# --- idle clients --------------------------------------------------------------------------

#: Connections per load process: with its own sockets well under the ~20,000 files per process.
IDLE_PER_PROCESS = 4000
IDLE_OPEN_TIMEOUT = 240.0


def tree_rss_kb(root: int) -> int:
    """Resident memory (VmRSS, KB) of ``root`` and its live descendants."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += _rss_kb(pid)
        stack.extend(children.get(pid, ()))
    return total


def _rss_kb(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def tree_count_sockets(root: int) -> int:
    """Open sockets of ``root`` (file descriptors that are sockets)."""
    try:
        return sum(
            1 for fd in os.scandir(f"/proc/{root}/fd") if os.readlink(fd.path).startswith("socket:")
        )
    except OSError:
        return -1


def _settled_rss_kb(root: int) -> int:
    """RSS after the allocator has settled: the lowest of a few reads over about a second."""
    reads = []
    for _ in range(5):
        time.sleep(0.2)
        reads.append(tree_rss_kb(root))
    return min(reads)


def open_idle_clients(
    procs: Processes, cluster: Cluster, endpoint: Endpoint, count: int, loaders: list[Child]
) -> dict[str, Any]:
    """Log ``count`` clients in to ``endpoint`` with SCRAM (bench/idle.py, several processes)
    and leave them idle; return the pooler's RSS per idle client. ``loaders`` gets the load
    processes, which the caller stops."""
    assert endpoint.pooler is not None
    root = endpoint.pooler.pid
    rss_before = _settled_rss_kb(root)
    print(f"  {endpoint.name}: opening {count} idle SCRAM clients ...", flush=True)
    started = time.monotonic()
    shares = [IDLE_PER_PROCESS] * (count // IDLE_PER_PROCESS)
    if count % IDLE_PER_PROCESS:
        shares.append(count % IDLE_PER_PROCESS)
    mine: list[Child] = []
    for i, share in enumerate(shares):
        argv = [sys.executable, "-m", "bench.idle", "--port", str(endpoint.port)]
        argv += ["--user", endpoint.user, "--database", BENCH_DB, "--count", str(share)]
        argv += ["--timeout", str(IDLE_OPEN_TIMEOUT - 10)]
        log = cluster.base / f"idle-{endpoint.name}-{i}.log"
        child = procs.start(f"idle clients {i}", argv, log, env=client_env(cluster.password))
        mine.append(child)
        loaders.append(child)
    deadline = time.monotonic() + IDLE_OPEN_TIMEOUT
    waiting = list(mine)
    while waiting:
        for child in list(waiting):
            text = child.log.read_text(errors="replace") if child.log.exists() else ""
            if text.startswith("ready"):
                waiting.remove(child)
            elif "error" in text or not child.alive():
                raise BenchError(
                    f"{endpoint.name}: idle clients failed to log in:\n{child.log_tail()}\n"
                    f"{endpoint.name} log:\n{endpoint.pooler.log_tail()}"
                )
        if time.monotonic() > deadline:
            raise BenchError(f"{endpoint.name}: {count} idle clients not logged in in time")
        time.sleep(0.2)
    opened_s = time.monotonic() - started
    rss_after = _settled_rss_kb(root)
    per_client = (rss_after - rss_before) / count
    sockets = tree_count_sockets(root)
    print(
        f"  {endpoint.name}: {count} idle clients in {opened_s:.1f} s; RSS {rss_before} -> "
        f"{rss_after} KB = {per_client:.2f} KB each; {sockets} sockets open",
        flush=True,
    )
    return {
        "idle_clients": count,
        "idle_rss_before_kb": rss_before,
        "idle_rss_after_kb": rss_after,
        "idle_kb_per_client": round(per_client, 3),
        "idle_open_s": round(opened_s, 1),
        "idle_pooler_sockets": sockets,
    }


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Settings:
    scenarios: list[Scenario]
    targets: list[str]
    reps: int | None  # None: each scenario's own (Scenario.reps)
    duration: int | None  # None: each scenario's own (Scenario.duration, else 7 s)
    warmup: int
    scale: int
    idle_clients: int = 15000
    all_targets: bool = False
    argv: list[str] = field(default_factory=list)

    def reps_of(self, scenario: Scenario) -> int:
        return scenario.reps if self.reps is None else self.reps

    def duration_of(self, scenario: Scenario) -> int:
        if self.duration is not None:
            return self.duration
        return scenario.duration if scenario.duration is not None else DEFAULT_DURATION

    def targets_of(self, scenario: Scenario) -> list[str]:
        """The targets ``scenario`` runs on: its own, or (--all-targets) every one it can."""
        return [
            t
            for t in self.targets
            if t in scenario.targets
            or (self.all_targets and (scenario.name, t) not in NOT_APPLICABLE)
        ]


def start_targets(
    procs: Processes, cluster: Cluster, scenario: Scenario, targets: list[str], as_user: str | None
) -> dict[str, Endpoint]:
    endpoints: dict[str, Endpoint] = {}
    if DIRECT in targets:
        endpoints[DIRECT] = Endpoint(DIRECT, cluster.port, BENCH_ROLE)
    if PGBOUNCER in targets:
        endpoints[PGBOUNCER] = start_pgbouncer(procs, cluster, scenario.pool_size, as_user)
    if GREENVISOR in targets:
        endpoints[GREENVISOR] = start_greenvisor(procs, cluster, scenario.pool_size)
    for endpoint in endpoints.values():
        check_endpoint(endpoint, cluster.password)
    return endpoints


def warm_up(
    procs: Processes,
    cluster: Cluster,
    scenario: Scenario,
    endpoint: Endpoint,
    poolers: dict[str, Endpoint],
    seconds: int,
) -> None:
    """Unmeasured runs until one completes transactions (at most three): on a busy machine
    100 SCRAM logins can take longer than a short warm-up, and the pool would still be
    filling during the first measured run."""
    for attempt in range(3):
        result = measure(procs, cluster, scenario, endpoint, poolers, seconds + 2 * attempt)
        if result["transactions"]:
            return
        print(f"  {endpoint.name}: warm-up ran no transaction; again", flush=True)


def run_scenario(
    procs: Processes,
    cluster: Cluster,
    scenario: Scenario,
    settings: Settings,
    as_user: str | None,
    runs: list[dict[str, Any]],
) -> None:
    targets = settings.targets_of(scenario)
    endpoints = start_targets(procs, cluster, scenario, targets, as_user)
    poolers = {name: ep for name, ep in endpoints.items() if ep.pooler}
    idle: dict[str, dict[str, Any]] = {}
    loaders: list[Child] = []
    try:
        if settings.warmup:
            for name in targets:
                warm_up(procs, cluster, scenario, endpoints[name], poolers, settings.warmup)
        if scenario.idle_clients:
            for name in targets:
                idle[name] = open_idle_clients(
                    procs, cluster, endpoints[name], settings.idle_clients, loaders
                )
        for rep in range(settings.reps_of(scenario)):
            order = targets[rep % len(targets) :] + targets[: rep % len(targets)]
            for name in order:
                result = measure(
                    procs,
                    cluster,
                    scenario,
                    endpoints[name],
                    poolers,
                    settings.duration_of(scenario),
                )
                result["rep"] = rep + 1
                result.update(idle.get(name, {}))
                if scenario.baseline:
                    result["baseline"] = scenario.baseline
                runs.append(result)
                _print_run(result)
        for name in idle:
            endpoint = endpoints[name]
            if endpoint.pooler and endpoint.pooler.alive():
                held = tree_count_sockets(endpoint.pooler.pid)
                print(f"  {name}: {held} sockets open after the runs", flush=True)
    finally:
        for loader in loaders:
            procs.stop(loader)
        for endpoint in poolers.values():
            assert endpoint.pooler is not None
            procs.stop(endpoint.pooler)


def _print_run(r: dict[str, Any]) -> None:
    tps = f"{r['tps']:.0f}" if r["tps"] is not None else "n/a"
    cpu = " ".join(f"{k}={v:.1f}s" for k, v in r["cpu_s"].items())
    flag = " ABORTED" if r["aborted"] or r["returncode"] else ""
    print(
        f"  {r['scenario']:<8} {r['target']:<10} rep {r['rep']}: tps {tps:>8} "
        f"failed {r['failed']} load {r['loadavg_1m_before']:.1f} cpu {cpu}{flag}",
        flush=True,
    )
    for line in r["errors"][:3]:
        print(f"      {line}", flush=True)


def bench(settings: Settings, result: dict[str, Any], keep: bool) -> None:
    """Run every scenario; each finished run is appended to ``result["runs"]`` at once."""
    as_user = _run_as()
    base = Path(tempfile.mkdtemp(prefix="greenvisor-bench-"))
    procs = Processes()
    ok = False
    try:
        if as_user:
            shutil.chown(base, as_user, as_user)
        cluster = start_cluster(procs, base, as_user)
        pgbench_init(cluster, settings.scale)
        started = time.monotonic()
        for scenario in settings.scenarios:
            elapsed = time.monotonic() - started
            print(
                f"scenario {scenario.name} (at {elapsed / 60:.1f} min): {scenario.description}",
                flush=True,
            )
            run_scenario(procs, cluster, scenario, settings, as_user, result["runs"])
        ok = True
        print(f"all scenarios done in {(time.monotonic() - started) / 60:.1f} min", flush=True)
    finally:
        procs.stop_all()
        _clean_up(base, keep=keep, failed=not ok)


def _clean_up(base: Path, keep: bool, failed: bool) -> None:
    """Remove the temporary dir; on failure or --keep keep the logs, never the secrets."""
    if not (keep or failed):
        shutil.rmtree(base, ignore_errors=True)
        return
    for pattern in ("pgbouncer-*/userlist.txt", "greenvisor/tenants.json", "greenvisor/*.sqlite3*"):
        for path in base.glob(pattern):
            path.unlink(missing_ok=True)
    if not keep:
        shutil.rmtree(base / "pg" / "data", ignore_errors=True)
    print(f"logs kept in {base}", file=sys.stderr)


def _settings_json(settings: Settings) -> dict[str, Any]:
    return {
        "reps": settings.reps,  # None: per scenario, below
        "duration_s": settings.duration,  # None: per scenario, below
        "warmup_s": settings.warmup,
        "scale": settings.scale,
        "idle_clients": settings.idle_clients,
        "all_targets": settings.all_targets,
        "targets": settings.targets,
        "scenarios": [
            {
                "name": s.name,
                "description": s.description,
                "pgbench_args": list(s.pgbench_args),
                "pool_size": s.pool_size,
                "reps": settings.reps_of(s),
                "duration_s": settings.duration_of(s),
                "targets": settings.targets_of(s),
                "latency_log": s.latency_log,
                "idle_clients": s.idle_clients,
                "baseline": s.baseline,
            }
            for s in settings.scenarios
        ],
    }


# --- machine ---------------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def _proc_value(path: str, key: str) -> str:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return "unknown"


def _hot_path() -> str:
    """What the pooler started by this run executes (it inherits this environment)."""
    from pooler import hotpath

    return hotpath.decide()[1]


def _pooler_sources() -> str:
    """A short hash of the pooler's sources (pooler/**/*.py and .c, as the hot path's manifest
    counts them): runs of different commits with the same one measured the same pooler."""
    from pooler import hotpath

    listing = "".join(f"{name} {sha}\n" for name, sha in sorted(hotpath.digest().items()))
    return hashlib.sha256(listing.encode()).hexdigest()[:12]


def hot_path_warning(machine: dict[str, Any]) -> str | None:
    """A warning when the Greenvisor of a run was not the compiled hot path (a stale or
    missing build falls back to plain Python silently, ~20x the instructions per
    transaction): its figures say nothing about the compiled relay."""
    hot_path = str(machine.get("greenvisor hot path", ""))
    if not hot_path.startswith("pure Python"):
        return None
    return (
        f"WARNING: Greenvisor ran {hot_path}; these are not the compiled relay's figures: "
        "run `python manage.py hotpath build` (make compile) and bench again"
    )


def machine_info() -> dict[str, Any]:
    mem_kb = _proc_value("/proc/meminfo", "MemTotal").split()[0]
    return {
        "nproc": os.cpu_count(),
        "cpu": _proc_value("/proc/cpuinfo", "model name"),
        "ram": f"{int(mem_kb) / 1024 / 1024:.1f} GiB" if mem_kb.isdigit() else "unknown",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "gevent": metadata.version("gevent"),
        "postgres": _first_line([str(PG_BINDIR / "postgres"), "--version"]),
        "pgbench": _first_line([str(PG_BINDIR / "pgbench"), "--version"]),
        "pgbouncer": _first_line([PGBOUNCER_BIN, "--version"]),
        "greenvisor commit": _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "greenvisor hot path": _hot_path(),
        "greenvisor sources": _pooler_sources(),
        "loadavg at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    names = ", ".join(s.name for s in SCENARIOS)
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", default="all", help=f"comma-separated ({names}) or all")
    p.add_argument("--targets", default=",".join(ALL_TARGETS), help="comma-separated targets")
    p.add_argument(
        "--all-targets",
        action="store_true",
        help="run every scenario on every target that can (e.g. latency and storm direct too)",
    )
    p.add_argument(
        "--reps",
        type=int,
        default=None,
        help="measured runs per target (default: 5 for tpcb and storm, 7 for latency, 3 others)",
    )
    p.add_argument(
        "--duration",
        type=int,
        default=None,
        help="pgbench -T seconds per run (default: 3 for latency, 7 for the others)",
    )
    p.add_argument("--warmup", type=int, default=2, help="unmeasured seconds per target, 0 = off")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i -s scale (10)")
    p.add_argument(
        "--idle-clients", type=int, default=15000, help="idle clients per pooler (15000)"
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 1 rep, -T 4, 1 s warm-up, 2000 idle"
    )
    p.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    p.add_argument(
        "--report",
        metavar="JSON",
        nargs="+",
        help="print the tables of a saved result; no run. Several: issue 4's verdict, each "
        "target's median over those runs (the issue asks for >= 3)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary dir (logs)")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace, argv: list[str]) -> Settings:
    if args.scenarios == "all":
        scenarios = list(SCENARIOS)
    else:
        try:
            scenarios = [scenario_by_name(n.strip()) for n in args.scenarios.split(",")]
        except KeyError as exc:
            raise BenchError(str(exc.args[0])) from None
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(targets) - set(ALL_TARGETS))
    if unknown or not targets:
        raise BenchError(f"unknown targets {unknown}: choose from {', '.join(ALL_TARGETS)}")
    reps, duration, warmup, idle = args.reps, args.duration, args.warmup, args.idle_clients
    if args.quick:
        reps, duration, warmup, idle = 1, 4, 1, min(idle, 2000)
    if (reps is not None and reps < 1) or (duration is not None and duration < 1):
        raise BenchError("--reps and --duration must be >= 1")
    if warmup < 0 or idle < 1:
        raise BenchError("--idle-clients must be >= 1, --warmup >= 0")
    return Settings(
        scenarios, targets, reps, duration, warmup, args.scale, idle, args.all_targets, argv
    )


def report(result: dict[str, Any], markdown: bool) -> None:
    # Summarized again from the runs: a result saved by an older harness gets today's
    # columns and notes (the runs' fields have not changed).
    summary = summarize(result["runs"]) if result.get("runs") else result["summary"]
    checks = target_checks(summary)
    print()
    print(text_table(summary))
    print()
    print("Issue 4 targets (Greenvisor, medians of this run):")
    print(targets_text(checks))
    warning = hot_path_warning(result.get("machine", {}))
    if warning:
        print(warning)
    if markdown:
        print()
        print(markdown_machine(result["machine"]))
        print()
        print(f"Command: `{result['command']}`")
        print()
        print(markdown_table(summary))
        print()
        print(targets_markdown(checks))


def _checks_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    summary = summarize(result["runs"]) if result.get("runs") else result["summary"]
    return target_checks(summary)


def report_runs(results: list[dict[str, Any]], names: list[str], markdown: bool) -> None:
    """Several saved runs: which is which, what may make them incomparable, then each
    target's value per run and its median across them (issue 4's verdict)."""
    labels = [f"run {i}" for i in range(1, len(results) + 1)]
    print("Runs:")
    commits, sources = set(), set()
    for label, name, result in zip(labels, names, results, strict=True):
        machine = result.get("machine", {})
        commit = str(machine.get("greenvisor commit", "unknown"))
        commits.add(commit)
        source = machine.get("greenvisor sources")  # None in results saved before it existed
        sources.add(source)
        shown = f", pooler sources {source}" if source else ""
        extra = f"; INCOMPLETE: {result['incomplete']}" if result.get("incomplete") else ""
        print(
            f"  {label}: {name}, started {result.get('started', '?')}, commit {commit}"
            f"{shown}{extra}"
        )
        warning = hot_path_warning(machine)
        if warning:
            print(f"    {warning}")
    if len(commits) > 1 and len(sources) == 1 and None not in sources:
        print(
            f"NOTE: {len(commits)} commits ({', '.join(sorted(commits))}) with the same pooler "
            "sources: only the harness, tests or docs differ between them"
        )
    elif len(commits) > 1:
        print(
            f"NOTE: these runs measured {len(commits)} commits ({', '.join(sorted(commits))}): "
            "their medians mix whatever changed between them"
        )
    combined = combine_checks([_checks_of(result) for result in results])
    print()
    print(f"Issue 4 targets (Greenvisor), each run's ratio and the median of the {len(results)}:")
    print(combined_text(combined, labels))
    if len(results) < RUNS_FOR_VERDICT:
        print(
            f"NOTE: issue 4 takes the median of >= {RUNS_FOR_VERDICT} runs; "
            f"run `make bench` {RUNS_FOR_VERDICT - len(results)} more time(s)"
        )
    if markdown:
        print()
        print(combined_markdown(combined, labels))


def save(result: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = RESULTS_DIR / f"{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


@contextlib.contextmanager
def interrupts_as_keyboardinterrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so ``finally`` stops every child."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, previous in old.items():
            signal.signal(signum, previous)


def estimate_minutes(settings: Settings) -> float:
    """Rough wall time: runs plus set-up each, pooler starts, idle logins and pgbench -i."""
    seconds = 20.0 + settings.scale * 3
    for scenario in settings.scenarios:
        targets = settings.targets_of(scenario)
        per_run = 1 + (1 if scenario.vacuum else 0)  # measured: ~0-1 s here, more when loaded
        seconds += 8 + len(targets) * (settings.warmup + per_run)
        runs = len(targets) * settings.reps_of(scenario)
        seconds += runs * (settings.duration_of(scenario) + per_run)
        if scenario.idle_clients:
            seconds += len(targets) * (5 + settings.idle_clients / 1000)
    return seconds / 60


def new_result(settings: Settings) -> dict[str, Any]:
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(settings.argv),
        "machine": machine_info(),
        "settings": _settings_json(settings),
        "runs": [],
    }


def raise_nofile_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit, for the harness and (inherited) every child."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        if args.report:
            results = [json.loads(Path(name).read_text()) for name in args.report]
            if len(results) == 1:
                report(results[0], args.markdown)
            else:
                report_runs(results, args.report, args.markdown)
            return 0
        settings = settings_from(args, ["python", "-m", "bench.run", *argv])
    except (BenchError, OSError, ValueError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    raise_nofile_limit()
    result = new_result(settings)
    print(f"about {estimate_minutes(settings):.0f} min; temporary files in {tempfile.gettempdir()}")
    warning = hot_path_warning(result["machine"]) if GREENVISOR in settings.targets else None
    if warning:
        print(warning, flush=True)
    status = 0
    try:
        with interrupts_as_keyboardinterrupt():
            bench(settings, result, args.keep)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        result["incomplete"], status = str(exc).splitlines()[0], 1
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started is stopped", file=sys.stderr)
        result["incomplete"], status = "interrupted", 130
    if not result["runs"]:
        return status
    result["summary"] = summarize(result["runs"])
    path = save(result)
    report(result, args.markdown)
    label = " (INCOMPLETE)" if status else ""
    print(f"\nraw results{label}: {path.relative_to(REPO)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
