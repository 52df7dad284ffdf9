"""PoolLimits.reserve_size/reserve_timeout and check_query/check_delay with fake servers."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from pooler.pool import Pool, PoolKey, PoolLimits
from tests.unit.test_pool import FakeServer, FakeWaiter

pytestmark = pytest.mark.unit


class CheckedServer(FakeServer):
    def __init__(self, idle_since: float) -> None:
        super().__init__()
        self.idle_since = idle_since
        self.queries: list[str] = []

    def reset(self, query: str) -> None:
        self.queries.append(query)


def make_pool(**limits: object) -> tuple[Pool, list[Pool]]:
    connects: list[Pool] = []
    base = PoolLimits(size=1, max_clients=10, checkout_timeout=60.0)
    pool = Pool(PoolKey("t", "u", "d", "session"), replace(base, **limits), connects.append)
    return pool, connects


def test_reserve_opens_only_after_the_first_waiter_waited_and_never_beyond() -> None:
    pool, connects = make_pool(reserve_size=1, reserve_timeout=1.0)
    holder = FakeWaiter()
    pool.checkout(holder)
    pool.opened(FakeServer())
    assert holder.got is not None and len(connects) == 1
    waiters = [FakeWaiter() for _ in range(3)]
    for waiter in waiters:
        pool.checkout(waiter)
    now = time.monotonic()
    pool.retry_due(now)
    assert len(connects) == 1  # nobody waited reserve_timeout yet
    pool.retry_due(now + 1.0)
    assert len(connects) == 2 and pool.stats.reserve_opened == 1
    pool.opened(FakeServer())
    pool.retry_due(now + 5.0)
    pool.checkout(FakeWaiter())
    assert len(connects) == 2 and pool.total == 2  # size + reserve_size, not more


def test_no_reserve_by_default() -> None:
    pool, connects = make_pool()
    pool.checkout(FakeWaiter())
    pool.opened(FakeServer())
    pool.checkout(FakeWaiter(started=0.0))
    pool.retry_due(time.monotonic() + 100)
    assert len(connects) == 1


def test_check_query_runs_on_a_server_idle_past_the_delay_before_the_hand_out() -> None:
    pool, _ = make_pool(check_query="select 1", check_delay=30.0)
    fresh = CheckedServer(time.monotonic())
    pool.idle.append(fresh)
    assert pool.checkout(FakeWaiter()) is fresh and not fresh.queries
    pool.checkin(fresh)
    stale = CheckedServer(time.monotonic() - 31)
    pool.idle.append(stale)
    waiter = FakeWaiter()
    assert pool.checkout(waiter) is None and stale.queries == ["select 1"]
    pool.checkin(stale)  # what ServerConn does after a good check
    assert waiter.got is stale
