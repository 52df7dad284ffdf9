"""Pool checkout/checkin with fake servers and waiters: sizes, FIFO, hand-off, timeouts."""

from __future__ import annotations

import bisect
import time

import pytest

from pooler.pool import WAIT_BUCKETS, XACT_BUCKETS, Histogram, Pool, PoolKey, PoolLimits

pytestmark = pytest.mark.unit


class FakeServer:
    def __init__(self, generation: int = 0) -> None:
        self.generation = generation
        self.created_at = time.monotonic()
        self.closed_because: str | None = None
        self.parked = 0

    def close(self, reason: str) -> None:
        self.closed_because = reason

    def park(self, now: float = 0.0) -> None:
        self.parked += 1
        self.parked_at = now


class FakeWaiter:
    def __init__(self, gone: bool = False, started: float | None = None) -> None:
        self.wait_started = time.monotonic() if started is None else started
        self.gone = gone
        self.got: FakeServer | None = None
        self.failed: tuple[str, str] | None = None

    def server_ready(self, server: FakeServer) -> bool:  # type: ignore[override]
        if self.gone:
            return False
        self.got = server
        return True

    def checkout_failed(self, sqlstate: str, message: str) -> None:
        self.failed = (sqlstate, message)


def make_pool(size: int = 2, timeout: float = 1.0, max_clients: int = 10) -> tuple[Pool, list]:
    connects: list[Pool] = []
    pool = Pool(
        PoolKey("t1", "app", "app", "transaction"),
        PoolLimits(size=size, max_clients=max_clients, checkout_timeout=timeout),
        connects.append,
    )
    return pool, connects


def test_waiter_triggers_connect_and_gets_the_new_server() -> None:
    pool, connects = make_pool()
    waiter = FakeWaiter()
    assert pool.checkout(waiter) is None
    assert len(connects) == 1 and pool.connecting == 1
    server = FakeServer()
    pool.opened(server)
    assert waiter.got is server
    assert pool.active == 1 and pool.connecting == 0 and not pool.idle


def test_size_is_never_exceeded() -> None:
    pool, connects = make_pool(size=2)
    waiters = [FakeWaiter() for _ in range(5)]
    for waiter in waiters:
        pool.checkout(waiter)
    assert len(connects) == 2
    assert pool.total == 2
    pool.opened(FakeServer())
    pool.opened(FakeServer())
    assert pool.total == 2 and pool.active == 2
    assert [w.got is not None for w in waiters] == [True, True, False, False, False]


def test_checkin_hands_straight_to_next_waiter_in_fifo_order() -> None:
    pool, _ = make_pool(size=1)
    first, second, third = FakeWaiter(), FakeWaiter(), FakeWaiter()
    for waiter in (first, second, third):
        pool.checkout(waiter)
    server = FakeServer()
    pool.opened(server)
    assert first.got is server
    pool.checkin(server)
    assert second.got is server and third.got is None
    assert server.parked == 0  # never parked in between
    pool.checkin(server)
    assert third.got is server


def test_gone_waiter_does_not_lose_the_server() -> None:
    pool, _ = make_pool(size=1)
    gone, alive = FakeWaiter(gone=True), FakeWaiter()
    pool.checkout(gone)
    pool.checkout(alive)
    server = FakeServer()
    pool.opened(server)
    assert alive.got is server
    assert pool.active == 1


def test_no_waiter_parks_the_server_idle_and_reuses_it() -> None:
    pool, connects = make_pool()
    waiter = FakeWaiter()
    pool.checkout(waiter)
    server = FakeServer()
    pool.opened(server)
    pool.checkin(server)
    assert list(pool.idle) == [server] and server.parked == 1
    assert pool.checkout(FakeWaiter()) is server
    assert len(connects) == 1


def test_discard_closes_and_reopens_for_waiters() -> None:
    pool, connects = make_pool(size=1)
    a, b = FakeWaiter(), FakeWaiter()
    pool.checkout(a)
    pool.checkout(b)
    server = FakeServer()
    pool.opened(server)
    pool.discard(server, "dirty")
    assert server.closed_because == "dirty"
    assert len(connects) == 2  # a replacement for b
    assert pool.total == 1


class ResettingServer(FakeServer):
    """A server whose reset/check query is in flight (as ServerConn.reset leaves it)."""

    def __init__(self, closed: bool = False) -> None:
        super().__init__()
        self.resetting = not closed

    def reset(self, query: str) -> None:
        self.resetting = True

    def abandon_reset(self) -> bool:
        was, self.resetting = self.resetting, False
        return was


