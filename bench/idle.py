"""Many idle, authenticated client connections from one light process (bench scenario 5).

Theory of operation: an asyncio loop opens ``--count`` TCP connections to a Postgres endpoint
(a pooler or Postgres itself), at most ``--concurrency`` logins in flight, and on each speaks
the real login of a client: StartupMessage, then SCRAM-SHA-256 (or cleartext/MD5 if that is
what the server asks) with :class:`pooler.auth.scram.ScramClient`, until ReadyForQuery. Then
the connection is simply held open, sending nothing. The salted password (PBKDF2, thousands of
HMAC rounds) is computed once per salt rather than once per connection, so the load side costs
little CPU; every exchange is still a full SCRAM exchange with a fresh nonce and proof.

When every connection is logged in the process prints ``ready <count>`` (one line, flushed)
and waits, bounded by ``--hold`` seconds, for SIGTERM/SIGINT or (if stdin is a pipe) stdin
closing; then it
closes every connection and exits 0. A login that fails prints ``error <message>`` and the
process exits 1 after closing what it opened. Opening is bounded by ``--timeout`` seconds.
RLIMIT_NOFILE is raised from soft to hard first. Password from ``PGPASSWORD``.

    PGPASSWORD=... python -m bench.idle --port 6543 --user app.t1 --database app --count 4000
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import os
import resource
import signal
import stat
import struct
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/idle.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pooler.auth import scram  # noqa: E402
from pooler.protocol import builders, parsers  # noqa: E402
from pooler.protocol.errors import AuthError, ProtocolError  # noqa: E402

AUTH_OK, AUTH_CLEARTEXT, AUTH_MD5 = 0, 3, 5
AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL = 10, 11, 12
MAX_BODY = 1 << 20


class LoginError(Exception):
    pass


def raise_nofile_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def ready_to_open(count: int) -> bool:
    """Raise RLIMIT_NOFILE and derive the SCRAM salted password once; False (said on
    stdout, which the parent reads) when ``count`` connections cannot fit."""
    limit = raise_nofile_limit()
    if count + 64 > limit:
        print(f"error {count} connections need more than RLIMIT_NOFILE {limit}", flush=True)
        return False
    cache_salted_password()
    return True


def cache_salted_password() -> None:
    """One PBKDF2 per (password, salt, iterations) in this process, not one per login."""
    scram.salted_password = functools.lru_cache(maxsize=16)(scram.salted_password)  # type: ignore[assignment]


async def read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    header = await reader.readexactly(5)
    length = struct.unpack("!I", header[1:])[0]
    if length < 4 or length > MAX_BODY:
        raise LoginError(f"bad message length {length}")
    return header[:1], await reader.readexactly(length - 4)


def _md5_answer(user: str, password: str, salt: bytes) -> bytes:
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()


async def login(
    host: str, port: int, user: str, database: str, password: str
) -> asyncio.StreamWriter:
    """Open one connection and log in; the writer keeps the socket open."""
    _reader, writer = await login_stream(host, port, user, database, password)
    return writer


async def login_stream(
    host: str, port: int, user: str, database: str, password: str, source: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open one connection (from local address ``source`` if given) and log in."""
    local = (source, 0) if source else None
    reader, writer = await asyncio.open_connection(host, port, local_addr=local)
    try:
        writer.write(builders.startup_message({"user": user, "database": database}))
        client: scram.ScramClient | None = None
        while True:
            kind, body = await read_message(reader)
            if kind == b"E":
                fields = parsers.parse_error_fields(body)
                raise LoginError(f"{fields.get('C', '?')}: {fields.get('M', '?')}")
            if kind == b"Z":
                return reader, writer
            if kind != b"R":
                continue  # ParameterStatus, BackendKeyData, NoticeResponse
            code, data = parsers.parse_authentication(body)
            if code == AUTH_OK:
                continue
            if code == AUTH_SASL:
                client = scram.ScramClient(password)
                writer.write(builders.sasl_initial_response("SCRAM-SHA-256", client.client_first()))
            elif code == AUTH_SASL_CONTINUE and client is not None:
                writer.write(builders.sasl_response(client.server_first(data)))
            elif code == AUTH_SASL_FINAL and client is not None:
                client.server_final(data)
            elif code == AUTH_CLEARTEXT:
                writer.write(builders.password_message(password.encode() + b"\0"))
            elif code == AUTH_MD5:
                writer.write(
                    builders.password_message(_md5_answer(user, password, data[:4]) + b"\0")
                )
            else:
                raise LoginError(f"unsupported authentication request {code}")
    except BaseException:
        writer.close()
        raise


async def open_all(args: argparse.Namespace, password: str) -> list[asyncio.StreamWriter]:
    opened: list[asyncio.StreamWriter] = []
    semaphore = asyncio.Semaphore(args.concurrency)

    async def one() -> None:
        async with semaphore:
            opened.append(await login(args.host, args.port, args.user, args.database, password))

    tasks = [asyncio.create_task(one()) for _ in range(args.count)]
    try:
        await gather_or_cancel(tasks, args.timeout)
    except BaseException:
        close_all(opened)
        raise
    return opened


async def gather_or_cancel(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    """Wait for every task within ``timeout``; on a timeout or any failure cancel the rest
    and wait for them to finish before raising."""
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        if not writer.is_closing():
            writer.write(builders.terminate())
            writer.close()


async def hold(seconds: float) -> None:
    """Until SIGTERM/SIGINT, stdin closing, or ``seconds``."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if stat.S_ISFIFO(os.fstat(0).st_mode):
        reader = asyncio.StreamReader()
        try:
            await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", 0)
            )

            async def stdin_closed() -> None:
                await reader.read()
                stop.set()

            asyncio.ensure_future(stdin_closed())
        except (OSError, ValueError):
            pass  # /dev/null or a file: only signals and the time limit stop us
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def amain(args: argparse.Namespace) -> int:
    password = os.environ.get("PGPASSWORD", "")
    started = time.monotonic()
    try:
        writers = await open_all(args, password)
    except (LoginError, AuthError, ProtocolError, OSError, asyncio.IncompleteReadError) as exc:
        print(f"error {type(exc).__name__}: {exc}", flush=True)
        return 1
    except TimeoutError:
        print(
            f"error timed out opening {args.count} connections ({args.timeout:.0f} s)", flush=True
        )
        return 1
    print(f"ready {len(writers)} in {time.monotonic() - started:.1f} s", flush=True)
    await hold(args.hold)
    close_all(writers)
    await asyncio.sleep(0.2)  # let the Terminates go out
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--database", required=True)
    p.add_argument("--count", type=int, required=True, help="connections to open and hold")
    p.add_argument("--concurrency", type=int, default=32, help="logins in flight (32)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to open them all (120)")
    p.add_argument("--hold", type=float, default=900.0, help="seconds to hold at most (900)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.count < 1 or args.concurrency < 1:
        print("error --count and --concurrency must be >= 1", flush=True)
        return 2
    if not ready_to_open(args.count):
        return 2
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
