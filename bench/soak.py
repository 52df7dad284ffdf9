"""Soak: mixed load with random faults for a set time; did anything leak?

    python -m bench.soak [--minutes 30] [--seed N] [--idle-clients 100] [--out result.json]

Theory of operation: the soak starts a throwaway Postgres cluster and a Greenvisor pooler of
its own (the test suite's helpers, tests/support/pg.py and pooler.py), fills the database
with ``pgbench -i``, and runs the load of bench/soak_load.py: pgbench in transaction mode
with ``-M prepared``, pgbench in session mode connecting per transaction (``-C``), short psql
clients, psycopg clients doing ledger transactions, prepared statements and COPY in both
directions, and a crowd of idle clients that churn. The pooler's server_idle_timeout is 5 s,
so once clients are gone every server connection closes and a quiet pooler has an exact
state to return to.

1. Warm-up: the load runs without faults; then it stops and the pooler goes quiet. The
   baseline is taken when two samples a second apart agree: open file descriptors
   (/proc/PID/fd), RSS, live greenlets and per-pool server/client counts (from /metrics).
2. Soak: the load runs again while faults are injected at random intervals (mean
   ``--fault-gap``), a shuffled round of every kind after another: ``pg_ctl restart -m fast``,
   ``-m immediate``, pg_terminate_backend of the pooler's backends, kill -9 of a psql client
   inside a transaction, and a client socket shut down inside a transaction. After each
   restart the soak measures how long after Postgres accepts connections the pooler serves a
   query again. Progress is printed every ``--progress`` seconds.
3. Quiet: the load stops; the soak waits up to ``--quiet`` seconds for the pooler to return
   to the baseline, then judges: file descriptors, greenlets and pool slots must equal the
   baseline exactly, RSS may exceed it by at most ``--rss-tolerance-mb``; no client error
   outside the window of a fault that may cause it (bench/soak_load.py); no client hung;
   the ledger holds every committed transaction exactly once and no killed one.

Exit status 0 when all that holds, 1 when something leaked or a client saw an unexpected
error, 2 when the soak itself could not run. Everything it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/soak.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg2  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from bench.soak_load import (  # noqa: E402
    FAULT_KINDS,
    Faults,
    IdleCrowd,
    Journal,
    Pgbench,
    Psql,
    PyClient,
    Target,
    Worker,
)
from tests.support.pg import PgCluster, find_bindir  # noqa: E402
from tests.support.pooler import PoolerProcess, tenant_doc, user_doc  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
ROLE = "soak"
TENANT = "soak"


class SoakError(Exception):
    """The soak could not run (setup failed); not a verdict on the pooler."""


@dataclass
class Sample:
    """The pooler's state at one moment."""

    at: float
    fds: int
    rss_mb: float
    greenlets: int
    clients: int
    servers: int
    slots: dict[str, int]  # "tenant/user/mode/db state" -> connections, servers and clients

    def brief(self) -> str:
        return (
            f"fds={self.fds} rss={self.rss_mb:.1f}MB greenlets={self.greenlets} "
            f"clients={self.clients} servers={self.servers}"
        )


def sample(pooler: PoolerProcess) -> Sample:
    assert pooler.proc is not None
    pid = pooler.proc.pid
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    url = f"http://{pooler.host}:{pooler.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as reply:
        text = reply.read().decode()
    values: dict[str, float] = {}
    slots: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("greenvisor_server_connections", "greenvisor_client_connections"):
                kind = s.name.split("_")[1]
                key = "/".join(s.labels[k] for k in ("tenant", "user", "mode", "database"))
                slots[f"{key} {kind}:{s.labels['state']}"] = int(s.value)
            elif not s.labels:
                values[s.name] = s.value
    return Sample(
        at=time.monotonic(),
        fds=fds,
        rss_mb=rss_kb / 1024,
        greenlets=int(values.get("greenvisor_greenlets", -1)),
        clients=int(values.get("greenvisor_clients", -1)),
        servers=int(values.get("greenvisor_servers", -1)),
        slots=slots,
    )


def same_state(a: Sample, b: Sample) -> bool:
    return (a.fds, a.greenlets, a.clients, a.servers, a.slots) == (
        b.fds, b.greenlets, b.clients, b.servers, b.slots,
    )  # fmt: skip


