"""Allow lists, bans after repeated failures, and failed logins that all look alike.

Different client addresses are other loopback IPs (127.0.0.2, ...), bound as the source.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from pooler.bans import BanList, address_allowed
from tests.conftest import PASSWORDS, PoolerFactory
from tests.support.net import WireClient
from tests.support.pg import PgCluster
from tests.support.pooler import PoolerProcess, both_modes, tenant_doc

pytestmark = pytest.mark.integration

FAILURES, BAN_TIME, DELAY = 3, 2.0, 1.0
GOOD = ("app1user", PASSWORDS["app1user"])


def ban_tenants(pg: PgCluster) -> dict[str, Any]:
    users = both_modes(*GOOD)
    return {
        "tenants": [
            tenant_doc("b1", "app1", pg.port, users),
            tenant_doc("b2", "app1", pg.port, users),
            tenant_doc("only2", "app1", pg.port, users, allow_list=["127.0.0.2/32", "::1/128"]),
            tenant_doc("anyip", "app1", pg.port, users, allow_list=["0.0.0.0/0", "::/0"]),
        ]
    }


@pytest.fixture(scope="module")
def ban_pooler(pooler_factory: PoolerFactory, pg: PgCluster) -> PoolerProcess:
    args = ["--ban-failures", str(FAILURES), "--ban-window", "30", "--ban-time", str(BAN_TIME),
            "--auth-failure-delay", str(DELAY)]  # fmt: skip
    return pooler_factory(ban_tenants(pg), extra_args=args)


def attempt(pooler: PoolerProcess, login: str, password: str, source: str) -> dict[str, str]:
    with WireClient(pooler.host, pooler.transaction_port, source=source) as client:
        return client.login(login, password, "app1")


def test_allow_list_refuses_other_addresses(ban_pooler: PoolerProcess) -> None:
    fields = attempt(ban_pooler, "app1user.only2", GOOD[1], "127.0.0.1")
    assert fields["S"] == "FATAL" and fields["C"] == "28000"
    assert 'no allow_list entry for host "127.0.0.1"' in fields["M"]
    assert attempt(ban_pooler, "app1user.only2", GOOD[1], "127.0.0.2") == {}
    assert attempt(ban_pooler, "app1user.anyip", GOOD[1], "127.0.0.1") == {}
    assert attempt(ban_pooler, "app1user.b1", GOOD[1], "127.0.0.1") == {}  # no list: all


def test_failures_ban_the_tenant_and_address_pair_for_a_while(ban_pooler: PoolerProcess) -> None:
    ip = "127.0.0.5"
    for _ in range(FAILURES):
        assert attempt(ban_pooler, "app1user.b1", "wrong", ip)["C"] == "28P01"
    banned = attempt(ban_pooler, "app1user.b1", GOOD[1], ip)  # even the right password
    assert banned["C"] == "28000" and "too many failed logins" in banned["M"], banned
    assert attempt(ban_pooler, "app1user.b2", GOOD[1], ip) == {}  # other tenant: fine
    assert attempt(ban_pooler, "app1user.b1", GOOD[1], "127.0.0.6") == {}  # other address
    deadline = time.monotonic() + BAN_TIME + 5
    while attempt(ban_pooler, "app1user.b1", GOOD[1], ip) != {}:
        assert time.monotonic() < deadline, "the ban never ended"
        time.sleep(0.25)


def test_failed_logins_look_alike_whatever_failed(ban_pooler: PoolerProcess) -> None:
    """Unknown tenant, unknown user, wrong password: same message, none faster than the
    delay floor (each from its own address so that no ban interferes)."""
    cases = {
        "app1user.no_such_tenant": GOOD[1],
        "nobody.b1": GOOD[1],
        "app1user.b1": "wrongPw4tests",
    }
    seen = set()
    for i, (login, password) in enumerate(cases.items()):
        started = time.monotonic()
        fields = attempt(ban_pooler, login, password, f"127.0.1.{i + 1}")
        took = time.monotonic() - started
        assert took >= DELAY, (login, took)
        seen.add((fields["S"], fields["C"], fields["M"].replace(login, "<login>")))
    assert len(seen) == 1, seen
    assert next(iter(seen))[1] == "28P01"


def test_delay_floor_does_not_hold_up_other_logins(ban_pooler: PoolerProcess) -> None:
    """A failed login waits out the floor while another client logs in meanwhile."""
    order: list[str] = []

    def fail() -> None:
        attempt(ban_pooler, "app1user.b2", "wrong", "127.0.0.7")
        order.append("failed")

    thread = threading.Thread(target=fail)
    thread.start()
    time.sleep(0.1)
    assert attempt(ban_pooler, "app1user.b2", GOOD[1], "127.0.0.8") == {}
    order.append("logged in")
    thread.join(10)
    assert order == ["logged in", "failed"]


def test_ban_table_is_bounded() -> None:
    bans = BanList(failures=2, window=60, ban_time=60, max_entries=100)
    for i in range(10_000):
        bans.failed(("t", f"10.0.{i // 256}.{i % 256}"), now=1.0)
    assert len(bans) == 100
    key = ("t", "192.0.2.1")
    assert not bans.failed(key, now=2.0)
    assert bans.failed(key, now=3.0)
    assert bans.banned_for(key, now=4.0) == pytest.approx(59.0)
    assert bans.banned_for(key, now=63.5) == 0.0
    assert not bans.failed(key, now=100.0)  # counting starts over after a ban
    assert not bans.failed(("t", "192.0.2.2"), now=0.0) and not bans.failed(
        ("t", "192.0.2.2"), now=70.0
    )  # failures outside the window do not add up


def test_allow_list_matching() -> None:
    assert address_allowed((), "203.0.113.9")
    assert address_allowed(("10.0.0.0/8",), "10.1.2.3")
    assert not address_allowed(("10.0.0.0/8",), "11.1.2.3")
    assert address_allowed(("10.0.0.0/8",), "::ffff:10.1.2.3")  # IPv4-mapped
    assert address_allowed(("0.0.0.0/0", "::/0"), "2001:db8::1")
    assert not address_allowed(("not a cidr",), "10.1.2.3")  # fail closed
    assert not address_allowed(("10.0.0.0/8",), "garbage")
