"""One load process of ``python -m bench.scale``: many idle, SCRAM-authenticated clients.

Theory of operation: an asyncio loop opens ``--count`` TCP connections, bound to the
``--source`` loopback addresses in turn (each source/destination address pair has only the
~28,000 ephemeral ports of ``ip_local_port_range``), and logs each one in with the real
client login of bench/idle.py (StartupMessage, SCRAM-SHA-256 through
:class:`pooler.auth.scram.ScramClient`, until ReadyForQuery), spreading the connections
over the ``--user`` names in turn. At most ``--concurrency`` logins are in flight. The salted
password is computed once per salt, so the load side costs little CPU; every exchange is
still a full SCRAM exchange with a fresh nonce.

Lines on stdout (flushed), read by the parent: ``opened N`` every second while opening,
``ready N SECONDS`` once all are in (after ``retried K logins, first: ...`` when a refused
or cut login was tried again, as a real client reconnects; at most 3 tries each),
``error MESSAGE`` if a login fails or opening takes longer than ``--timeout``. Then the
connections are held, sending nothing, until stdin closes (the parent is done or died) or
``--hold`` seconds pass; the process then prints
``held N of M`` (connections the pooler had not closed) and closes everything.

The parent's side (start the load processes, follow their lines, let them go) is at the
end of this file, so that the protocol between the two lives in one place.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import run as br  # noqa: E402
from bench.idle import LoginError, gather_or_cancel, login_stream, ready_to_open  # noqa: E402
from pooler.protocol import builders  # noqa: E402
from pooler.protocol.errors import AuthError, ProtocolError  # noqa: E402

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
RETRIES = 3


async def _login_from(
    source: str, host: str, port: int, user: str, database: str, password: str
) -> Conn:
    """bench.idle's login (StartupMessage, SCRAM until ReadyForQuery), from ``source``."""
    return await login_stream(host, port, user, database, password, source)


async def open_all(
    args: argparse.Namespace, password: str, conns: list[Conn], retries: list[str]
) -> None:
    semaphore = asyncio.Semaphore(args.concurrency)
    sources = args.source.split(",")
    users = args.user.split(",")

    async def one(i: int) -> None:
        async with semaphore:
            for attempt in range(1, RETRIES + 1):
                try:
                    conns.append(
                        await _login_from(
                            sources[i % len(sources)],
                            args.host,
                            args.port,
                            users[i % len(users)],
                            args.database,
                            password,
                        )
                    )
                    return
                except (OSError, asyncio.IncompleteReadError, LoginError) as exc:
                    # A real client reconnects after a refused or cut login; a wrong
                    # password (28P01) or a retry too many is an error.
                    if str(exc).startswith("28") or attempt == RETRIES:
                        raise
                    retries.append(f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.5 * attempt)

    async def progress() -> None:
        while True:
            await asyncio.sleep(1.0)
            print(f"opened {len(conns)}", flush=True)

    reporter = asyncio.create_task(progress())
    tasks = [asyncio.create_task(one(i)) for i in range(args.count)]
    try:
        await gather_or_cancel(tasks, args.timeout)
    finally:
        reporter.cancel()


async def stdin_closed_or(seconds: float) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", 0)
    )
    try:
        await asyncio.wait_for(reader.read(), seconds)
    except TimeoutError:
        pass


def close_all(conns: list[Conn]) -> None:
    for _, writer in conns:
        if not writer.is_closing():
            writer.write(builders.terminate())
            writer.close()


async def amain(args: argparse.Namespace) -> int:
    password = os.environ.get("PGPASSWORD", "")
    conns: list[Conn] = []
    retries: list[str] = []
    started = time.monotonic()
    code = 0
    try:
        await open_all(args, password, conns, retries)
        if retries:
            print(f"retried {len(retries)} logins, first: {retries[0]}", flush=True)
        print(f"ready {len(conns)} {time.monotonic() - started:.1f}", flush=True)
        await stdin_closed_or(args.hold)
        held = sum(1 for reader, _ in conns if not reader.at_eof())
        print(f"held {held} of {len(conns)}", flush=True)
    except (LoginError, AuthError, ProtocolError, OSError, asyncio.IncompleteReadError) as exc:
        print(f"error after {len(conns)} logins: {type(exc).__name__}: {exc}", flush=True)
        code = 1
    except TimeoutError:
        print(f"error timed out ({args.timeout:.0f} s) after {len(conns)} logins", flush=True)
        code = 1
    close_all(conns)
    await asyncio.sleep(0.5)  # let the Terminates go out
    return code