# --- setup -----------------------------------------------------------------------------------


@contextlib.contextmanager
def environment(workdir: Path, idle_clients: int) -> Iterator[tuple[PgCluster, PoolerProcess]]:
    """A cluster with the soak database and a pooler in front of it; both stopped at exit."""
    bindir = find_bindir()
    if bindir is None:
        raise SoakError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    cluster = PgCluster(secrets.token_hex(12), bindir)
    pooler: PoolerProcess | None = None
    try:
        print("starting Postgres ...", flush=True)
        cluster.init()
        with (cluster.datadir / "postgresql.conf").open("a") as conf:
            # The ledger check needs a COMMIT that was acknowledged to survive an immediate
            # shutdown (the test clusters turn synchronous_commit off for speed).
            conf.write("synchronous_commit = on\n")
        cluster.start()
        password = secrets.token_hex(12)
        cluster.create_role(ROLE, password)
        cluster.create_database(ROLE, owner=ROLE)
        direct = Target(cluster.host, {"direct": cluster.port}, ROLE, password, ROLE, bindir)
        subprocess.run([str(bindir / "pgbench"), "-i", "-q", "-s", "1", "-h", cluster.host,
                        "-p", str(cluster.port), "-U", ROLE, ROLE], env=direct.env(),
                       check=True, capture_output=True, timeout=300)  # fmt: skip
        for ddl in (
            "CREATE TABLE soak_ledger (id bigint NOT NULL, worker text NOT NULL)",
            "CREATE TABLE soak_copy (worker text, n int)",
        ):
            cluster.execute(ddl, dbname=ROLE)
            table = ddl.split()[2]
            cluster.execute(f"ALTER TABLE {table} OWNER TO {ROLE}", dbname=ROLE)
        users = [
            user_doc(ROLE, password, "transaction", pool_size=5),
            user_doc(ROLE, password, "session", pool_size=12),
        ]
        doc = {
            "tenants": [
                tenant_doc(TENANT, ROLE, cluster.port, users,
                           default_max_clients=max(1000, 4 * idle_clients))
            ]
        }  # fmt: skip
        print("starting Greenvisor ...", flush=True)
        pooler = PoolerProcess(
            workdir / "pooler",
            doc,
            extra_args=["--server-idle-timeout", "5"],
            env={"VAULT_ENC_KEY": secrets.token_hex(32)},
        )
        pooler.start(timeout=120)
        yield cluster, pooler
    finally:
        if pooler is not None:
            pooler.stop()
        cluster.destroy()


def target_of(cluster: PgCluster, pooler: PoolerProcess) -> Target:
    password = pooler.tenants["tenants"][0]["users"][0]["db_password"]
    ports = {"transaction": pooler.transaction_port, "session": pooler.session_port}
    return Target(pooler.host, ports, f"{ROLE}.{TENANT}", password, ROLE, cluster.bindir)


def restarter(cluster: PgCluster) -> Any:
    def restart(mode: str) -> float:
        """``pg_ctl restart -m mode``; returns once Postgres accepts connections again."""
        started = time.monotonic()
        cluster._run("pg_ctl", "-D", str(cluster.datadir), "-l", str(cluster.log_path),
                     "-m", mode, "-w", "-t", "120", "restart")  # fmt: skip
        return time.monotonic() - started

    return restart


def terminator(cluster: PgCluster, rng: random.Random) -> Any:
    def terminate() -> int:
        """pg_terminate_backend of one to all of the pooler's server connections."""
        rows = cluster.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM pg_stat_activity "
            "WHERE usename = %s ORDER BY random() LIMIT %s) AS victims",
            (ROLE, rng.randint(1, 20)),
        )
        return int(rows[0][0])

    return terminate


def prober(target: Target) -> Any:
    def probe() -> float:
        """Seconds until a query through the pooler works again (at most 60)."""
        started = time.monotonic()
        while True:
            try:
                with contextlib.closing(psycopg2.connect(target.dsn("transaction"))) as conn:
                    conn.autocommit = True
                    with conn.cursor() as cur:
                        cur.execute("SELECT 1")
                return time.monotonic() - started
            except psycopg2.Error:
                if time.monotonic() - started > 60:
                    return float("inf")
                time.sleep(0.02)

    return probe


