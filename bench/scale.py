"""`runpooler --workers N` at scale: 100,000 idle SCRAM clients, and the throughput workers buy.

Two runs, both self-contained (a throwaway Postgres and metadata DB in a temporary
directory, every process started here stopped here by PID, also on Ctrl-C or an error):

``python -m bench.scale`` (the scale run): starts ``runpooler --workers W`` with one pgbench
tenant and many small idle tenants, then

1. logs in to the idle tenants one by one and reads the local coordinator's
   ``pools/*.owner`` files to learn which worker owns each pool, and picks the same number
   of idle tenants owned by every worker, so the pools' servers and any relayed traffic
   spread evenly. (A client that lands, by SO_REUSEPORT, on a worker that does not own its
   pool is parked there: one descriptor, like a client of the owner; the internal
   connection to the owner opens only at its first query. Before parking, every relayed
   idle client also held two descriptors of an internal connection.)
2. runs pgbench (-S -M extended -c 100 -j 2, the pgbench tenant's pool 20) for the baseline;
3. starts L load processes (bench/scale_load.py), each from its own loopback source
   address(es) (each source/destination pair has only ~28,000 ephemeral ports), which log
   ``--clients`` connections in with SCRAM through the real login path and hold them idle;
4. records every worker's RSS and open files, runs the same pgbench again with the idle
   clients held, checks the load processes still hold every connection, releases them.

``python -m bench.scale --throughput``: pgbench -S -M extended -c 100 -j 2 through
``--workers 1`` and ``--workers 2``, one tenant (pool 20) and then two tenants (pool 10 each,
owned by different workers, two pgbench processes of 50 clients), with tps and CPU seconds
of the pooler, Postgres and pgbench.

Results go to stdout and bench/results/scale-*.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg2  # noqa: E402

from bench import run as br  # noqa: E402
from bench.idle import raise_nofile_limit  # noqa: E402
from bench.scale_load import read_loaders, start_loaders, stop_loaders  # noqa: E402
from bench.scenarios import parse_pgbench  # noqa: E402

PGBENCH_TENANT = "pgb"
IDLE_PREFIX = "idle"


@dataclass
class Pooler:
    child: br.Child
    port: int
    cluster_dir: Path

    def workers(self) -> list[int]:
        """PIDs of the worker processes (the supervisor's children)."""
        path = Path(f"/proc/{self.child.pid}/task/{self.child.pid}/children")
        return [int(p) for p in path.read_text().split()]

    def owners(self) -> dict[str, int]:
        """Pool hash -> index of the worker that owns it."""
        out = {}
        for f in (self.cluster_dir / "pools").glob("*.owner"):
            with contextlib.suppress(OSError, ValueError):
                out[f.stem] = int(f.read_text())
        return out


def tenants_document(cluster: br.Cluster, pools: dict[str, int]) -> dict[str, Any]:
    """One tenant per entry of ``pools`` (name -> pool size), all on the bench role."""
    tenants = []
    for name, size in pools.items():
        user = {
            "db_user": br.BENCH_ROLE,
            "db_password": cluster.password,
            "pool_size": size,
            "mode_type": "transaction",
        }
        tenants.append(
            {
                "external_id": name,
                "db_host": "127.0.0.1",
                "db_port": cluster.port,
                "db_database": br.BENCH_DB,
                "default_pool_size": size,
                "default_max_clients": 200_000,
                "users": [user],
            }
        )
    return {"tenants": tenants}


def start_pooler(
    procs: br.Processes, cluster: br.Cluster, pools: dict[str, int], workers: int, tag: str
) -> Pooler:
    folder = cluster.base / f"greenvisor-{tag}"
    folder.mkdir()
    env = br.greenvisor_env(cluster.base)
    env["DATABASE_URL"] = f"sqlite:///{folder / 'meta.sqlite3'}"
    env["GREENVISOR_CLUSTER_DIR"] = str(folder / "cluster")
    tenants = folder / "tenants.json"
    tenants.touch(mode=0o600)
    tenants.write_text(json.dumps(tenants_document(cluster, pools)))
    br._manage(["migrate", "--noinput"], env, "manage.py migrate")
    br._manage(["applytenants", str(tenants)], env, "manage.py applytenants")
    port, session_port, http_port = br.free_port(), br.free_port(), br.free_port()
    argv = [sys.executable, str(br.REPO / "manage.py"), "runpooler", "--listen", "127.0.0.1"]
    argv += ["--proxy-port-transaction", str(port), "--proxy-port-session", str(session_port)]
    argv += ["--http-port", str(http_port), "--workers", str(workers)]
    child = procs.start(f"greenvisor-{tag}", argv, folder / "greenvisor.log", env=env)
    pooler = Pooler(child, port, folder / "cluster")
    log = folder / "greenvisor.log"

    def joined() -> bool:
        if workers == 1:
            return br.accepts_tcp(port)
        return log.read_text(errors="replace").count("joined as node") >= workers

    deadline = time.monotonic() + 60 + 10 * workers  # Django start-ups share 2 cores
    while not joined():
        if not child.alive() or time.monotonic() > deadline:
            raise br.BenchError(
                f"greenvisor --workers {workers} did not start:\n" + child.log_tail()
            )
        time.sleep(0.5)
    print(f"greenvisor --workers {workers} up (port {port})", flush=True)
    return pooler


def select_one(port: int, user: str, password: str) -> None:
    conn = psycopg2.connect(
        host="127.0.0.1",
        port=port,
        user=user,
        password=password,
        dbname=br.BENCH_DB,
        connect_timeout=20,
    )
    with contextlib.closing(conn), conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchone()


def warm(pooler: Pooler, tenant: str, password: str) -> int | None:
    """Log in once to ``tenant``; the index of the worker that became its pool's owner."""
    before = pooler.owners()
    select_one(pooler.port, f"{br.BENCH_ROLE}.{tenant}", password)
    new = {h: i for h, i in pooler.owners().items() if h not in before}
    return next(iter(new.values()), None)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def snapshot(pooler: Pooler) -> dict[str, Any]:
    pids = pooler.workers()
    return {
        "workers_rss_kb": [rss_kb(p) for p in pids],
        "workers_open_files": [open_files(p) for p in pids],
        "supervisor_rss_kb": rss_kb(pooler.child.pid),
    }


def pgbench(
    procs: br.Processes,
    cluster: br.Cluster,
    pooler: Pooler,
    users: list[str],
    clients: int,
    duration: int,
) -> dict[str, Any]:
    """pgbench -S -M extended, ``clients`` split over one process per user, run at once."""
    assert cluster.child is not None
    roots = {"pooler": pooler.child.pid, "postgres": cluster.child.pid}
    before = br.tree_cpu(roots)
    started = time.monotonic()
    runs = []
    env = br.client_env(cluster.password)
    outs = []
    for user in users:
        argv = [str(br.PG_BINDIR / "pgbench"), "-S", "-M", "extended", "-n"]
        argv += ["-c", str(clients // len(users)), "-j", str(2 if len(users) == 1 else 1)]
        argv += ["-T", str(duration), "-h", "127.0.0.1", "-p", str(pooler.port)]
        argv += ["-U", user, br.BENCH_DB]
        out = tempfile.TemporaryFile()  # noqa: SIM115 (closed below)
        outs.append(out)
        runs.append(
            subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                **br._popen_kwargs(None, signal.SIGKILL),
            )
        )
    pgbench_cpu = 0.0
    for proc in runs:
        status, usage = br._wait4(proc.pid, started + duration + 120)
        proc.returncode = os.waitstatus_to_exitcode(status)
        pgbench_cpu += usage.ru_utime + usage.ru_stime
    after = br.tree_cpu(roots)
    tps, texts = 0.0, []
    for proc, out in zip(runs, outs, strict=True):
        out.seek(0)
        text = out.read().decode(errors="replace")
        out.close()
        parsed = parse_pgbench(text, "")
        if proc.returncode != 0 or parsed.tps is None:
            raise br.BenchError(f"pgbench failed ({proc.returncode}):\n{text[-1500:]}")
        tps += parsed.tps
        texts.append(text)
    cpu = {name: round(after[name] - before[name], 2) for name in roots}
    cpu["pgbench"] = round(pgbench_cpu, 2)
    result = {"tps": round(tps, 1), "cpu_s": cpu, "duration_s": duration, "users": users}
    print(
        f"  pgbench {clients} clients over {len(users)} tenant(s): {tps:.0f} tps, CPU s {cpu}",
        flush=True,
    )
    return result


def pick_idle_tenants(
    pooler: Pooler, password: str, candidates: list[str], per_worker: int, workers: int
) -> tuple[list[str], dict[int, list[str]]]:
    """Warm candidates until every worker owns ``per_worker`` of them (or none are left)."""
    owned: dict[int, list[str]] = {i: [] for i in range(1, workers + 1)}
    for tenant in candidates:
        if all(len(v) >= per_worker for v in owned.values()):
            break
        owner = warm(pooler, tenant, password)
        if owner is not None and len(owned.setdefault(owner, [])) < per_worker:
            owned[owner].append(tenant)
    chosen = [t for v in owned.values() for t in v]
    return chosen, owned


def scale_run(
    procs: br.Processes, cluster: br.Cluster, args: argparse.Namespace, result: dict[str, Any]
) -> None:
    candidates = [f"{IDLE_PREFIX}{i:03d}" for i in range(args.candidate_tenants)]
    pools = {PGBENCH_TENANT: 20, **{t: 1 for t in candidates}}
    pooler = start_pooler(procs, cluster, pools, args.workers, "scale")
    pgb_user = f"{br.BENCH_ROLE}.{PGBENCH_TENANT}"
    pgb_owner = warm(pooler, PGBENCH_TENANT, cluster.password)
    chosen, owned = pick_idle_tenants(
        pooler, cluster.password, candidates, args.tenants_per_worker, args.workers
    )
    result["pgbench_pool_owner"] = pgb_owner
    result["idle_tenants_by_owner"] = owned
    print(
        f"pgbench pool owned by worker {pgb_owner}; idle tenants per owner: "
        f"{ {i: len(v) for i, v in owned.items()} }",
        flush=True,
    )
    if args.warmup:
        pgbench(procs, cluster, pooler, [pgb_user], 100, args.warmup)
    print("baseline pgbench (no idle clients):", flush=True)
    result["before"] = snapshot(pooler)
    result["pgbench_without"] = pgbench_reps(procs, cluster, pooler, pgb_user, args)
    users = [f"{br.BENCH_ROLE}.{t}" for t in chosen]
    print(
        f"opening {args.clients} idle clients from {args.loaders} load processes "
        f"over {len(users)} tenants ...",
        flush=True,
    )
    started = time.monotonic()
    loaders = start_loaders(pooler.port, users, cluster.password, args)
    try:
        read_loaders(loaders, "ready", args.open_timeout + 30)
        opened = sum(ld.opened for ld in loaders)
        result["idle_clients"] = opened
        result["open_seconds"] = round(time.monotonic() - started, 1)
        result["load_errors"] = [ld.error for ld in loaders if ld.error]
        result["load_retries"] = [ld.retried for ld in loaders if ld.retried]
        time.sleep(2)  # let the last logins settle
        result["held"] = snapshot(pooler)
        print(
            f"{opened} idle clients in {result['open_seconds']} s; workers' open files "
            f"{result['held']['workers_open_files']}",
            flush=True,
        )
        if not pooler.child.alive():
            raise br.BenchError("greenvisor died:\n" + pooler.child.log_tail())
        log_text = pooler.child.log.read_text(errors="replace")
        problems = [ln for ln in log_text.splitlines() if " ERROR " in ln or "Too many" in ln]
        result["pooler_error_lines"] = {"count": len(problems), "first": problems[:5]}
        print(f"pooler log: {len(problems)} ERROR lines {problems[:3]}", flush=True)
        print("pgbench with the idle clients held:", flush=True)
        result["pgbench_with"] = pgbench_reps(procs, cluster, pooler, pgb_user, args)
    finally:
        stop_loaders(loaders)
    result["still_held_at_release"] = sum(ld.held or 0 for ld in loaders)
    time.sleep(3)
    print("baseline pgbench again (idle clients gone):", flush=True)
    result["pgbench_without_after"] = pgbench_reps(procs, cluster, pooler, pgb_user, args)
    procs.stop(pooler.child)
    summarize_scale(result)


def pgbench_reps(
    procs: br.Processes, cluster: br.Cluster, pooler: Pooler, user: str, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """``--scale-reps`` pgbench runs in a row (this VM's run-to-run spread is ~20%)."""
    return [
        pgbench(procs, cluster, pooler, [user], 100, args.duration) for _ in range(args.scale_reps)
    ]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def summarize_scale(r: dict[str, Any]) -> None:
    before, held = r["before"], r["held"]
    rss_before = sum(before["workers_rss_kb"])
    rss_held = sum(held["workers_rss_kb"])
    clients = max(r.get("idle_clients", 0), 1)
    without = [run["tps"] for run in r["pgbench_without"] + r["pgbench_without_after"]]
    with_ = [run["tps"] for run in r["pgbench_with"]]
    r["summary"] = {
        "idle_clients": r.get("idle_clients"),
        "still_held_at_release": r.get("still_held_at_release"),
        "workers_rss_mb_before": round(rss_before / 1024, 1),
        "workers_rss_mb_held": round(rss_held / 1024, 1),
        "rss_kb_per_idle_client": round((rss_held - rss_before) / clients, 2),
        "max_open_files_per_worker": max(held["workers_open_files"]),
        "tps_without_before": [run["tps"] for run in r["pgbench_without"]],
        "tps_with": with_,
        "tps_without_after": [run["tps"] for run in r["pgbench_without_after"]],
        "ratio_with_over_without_median": round(_median(with_) / _median(without), 3),
    }
    print(json.dumps(r["summary"], indent=1), flush=True)


# --- throughput of --workers -----------------------------------------------------------------


def throughput_run(
    procs: br.Processes, cluster: br.Cluster, args: argparse.Namespace, result: dict[str, Any]
) -> None:
    rows = []
    for workers in (1, 2):
        names = ["one", "t0", "t1", "t2", "t3", "t4", "t5"]
        pools = {"one": 20, **{n: 10 for n in names[1:]}}
        pooler = start_pooler(procs, cluster, pools, workers, f"w{workers}")
        owner_of = {n: warm(pooler, n, cluster.password) for n in names}
        pair: list[str] = []
        for n in names[1:]:
            if owner_of[n] not in [owner_of[p] for p in pair] or workers == 1:
                pair.append(n)
            if len(pair) == 2:
                break
        print(f"--workers {workers}: owners {owner_of}; two-tenant run on {pair}", flush=True)
        single = [f"{br.BENCH_ROLE}.one"]
        double = [f"{br.BENCH_ROLE}.{n}" for n in pair]
        if args.warmup:
            pgbench(procs, cluster, pooler, single, 100, args.warmup)
        for rep in range(args.reps):
            for label, users in (
                ("one tenant, pool 20", single),
                ("two tenants, pool 10 each", double),
            ):
                run = pgbench(procs, cluster, pooler, users, 100, args.duration)
                rows.append(
                    {
                        "workers": workers,
                        "case": label,
                        "rep": rep + 1,
                        "owners": [owner_of[u.split(".")[1]] for u in users],
                        **run,
                    }
                )
        procs.stop(pooler.child)
    result["throughput"] = rows
    print("workers | case | owners | tps | CPU s pooler / postgres / pgbench", flush=True)
    for row in rows:
        cpu = row["cpu_s"]
        print(
            f"{row['workers']} | {row['case']} | {row['owners']} | {row['tps']:.0f} | "
            f"{cpu['pooler']} / {cpu['postgres']} / {cpu['pgbench']}",
            flush=True,
        )


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    p.add_argument("--throughput", action="store_true", help="--workers 1 vs 2 instead")
    p.add_argument("--clients", type=int, default=100_000, help="idle clients (100000)")
    p.add_argument("--workers", type=int, default=8, help="runpooler --workers (8)")
    p.add_argument("--loaders", type=int, default=8, help="load processes (8)")
    p.add_argument(
        "--tenants-per-worker", type=int, default=2, help="idle tenants owned by each worker (2)"
    )
    p.add_argument(
        "--candidate-tenants",
        type=int,
        default=0,
        help="idle tenants configured to choose from (default 8 x workers)",
    )
    p.add_argument("--concurrency", type=int, default=48, help="logins in flight per loader")
    p.add_argument("--open-timeout", type=float, default=600.0)
    p.add_argument("--hold", type=float, default=900.0, help="loaders let go after this")
    p.add_argument("--duration", type=int, default=20, help="pgbench seconds (20)")
    p.add_argument("--warmup", type=int, default=5, help="pgbench warm-up seconds (5)")
    p.add_argument("--reps", type=int, default=2, help="throughput repetitions (2)")
    p.add_argument(
        "--scale-reps",
        type=int,
        default=3,
        help="pgbench runs before, with and after the idle clients (3; medians compared)",
    )
    p.add_argument("--scale", type=int, default=10, help="pgbench -i scale (10)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if not args.candidate_tenants:
        args.candidate_tenants = 8 * args.workers
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    raise_nofile_limit()
    as_user = br._run_as()
    base = Path(tempfile.mkdtemp(prefix="greenvisor-scale-"))
    if as_user:
        import shutil

        shutil.chown(base, as_user, as_user)
    procs = br.Processes()
    result: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else argv,
        "machine": br.machine_info(),
        "settings": {k: v for k, v in vars(args).items() if k != "keep"},
    }
    failed = True
    try:
        with br.interrupts_as_keyboardinterrupt():
            cluster = br.start_cluster(procs, base, as_user)
            br.pgbench_init(cluster, args.scale)
            if args.throughput:
                throughput_run(procs, cluster, args, result)
            else:
                scale_run(procs, cluster, args, result)
        failed = False
    except br.BenchError as exc:
        print(f"error: {exc}", flush=True)
        result["error"] = str(exc)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        result["error"] = "interrupted"
    finally:
        procs.stop_all()
        br._clean_up(base, args.keep, failed)
    br.RESULTS_DIR.mkdir(exist_ok=True)
    kind = "throughput" if args.throughput else "scale"
    out = br.RESULTS_DIR / f"{kind}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"results: {out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
