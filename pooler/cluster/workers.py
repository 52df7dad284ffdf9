"""`runpooler --workers N`: a supervisor parent and N node processes on one host.

The parent runs the metadata DB migrations once, then starts N copies of the same command
(``--workers 1 --no-migrate``) with GREENVISOR_REUSE_PORT=1, so every child binds the same
listener ports with SO_REUSEPORT and the kernel spreads new connections across them, and
with a shared GREENVISOR_CLUSTER_DIR, so that without ZooKeeper they form a cluster through
the local coordinator (with ``--zookeeper`` they join ZooKeeper like any node).

The parent forwards SIGTERM/SIGINT to every child and exits when all have exited. A child
that dies otherwise is logged and not restarted (a silent restart would hide a crash loop;
the remaining workers keep serving and take its pools over).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import gevent

log = logging.getLogger("pooler")


def child_args(argv: list[str]) -> list[str]:
    """``argv`` (after the subcommand) without --workers and --internal-port."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--workers", "--internal-port"):
            skip = True
            continue
        if arg.startswith(("--workers=", "--internal-port=")):
            continue
        out.append(arg)
    return out


def supervise(workers: int, internal_port: int) -> int:
    manage = os.path.abspath(sys.argv[0])
    args = child_args(sys.argv[2:])
    own_dir = not os.environ.get("GREENVISOR_CLUSTER_DIR")
    cluster_dir = os.environ.get("GREENVISOR_CLUSTER_DIR") or tempfile.mkdtemp(
        prefix="greenvisor-cluster-"
    )
    procs: list[subprocess.Popen[bytes]] = []
    for index in range(workers):
        env = dict(os.environ)
        env["GREENVISOR_REUSE_PORT"] = "1"
        env["GREENVISOR_CLUSTER_DIR"] = cluster_dir
        port = internal_port + index if internal_port else 0
        cmd = [sys.executable, manage, "runpooler", *args, "--workers", "1", "--no-migrate"]
        cmd += ["--internal-port", str(port)]
        procs.append(subprocess.Popen(cmd, env=env))
    log.info(
        "greenvisor: supervisor started %d workers (pids %s)",
        workers,
        ", ".join(str(p.pid) for p in procs),
    )
    stopping = [False]

    def forward() -> None:
        stopping[0] = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, forward)
    live = set(procs)
    while live:
        gevent.sleep(0.2)
        for proc in list(live):
            code = proc.poll()
            if code is None:
                continue
            live.discard(proc)
            if not stopping[0]:
                log.error(
                    "greenvisor: worker pid %d exited with %s and is not restarted; "
                    "%d workers keep serving",
                    proc.pid,
                    code,
                    len(live),
                )
    if own_dir:
        shutil.rmtree(cluster_dir, ignore_errors=True)
    return 0 if stopping[0] else 1