# --- phases ----------------------------------------------------------------------------------


@dataclass
class Settings:
    seconds: float
    warmup: float
    quiet: float
    progress: float
    fault_gap: float
    idle_clients: int
    rss_tolerance_mb: float
    seed: int
    out: Path | None = None


def start_load(target: Target, journal: Journal, settings: Settings, seconds: float,
               phase: str) -> list[Worker]:  # fmt: skip
    seed = settings.seed
    deadline = time.monotonic() + seconds
    tx = Pgbench(f"{phase}.pgbench-tx", target, journal, seed, "transaction",
                 ["-c", "8", "-j", "2", "-M", "prepared"])  # fmt: skip
    sx = Pgbench(f"{phase}.pgbench-session", target, journal, seed + 1, "session",
                 ["-c", "3", "-j", "1", "-C", "-M", "extended"])  # fmt: skip
    tx.deadline = sx.deadline = deadline
    workers: list[Worker] = [
        tx,
        sx,
        Psql(f"{phase}.psql", target, journal, seed + 2),
        PyClient(f"{phase}.psycopg-1", target, journal, seed + 3),
        PyClient(f"{phase}.psycopg-2", target, journal, seed + 4),
        IdleCrowd(f"{phase}.idle-crowd", target, journal, seed + 5, settings.idle_clients),
    ]
    for worker in workers:
        worker.start()
    return workers


def stop_load(workers: list[Worker], journal: Journal) -> None:
    for worker in workers:
        worker.halt.set()
    for worker in workers:
        worker.join(120)
        if worker.is_alive():
            journal.error(worker.name, "did not stop within 120 s: a hang")


def progress_line(started: float, journal: Journal, now_sample: Sample | None) -> str:
    expected, unexpected = journal.classify()
    with journal.lock:
        done = sum(journal.transactions.values())
        faults = len(journal.faults)
    state = now_sample.brief() if now_sample else "(no sample)"
    return (
        f"[{time.monotonic() - started:7.0f} s] transactions={done} faults={faults} "
        f"errors expected={len(expected)} unexpected={len(unexpected)} | {state}"
    )


def settle(pooler: PoolerProcess, timeout: float, goal: Sample | None) -> Sample:
    """Wait until the pooler is quiet: no clients, no servers, two equal samples in a row
    (and equal to ``goal`` if given); return the last sample when that holds or time is up."""
    deadline = time.monotonic() + timeout
    last = sample(pooler)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = sample(pooler)
        quiet = now.clients == 0 and now.servers == 0 and same_state(now, last)
        if quiet and (goal is None or same_state(now, goal)):
            return now
        last = now
    return last


def soak(settings: Settings, workdir: Path) -> dict[str, Any]:
    rng = random.Random(settings.seed)
    with environment(workdir, settings.idle_clients) as (cluster, pooler):
        target = target_of(cluster, pooler)
        journal = Journal()
        started = time.monotonic()

        def alive() -> None:
            if not pooler.alive():
                raise SoakError(f"the pooler exited:\n{pooler.log_tail()}")

        print(f"warm-up: {settings.warmup:.0f} s of load without faults", flush=True)
        workers = start_load(target, journal, settings, settings.warmup, "warmup")
        time.sleep(settings.warmup)
        stop_load(workers, journal)
        alive()
        baseline = settle(pooler, settings.quiet, None)
        print(f"baseline: {baseline.brief()}", flush=True)

        print(f"soak: {settings.seconds:.0f} s of load with faults every ~"
              f"{settings.fault_gap:.0f} s", flush=True)  # fmt: skip
        faults = Faults(target, journal, rng, restarter(cluster), terminator(cluster, rng),
                        prober(target))  # fmt: skip
        deadline = time.monotonic() + settings.seconds
        workers = start_load(target, journal, settings, settings.seconds, "soak")
        peak = baseline
        next_fault = time.monotonic() + rng.uniform(0.5, 1.5) * settings.fault_gap
        next_report = time.monotonic() + settings.progress
        try:
            while (now := time.monotonic()) < deadline:
                alive()
                if now >= next_fault:
                    print(f"  fault {faults.inject()}", flush=True)
                    next_fault = time.monotonic() + rng.uniform(0.5, 1.5) * settings.fault_gap
                if now >= next_report:
                    current = sample(pooler)
                    peak = current if current.rss_mb > peak.rss_mb else peak
                    print(progress_line(started, journal, current), flush=True)
                    for worker in journal.hung(now):
                        journal.error(worker, "an operation has run longer than 90 s")
                    next_report = now + settings.progress
                time.sleep(max(0.0, min(0.5, deadline - time.monotonic(), next_fault - now)))
        finally:
            stop_load(workers, journal)
        alive()
        print(f"quiet: waiting up to {settings.quiet:.0f} s for the baseline", flush=True)
        end = settle(pooler, settings.quiet, baseline)
        print(f"end:      {end.brief()}", flush=True)
        ledger = check_ledger(cluster, journal)
        log_errors = log_problems(pooler.log_text())
        RESULTS.mkdir(parents=True, exist_ok=True)
        kept = RESULTS / f"soak-{settings.seed}-pooler.log"
        shutil.copyfile(pooler.log_path, kept)
        print(f"pooler log kept in {kept}", flush=True)
        return judge(settings, journal, faults, baseline, end, peak, ledger, log_errors)