# --- the parent side (bench/scale.py) ------------------------------------------------------


@dataclass
class Loader:
    proc: subprocess.Popen[bytes]
    count: int
    opened: int = 0
    ready: bool = False
    held: int | None = None
    error: str | None = None
    retried: str | None = None


def start_loaders(
    port: int, users: list[str], password: str, args: argparse.Namespace
) -> list[Loader]:
    """``args.loaders`` load processes, ``args.clients`` in all, each from its own source."""
    loaders = []
    per = [
        args.clients // args.loaders + (i < args.clients % args.loaders)
        for i in range(args.loaders)
    ]
    for i, count in enumerate(per):
        sources = ",".join(f"127.0.{1 + i // 250}.{2 + i % 250}" for _ in range(1))
        argv = [sys.executable, "-m", "bench.scale_load", "--port", str(port)]
        argv += ["--source", sources, "--user", ",".join(users), "--database", br.BENCH_DB]
        argv += ["--count", str(count), "--concurrency", str(args.concurrency)]
        argv += ["--timeout", str(args.open_timeout), "--hold", str(args.hold)]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=br.REPO,
            env=dict(os.environ, PGPASSWORD=password),
            **br._popen_kwargs(None, signal.SIGTERM),
        )
        loaders.append(Loader(proc, count))
    return loaders


def read_loaders(loaders: list[Loader], until: str, timeout: float) -> None:
    """Follow the loaders' lines until each is ``until`` ("ready" or "held") or failed."""
    sel = selectors.DefaultSelector()
    for loader in loaders:
        assert loader.proc.stdout is not None
        sel.register(loader.proc.stdout, selectors.EVENT_READ, loader)
    buffers: dict[int, bytes] = {}
    deadline = time.monotonic() + timeout
    last_print = 0.0

    def done(ld: Loader) -> bool:
        return ld.error is not None or (ld.ready if until == "ready" else ld.held is not None)

    while not all(done(ld) for ld in loaders) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            ld: Loader = key.data
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                if not done(ld):
                    ld.error = ld.error or f"exited ({ld.proc.wait()}) without a result"
                continue
            buffers[key.fd] = buffers.get(key.fd, b"") + chunk
            *lines, buffers[key.fd] = buffers[key.fd].split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                if line.startswith("opened "):
                    ld.opened = int(line.split()[1])
                elif line.startswith("ready "):
                    ld.opened, ld.ready = int(line.split()[1]), True
                elif line.startswith("held "):
                    ld.held = int(line.split()[1])
                elif line.startswith("retried"):
                    ld.retried = line
                    print(f"  load pid {ld.proc.pid}: {line}", flush=True)
                elif line.startswith("error"):
                    ld.error = line
                    print(f"  load pid {ld.proc.pid}: {line}", flush=True)
        if time.monotonic() - last_print > 5:
            last_print = time.monotonic()
            print(f"  idle clients logged in: {sum(ld.opened for ld in loaders)}", flush=True)
    sel.close()


def stop_loaders(loaders: list[Loader]) -> None:
    for loader in loaders:
        if loader.proc.stdin is not None and not loader.proc.stdin.closed:
            with contextlib.suppress(OSError):
                loader.proc.stdin.close()
    read_loaders(
        [
            ld
            for ld in loaders
            if ld.proc.stdout and not ld.proc.stdout.closed and ld.held is None and ld.error is None
        ],
        "held",
        60,
    )
    for loader in loaders:
        try:
            loader.proc.wait(30)
        except subprocess.TimeoutExpired:
            loader.proc.kill()
            loader.proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale_load")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--source", default="127.0.0.1", help="comma-separated source addresses")
    p.add_argument("--user", required=True, help="comma-separated login names, used in turn")
    p.add_argument("--database", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--hold", type=float, default=600.0)
    args = p.parse_args(argv)
    if not ready_to_open(args.count):
        return 2
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
