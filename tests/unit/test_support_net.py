"""The integration tests' port picker: ports no outgoing connection can be given."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.support import net

pytestmark = pytest.mark.unit


def test_free_ports_are_below_the_ephemeral_range_and_never_repeat() -> None:
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    low = int(ephemeral[0])  # read here, not from net: what the kernel says
    ports = [net.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(port < low for port in ports), (ports, low)
    with socket.socket() as sock:  # each one can be bound (nothing holds it)
        sock.bind(("127.0.0.1", ports[-1]))


def test_a_bound_port_is_skipped() -> None:
    upcoming = [net._PORTS[(net._cursor + i) % len(net._PORTS)] for i in range(40)]
    nxt = next(port for port in upcoming if port not in net._given)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", nxt))  # what free_port would hand out next
        holder.listen()
        got = net.free_port()
    assert got != nxt
    assert got in upcoming