def log_problems(text: str) -> list[str]:
    """Each traceback in the pooler's log as "where: exception", and CRITICAL lines."""
    found: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "CRITICAL" in line:
            found.append(line)
        elif line.startswith("Traceback"):
            block = list(itertools.takewhile(lambda x: x.startswith(" "), lines[i + 1 :]))
            last = lines[i + 1 + len(block)] if i + 1 + len(block) < len(lines) else "?"
            where = next((b.strip() for b in reversed(block) if b.strip().startswith("File")), "")
            found.append(f"{where}: {last}")
    return found


def check_ledger(cluster: PgCluster, journal: Journal) -> dict[str, int]:
    rows = cluster.execute("SELECT id, count(*) FROM soak_ledger GROUP BY id", dbname=ROLE)
    counts = {int(i): int(n) for i, n in rows}
    with journal.lock:
        committed, killed = list(journal.committed), list(journal.killed)
    return {
        "committed": len(committed),
        "rows": sum(counts.values()),
        "missing": sum(1 for i in committed if i not in counts),
        "duplicated": sum(1 for n in counts.values() if n > 1),
        "killed": len(killed),
        "killed_but_present": sum(1 for i in killed if i in counts),
    }


def judge(
    settings: Settings,
    journal: Journal,
    faults: Faults,
    baseline: Sample,
    end: Sample,
    peak: Sample,
    ledger: dict[str, int],
    log_errors: list[str],
) -> dict[str, Any]:
    expected, unexpected = journal.classify()
    problems: list[str] = []
    for name in ("fds", "greenlets", "clients", "servers"):
        if getattr(end, name) != getattr(baseline, name):
            problems.append(f"{name}: {getattr(baseline, name)} at baseline, "
                            f"{getattr(end, name)} at the end")  # fmt: skip
    if end.slots != baseline.slots:
        diff = {k: (baseline.slots.get(k), end.slots.get(k))
                for k in baseline.slots.keys() | end.slots.keys()
                if baseline.slots.get(k) != end.slots.get(k)}  # fmt: skip
        problems.append(f"pool slots differ from the baseline: {diff}")
    if end.rss_mb > baseline.rss_mb + settings.rss_tolerance_mb:
        problems.append(f"RSS grew {end.rss_mb - baseline.rss_mb:.1f} MB "
                        f"(tolerance {settings.rss_tolerance_mb:.0f} MB)")  # fmt: skip
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected client errors")
    for key in ("missing", "duplicated", "killed_but_present"):
        if ledger[key]:
            problems.append(f"ledger: {ledger[key]} {key.replace('_', ' ')}")
    if log_errors:
        problems.append(f"{len(log_errors)} tracebacks/critical lines in the pooler log")
    with journal.lock:
        by_kind = {kind: sum(1 for f in journal.faults if f[0] == kind) for kind in FAULT_KINDS}
        transactions = dict(journal.transactions)
    return {
        "settings": vars(settings),
        "faults": by_kind,
        "fault_log": [
            {"kind": k, "at": round(s - journal.faults[0][1], 1), "detail": d}
            for k, s, _, d in journal.faults
        ],
        "recovery_seconds_max": max(faults.recoveries, default=0.0),
        "transactions": sum(transactions.values()),
        "transactions_by_worker": transactions,
        "errors_expected": len(expected),
        "errors_unexpected": [f"{w}: {t}" for _, w, t in unexpected][:50],
        "errors_expected_sample": sorted({t[:120] for _, _, t in expected})[:15],
        "ledger": ledger,
        "baseline": vars(baseline) | {"slots": len(baseline.slots)},
        "end": vars(end) | {"slots": len(end.slots)},
        "rss_peak_mb": peak.rss_mb,
        "log_errors": log_errors[:10],
        "problems": problems,
        "verdict": "PASS" if not problems else "FAIL",
    }