def test_a_hung_reset_loses_its_server_and_frees_the_slot_for_a_waiter() -> None:
    pool, connects = make_pool(size=1)
    first = FakeWaiter()
    pool.checkout(first)
    hung = ResettingServer()
    pool.opened(hung)
    assert first.got is hung and pool.active == 1
    now = time.monotonic()
    pool.resetting[hung] = now - 3.0  # its reset query went out 3 s ago, no answer yet
    waiter = FakeWaiter()
    pool.checkout(waiter)  # the pool is full: it waits
    assert len(connects) == 1
    assert pool.expire_resets(now, 5.0) == [] and hung.closed_because is None  # not yet
    assert pool.expire_resets(now, 2.0) == [hung]
    assert hung.closed_because is not None and "no answer within 2 s" in hung.closed_because
    assert pool.stats.reset_timeouts == 1 and not pool.resetting
    assert len(connects) == 2 and pool.total == 1  # a new server for the waiter, no more
    assert pool.expire_resets(now + 10, 2.0) == []  # nothing left to expire


def test_a_reset_already_over_is_not_discarded_twice() -> None:
    pool, _ = make_pool(size=1)
    pool.checkout(FakeWaiter())
    closed = ResettingServer(closed=True)  # closed (and discarded) by another path
    pool.opened(closed)
    pool.discard(closed, "server lost")
    pool.resetting[closed] = time.monotonic() - 60
    assert pool.expire_resets(time.monotonic(), 1.0) == []
    assert pool.active == 0 and pool.stats.reset_timeouts == 0 and not pool.resetting
    assert closed.closed_because == "server lost"


def test_checkout_timeout_fails_oldest_waiters() -> None:
    pool, _ = make_pool(size=1, timeout=0.5)
    now = time.monotonic()
    old, new = FakeWaiter(started=now - 1.0), FakeWaiter(started=now)
    pool.checkout(old)
    pool.checkout(new)
    assert pool.expire_waiters(now) == 1
    assert old.failed is not None and old.failed[0] == "53300"
    assert "pool_checkout_timeout" in old.failed[1]
    assert new.failed is None and list(pool.waiters) == [new]


def test_open_failure_fails_waiters_no_server_will_reach() -> None:
    pool, _ = make_pool(size=1)
    a, b = FakeWaiter(), FakeWaiter()
    pool.checkout(a)
    pool.checkout(b)
    pool.open_failed("28P01", "password authentication failed")
    assert a.failed == ("28P01", "password authentication failed")
    assert b.failed == ("28P01", "password authentication failed")
    assert pool.total == 0


def test_after_a_failed_login_one_probe_at_a_time_then_all_at_once() -> None:
    """A refusing database (max_connections reached) gets one login per retry, not one
    per waiting client; once one gets in, the rest are opened together."""
    pool, connects = make_pool(size=5)
    waiters = [FakeWaiter() for _ in range(5)]
    for waiter in waiters:
        pool.checkout(waiter)
    assert len(connects) == 5
    for _ in range(5):
        pool.open_failed("53300", "sorry, too many clients already", retry_in=0.25)
    assert pool.connecting == 0 and all(w.failed is None for w in waiters)  # still waiting
    pool.retry_due(time.monotonic() + 1.0)
    assert len(connects) == 6 and pool.connecting == 1  # the probe only
    pool.checkout(FakeWaiter())  # a new client while the probe is out: no second login
    assert len(connects) == 6
    pool.open_failed("53300", "sorry, too many clients already", retry_in=0.25)
    pool.retry_due(time.monotonic() + 1.0)
    assert len(connects) == 7 and pool.connecting == 1
    pool.opened(FakeServer())  # the database has room again
    assert waiters[0].got is not None
    assert pool.connecting == 4 and len(connects) == 11  # up to the pool size (5 waiting)


def test_without_a_failure_logins_are_opened_together() -> None:
    pool, connects = make_pool(size=3)
    for _ in range(3):
        pool.checkout(FakeWaiter())
    assert len(connects) == 3 and pool.connecting == 3


def test_old_generation_servers_are_closed_on_checkin() -> None:
    pool, connects = make_pool(size=1)
    waiter = FakeWaiter()
    pool.checkout(waiter)
    server = FakeServer(generation=0)
    pool.opened(server)
    pool.bump_generation()
    pool.checkin(server)
    assert server.closed_because is not None
    assert not pool.idle


