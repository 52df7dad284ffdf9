"""`manage.py runpooler` as an operator sees it: start-up lines, busy ports, SIGTERM, --help."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PASSWORDS, PoolerFactory, default_tenants
from tests.support.net import port_open
from tests.support.pg import PgCluster
from tests.support.pooler import REPO_ROOT, PoolerProcess, manage_env

pytestmark = pytest.mark.integration

LISTENERS = ["transaction", "session", "http"]


@pytest.fixture
def busy_socket() -> Iterator[socket.socket]:
    """A socket listening on 127.0.0.1 (some other program holding a port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        yield sock
    finally:
        sock.close()


def test_help_lists_the_options() -> None:
    out = subprocess.run(
        [sys.executable, "manage.py", "runpooler", "--help"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    for option in ("--listen", "--proxy-port-transaction", "--proxy-port-session",
                   "--http-port", "--client-auth"):  # fmt: skip
        assert option in out.stdout


@pytest.mark.parametrize("taken", LISTENERS)
def test_a_port_in_use_ends_start_up_with_one_line(
    tmp_path: Path, busy_socket: socket.socket, taken: str
) -> None:
    pooler = PoolerProcess(tmp_path, {"tenants": []})
    busy = busy_socket.getsockname()[1]
    if taken == "transaction":
        pooler.transaction_port = busy
    elif taken == "session":
        pooler.session_port = busy
    else:
        pooler.http_port = busy
    started = time.monotonic()
    out = subprocess.run(
        pooler.command(), cwd=REPO_ROOT, env=manage_env(pooler.database_url),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert time.monotonic() - started < 30
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert str(busy) in lines[0]
    assert "Traceback" not in out.stderr + out.stdout
    for port in (pooler.transaction_port, pooler.session_port, pooler.http_port):
        if port != busy:
            assert not port_open("127.0.0.1", port), f"port {port} left open"


def listener_lines(log: str, port: int) -> list[str]:
    return [line for line in log.splitlines() if re.search(rf":{port}\b", line)]


def test_start_up_logs_one_line_per_listener(pooler: PoolerProcess) -> None:
    ports = dict(
        zip(
            LISTENERS, [pooler.transaction_port, pooler.session_port, pooler.http_port], strict=True
        )
    )
    # The ports accept (kernel backlog) a moment before the listeners log that they serve.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if all(listener_lines(pooler.log_text(), port) for port in ports.values()):
            break
        time.sleep(0.05)
    log = pooler.log_text()
    for name, port in ports.items():
        lines = listener_lines(log, port)
        assert len(lines) == 1, (name, port, log)
        if name != "http":
            assert name in lines[0].lower(), lines[0]


def test_sigterm_stops_the_pooler(pooler_factory: PoolerFactory, pg: PgCluster) -> None:
    pooler = pooler_factory(default_tenants(pg))
    conn = pooler.connect("app1user.t1", PASSWORDS["app1user"], "app1")
    conn.close()  # a full round trip: the pooler is serving, its signal handlers are set
    assert pooler.proc is not None
    proc = pooler.proc
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    assert proc.returncode == 0, pooler.log_tail()
    ports = [pooler.transaction_port, pooler.session_port, pooler.http_port]
    assert not any(port_open(pooler.host, port) for port in ports)