def report(result: dict[str, Any]) -> None:
    s, b, e = result["settings"], result["baseline"], result["end"]
    print("\n=== soak result ===")
    print(f"length: {s['seconds'] / 60:.1f} min (+ {s['warmup']:.0f} s warm-up), seed {s['seed']}")
    print("faults: " + ", ".join(f"{k}={v}" for k, v in result["faults"].items()))
    print(f"slowest recovery after a restart: {result['recovery_seconds_max']:.2f} s")
    print(
        f"transactions: {result['transactions']} "
        f"({', '.join(f'{k}={v}' for k, v in result['transactions_by_worker'].items())})"
    )
    print(f"client errors: {result['errors_expected']} expected (inside a fault's window), "
          f"{len(result['errors_unexpected'])} unexpected")  # fmt: skip
    for line in result["errors_unexpected"][:20]:
        print(f"  UNEXPECTED {line}")
    print(f"ledger: {result['ledger']}")
    print(f"{'':10} {'baseline':>10} {'end':>10}")
    for key in ("fds", "greenlets", "clients", "servers", "slots"):
        print(f"{key:10} {b[key]:>10} {e[key]:>10}")
    print(
        f"{'rss_mb':10} {b['rss_mb']:>10.1f} {e['rss_mb']:>10.1f}  "
        f"(peak {result['rss_peak_mb']:.1f}, tolerance +{s['rss_tolerance_mb']:.0f})"
    )
    for problem in result["problems"]:
        print(f"LEAK/ERROR: {problem}")
    print(f"verdict: {result['verdict']}", flush=True)


def parse_args(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="soak length (30)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (printed)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds (5%% of the soak, 10..60)")
    parser.add_argument("--quiet", type=float, default=30.0,
                        help="seconds to wait for the baseline at the end (30)")  # fmt: skip
    parser.add_argument("--progress", type=float, help="seconds between progress lines")
    parser.add_argument("--fault-gap", type=float, help="mean seconds between faults")
    parser.add_argument("--idle-clients", type=int, default=100, help="idle crowd size (100)")
    parser.add_argument("--rss-tolerance-mb", type=float, default=20.0,
                        help="RSS growth allowed over the baseline (20 MB)")  # fmt: skip
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    seconds = args.minutes * 60
    settings = Settings(
        seconds=seconds,
        warmup=args.warmup if args.warmup is not None else min(60.0, max(10.0, seconds / 20)),
        quiet=args.quiet,
        progress=args.progress or (10.0 if seconds <= 180 else 30.0),
        fault_gap=args.fault_gap or min(30.0, max(5.0, seconds / 40)),
        idle_clients=args.idle_clients,
        rss_tolerance_mb=args.rss_tolerance_mb,
        seed=args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31),
        out=args.out,
    )
    return settings


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    print(f"soak: {settings.seconds / 60:.1f} min, seed {settings.seed}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="greenvisor-soak-"))
    try:
        result = soak(settings, workdir)
    except (SoakError, subprocess.SubprocessError, OSError, psycopg2.Error) as exc:
        print(f"soak could not run: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(result)
    if settings.out is not None:
        settings.out.write_text(json.dumps(result, indent=2, default=str))
    return 0 if result["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