def test_resize_down_closes_idle_servers() -> None:
    pool, _ = make_pool(size=3)
    servers = [FakeServer() for _ in range(3)]
    for server in servers:
        pool.connecting += 1
        pool.opened(server)
    assert len(pool.idle) == 3
    pool.resize(PoolLimits(size=1, max_clients=10, checkout_timeout=1.0))
    assert len(pool.idle) == 1
    assert sum(s.closed_because is not None for s in servers) == 2


def test_max_clients() -> None:
    pool, _ = make_pool(max_clients=2)
    assert pool.client_joined() and pool.client_joined()
    assert not pool.client_joined()
    pool.client_left()
    assert pool.client_joined()


def test_histogram_buckets_and_overflow() -> None:
    hist = Histogram((0.1, 1.0))
    for value in (0.0, 0.1, 0.5, 1.0, 7.0):
        hist.observe(value)
    # Cumulative counts per bound (Prometheus "le"); the value above every bound is only in
    # the total count (+Inf).
    assert hist.cumulative() == [(0.1, 2), (1.0, 4)]
    assert hist.count == 5
    assert hist.total == pytest.approx(8.6)


@pytest.mark.parametrize("bounds", [WAIT_BUCKETS, XACT_BUCKETS, (1.0,), (0.5, 1.0, 2.0, 4.0)])
def test_histogram_bucket_is_bisect_left(bounds: tuple[float, ...]) -> None:
    # observe() searches the bounds itself (a binary search written out for the compiled
    # build): every value, on a bound or between two, lands where bisect_left puts it.
    values = [0.0, 1e-9, *bounds, *(b * 0.999 for b in bounds), *(b * 1.001 for b in bounds), 1e9]
    hist = Histogram(bounds)
    expected = [0] * (len(bounds) + 1)
    for value in values:
        hist.observe(value)
        expected[bisect.bisect_left(bounds, value)] += 1
    assert hist.counts == expected
    assert hist.count == len(values)


@pytest.mark.parametrize("why", ["lifetime", "generation"])
def test_worn_out_server_is_closed_not_handed_to_a_waiter(why: str) -> None:
    # checkin's hand-off fast path must apply the same rules as parking: a server past its
    # lifetime or of an older generation is closed, and the waiter gets a fresh login.
    pool, connects = make_pool(size=1)
    first, second = FakeWaiter(), FakeWaiter()
    pool.checkout(first)
    server = FakeServer()
    pool.opened(server)
    assert first.got is server
    pool.checkout(second)
    if why == "lifetime":
        server.created_at -= pool.limits.server_lifetime + 1
    else:
        pool.bump_generation()
    logins = len(connects)
    pool.checkin(server)
    assert server.closed_because is not None
    assert second.got is None
    assert len(connects) == logins + 1  # a new server is on its way for the waiter
    assert pool.active == 0 and pool.total == 1  # only that login


def test_settings_id_names_contents_and_never_reuses_a_number() -> None:
    from pooler.protocol import params

    one = params.settings_id({"TimeZone": "UTC", "DateStyle": "ISO, MDY"})
    assert params.settings_id({"TimeZone": "UTC", "DateStyle": "ISO, MDY"}) == one
    other = params.settings_id({"TimeZone": "Asia/Tokyo", "DateStyle": "ISO, MDY"})
    assert other != one
    params._SETTINGS_IDS.clear()  # as when the table is full
    again = params.settings_id({"TimeZone": "UTC", "DateStyle": "ISO, MDY"})
    assert again not in (one, other)  # a server remembering `one` cannot mistake it


def test_checkin_uses_the_clock_its_caller_just_read() -> None:
    """The relay reads the clock once at a transaction's end and hands it down: the waiter's
    checkout wait and the parked server's idle time are measured from that instant (one
    clock read per transaction, not three), and without it checkin reads the clock."""
    pool, _ = make_pool(size=1)
    first, second = FakeWaiter(), FakeWaiter(started=1000.0)
    pool.checkout(first)
    server = FakeServer()
    pool.opened(server)
    pool.checkout(second)
    waited = pool.stats.checkout_wait.total
    pool.checkin(server, 1000.25)  # straight to the waiter
    assert second.got is server
    assert pool.stats.checkout_wait.total - waited == pytest.approx(0.25)
    pool.checkin(server, 2000.5)  # nobody waits: parked
    assert server.parked == 1 and server.parked_at == 2000.5
    assert pool.checkout(FakeWaiter()) is server
    before = time.monotonic()
    pool.checkin(server)  # no clock given: checkin reads it
    assert server.parked == 2 and before <= server.parked_at <= time.monotonic()
