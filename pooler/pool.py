"""Pools of server connections: checkout/checkin, sizes, FIFO waiters, counters.

No sockets, no ZooKeeper, no Prometheus here: a pool drives abstract servers and waiters
through the small protocols below, so it can be tested with fakes. The relay's own
:class:`~pooler.server.ServerConn` and :class:`~pooler.client.Client` are recognised where
a transaction passes (checkout, checkin), so that the compiled build reads and calls them
natively instead of by name.

A server is handed to the next waiter straight from the checkin (the releasing server's
callback), never parked in between. A waiter that has already given up (timed out, or its
client left) refuses the hand-off, and the server goes to the next one or back to idle,
so a connection is never lost between two clients.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from librt.vecs import vec
from mypy_extensions import i64

from pooler.client import Client
from pooler.listdeque import ListDeque
from pooler.server import ServerConn

_monotonic: Final = time.monotonic  # looked up once (see client.py)


class PoolServer(Protocol):
    """What a pool needs from a server connection."""

    generation: int
    created_at: float

    def close(self, reason: str) -> None: ...

    def park(self, now: float = 0.0) -> None: ...

    def reset(self, query: str) -> None:
        """Run ``query``; then checkin() if the server is fine, else discard(). Between the
        two it is in the pool's ``resetting`` (with when it was sent)."""
        ...

    def abandon_reset(self) -> bool:
        """Stop waiting for the reset's answer; False if it is over already."""
        ...


class Waiter(Protocol):
    """A client waiting for a server connection."""

    wait_started: float

    def server_ready(self, server: PoolServer) -> bool:
        """Take ``server``; return False if the waiter is gone (then it is not taken)."""
        ...

    def checkout_failed(self, sqlstate: str, message: str) -> None: ...


@dataclass(frozen=True, slots=True)
class PoolKey:
    tenant: str
    user: str  # the db_user_alias clients log in as
    database: str
    mode: str

    def __str__(self) -> str:
        return f"{self.user}.{self.tenant}/{self.database} ({self.mode})"


class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics) with no Prometheus dependency.

    Bounds and per-bucket counts are ``librt.vecs`` vectors: in the compiled build C arrays
    of doubles and 64-bit integers, so an observation (two per transaction) reads no boxed
    float and allocates no int (a list of counts boxed a new int per increment)."""

    __slots__ = ("bounds", "edges", "tally", "total", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.edges = vec[float](bounds)
        # Per bucket, not cumulative (exporters accumulate), plus one past the last bound
        # (+Inf, counted by ``count``) so that observe() needs no bounds check.
        self.tally = vec[i64]([0] * (len(bounds) + 1))
        self.total = 0.0
        self.count = 0

    @property
    def counts(self) -> list[int]:
        """Per-bucket counts (not cumulative), the last one above every bound."""
        return [int(n) for n in self.tally]

    def observe(self, value: float) -> None:
        # bisect_left(), written out: in the compiled build C doubles and integers and four
        # comparisons for 13 bounds, not a call into bisect.
        edges = self.edges
        lo: i64 = 0
        hi: i64 = len(edges)
        mid: i64
        while lo < hi:
            mid = (lo + hi) >> 1
            if edges[mid] < value:
                lo = mid + 1
            else:
                hi = mid
        tally = self.tally
        tally[lo] = tally[lo] + 1
        self.total += value
        self.count += 1

    def observe_zero(self) -> None:
        """observe(0.0): the first bucket (a checkout that did not wait)."""
        tally = self.tally
        tally[0] = tally[0] + 1
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        running, out = 0, []
        for bound, count in zip(self.bounds, self.counts[:-1], strict=True):
            running += count
            out.append((bound, running))
        return out


# Not Final, unlike the relay's other constants: mypyc's build left a Final read from the
# Pool dataclass's default_factory lambda unset ("value for final name was not set").
WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0)
XACT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


@dataclass(slots=True)
class PoolStats:
    """Monotonic counters and histograms; exporters read them, nothing resets them."""

    checkouts: int = 0
    checkout_timeouts: int = 0
    reset_timeouts: int = 0  # servers closed because a reset or check query hung
    servers_opened: int = 0
    reserve_opened: int = 0  # logins started above the pool size (reserve pool)
    servers_closed: int = 0
    connect_failures: int = 0
    transactions: int = 0  # server releases at rest (transaction mode) / idle points (session)
    queries: int = 0  # ReadyForQuery messages relayed
    bytes_in: int = 0  # client -> server
    bytes_out: int = 0  # server -> client
    clients_total: int = 0
    checkout_wait: Histogram = field(default_factory=lambda: Histogram(WAIT_BUCKETS))
    xact_time: Histogram = field(default_factory=lambda: Histogram(XACT_BUCKETS))


@dataclass(slots=True)
class PoolLimits:
    size: int
    max_clients: int
    checkout_timeout: float  # seconds
    server_lifetime: float = 3600.0
    server_idle_timeout: float = 600.0
    max_prepared_statements: int = 0  # per server, transaction mode only; 0 = no rewriting
    state_policy: str = "reset"  # session state in transaction mode: reset | warn | error
    #: Extra servers allowed above ``size`` once the first waiter has waited
    #: ``reserve_timeout`` seconds (PgBouncer's reserve_pool_size / reserve_pool_timeout).
    reserve_size: int = 0
    reserve_timeout: float = 0.0
    #: Run when a session-mode client leaves ("" = none; server_reset_query), and after every
    #: transaction-mode release too with ``reset_always`` (server_reset_query_always).
    reset_query: str = "DISCARD ALL"
    reset_always: bool = False
    #: Run on an idle server idle for ``check_delay`` seconds or more before it is handed out
    #: at checkout ("" = never; server_check_query / server_check_delay).
    check_query: str = ""
    check_delay: float = 0.0
    #: Bytes a client waiting for a server may send before the pooler stops reading it
    #: (backpressure). Not a setting: a field, so the relay reads it natively (a module
    #: global is a dictionary lookup per wait in the compiled build) and tests can lower it.
    pending_limit: int = 256 * 1024


Connector = Callable[["Pool"], None]


@dataclass(eq=False)
class Pool:
    """The server connections of one (tenant, user, database, mode)."""

    key: PoolKey
    limits: PoolLimits
    connector: Connector  # starts opening one server; reports via opened()/open_failed()
    generation: int = 0  # servers of an older generation are closed instead of reused
    idle: ListDeque = field(default_factory=ListDeque)  # of PoolServer
    waiters: ListDeque = field(default_factory=ListDeque)  # of Waiter
    active: int = 0  # servers linked to a client (or being reset)
    connecting: int = 0
    clients: int = 0  # logged-in clients of this pool
    stats: PoolStats = field(default_factory=PoolStats)
    last_error: tuple[str, str] | None = None  # why the last login upstream failed
    retry_at: float = 0.0  # no new login attempt before this (monotonic), after a failure
    paused: bool = False  # PAUSE: no checkouts until resumed
    # ParameterStatus of the first login: a copy, never changed in place (login.greeting_for
    # caches the greeting by this dict's identity).
    server_params: dict[str, str] | None = None
    upstream: Any = None  # where servers of this pool log in (opaque to the pool)
    closed: bool = False
    #: Active servers running a reset or check query: when it was sent (monotonic). The
    #: server adds and removes itself; the janitor calls expire_resets().
    resetting: dict = field(default_factory=dict)  # of PoolServer -> float

    # -- sizes --------------------------------------------------------------------------

    @property
    def total(self) -> int:
        return len(self.idle) + self.active + self.connecting

    def resize(self, limits: PoolLimits) -> None:
        """Apply new limits; shrink by closing idle servers, grow by serving waiters."""
        self.limits = limits
        while self.idle and self.total > limits.size + limits.reserve_size:
            self.idle.popleft().close("pool size reduced")
            self.stats.servers_closed += 1
        self._grow()

    def bump_generation(self) -> None:
        """Connection settings changed: drain old servers as they become idle."""
        self.generation += 1
        while self.idle:
            self.idle.popleft().close("tenant configuration changed")
            self.stats.servers_closed += 1
        self._grow()

    # -- clients ------------------------------------------------------------------------

    def client_joined(self) -> bool:
        if self.clients >= self.limits.max_clients:
            return False
        self.clients += 1
        self.stats.clients_total += 1
        return True

    def client_left(self) -> None:
        self.clients -= 1

    # -- checkout / checkin -------------------------------------------------------------

    def checkout(self, waiter: Waiter) -> PoolServer | None:
        """An idle server now, or None after queueing ``waiter`` (FIFO)."""
        waiters = self.waiters
        if self.idle and not waiters and not self.paused:
            server = self.idle.pop()  # LIFO: the warmest connection
            self.active += 1
            if self.limits.check_query and self._check_due(server):
                waiters.append(waiter)  # served by the checkin after a good check
                server.reset(self.limits.check_query)
                return None
            stats = self.stats
            stats.checkouts += 1
            stats.checkout_wait.observe_zero()
            return server
        waiters.append(waiter)
        limits = self.limits
        # Under load every server is busy and the pool is full: nothing to open (the usual
        # case, so _grow's checks are skipped).
        if len(self.idle) + self.active + self.connecting < limits.size + limits.reserve_size:
            self._grow(reserve=len(waiters) > 1)  # a new waiter's wait_started is set later
        return None

    def cancel_wait(self, waiter: Waiter) -> None:
        try:
            self.waiters.remove(waiter)
        except ValueError:
            pass

    def checkin(self, server: PoolServer, now: float = 0.0) -> None:
        """A linked server is clean again: give it to a waiter, or park it idle (``now``:
        the clock, when the caller just read it).

        What :meth:`_offer` does, in one function for the two usual cases (the relay calls
        this once per transaction): straight to the first waiter that takes it (the server
        stays active), or back to the idle list."""
        # The relay's own server and client are told by their class (in the compiled build
        # their attributes and methods are then native reads and calls, not lookups by name:
        # ~830 of a select transaction's 13,600 instructions); any other PoolServer or Waiter
        # is used through its protocol, the same way.
        if isinstance(server, ServerConn):
            generation = server.generation
            created_at = server.created_at
        else:
            generation = server.generation
            created_at = server.created_at
        if self.closed or self.paused or generation != self.generation:
            self.active -= 1
            self._offer(server)  # closes it, or parks it while paused
            return
        if not now:
            now = _monotonic()
        lifetime = self.limits.server_lifetime
        if lifetime > 0 and now - created_at > lifetime:
            self.active -= 1
            self._offer(server)  # closes it and opens another for the waiters
            return
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if isinstance(waiter, Client):
                if not waiter.server_ready(server):
                    continue
                started = waiter.wait_started
            else:
                if not waiter.server_ready(server):
                    continue
                started = waiter.wait_started
            stats = self.stats
            stats.checkouts += 1
            stats.checkout_wait.observe(now - started)
            return
        self.active -= 1
        if isinstance(server, ServerConn):
            server.park(now)
        else:
            server.park(now)
        self.idle.append(server)

    def discard(self, server: PoolServer, reason: str) -> None:
        """A linked server is dirty or dead: close it and let a waiter get a new one."""
        self.active -= 1
        server.close(reason)
        self.stats.servers_closed += 1
        self._grow()

    def opened(self, server: PoolServer) -> None:
        """The connector finished a login."""
        self.connecting -= 1
        recovered = self.last_error is not None
        self.last_error = None
        self.retry_at = 0.0
        self.stats.servers_opened += 1
        self._offer(server)
        if recovered:  # the probe got in: open for the other waiters now (see _grow)
            self._grow()

    def open_failed(self, sqlstate: str, message: str, retry_in: float = 0.0) -> None:
        """The connector could not log in.

        With ``retry_in`` (the database may be restarting or failing over) the waiters keep
        waiting, up to their checkout timeout, and a new login is tried after ``retry_in``
        seconds: connection buffering. Otherwise (wrong password, no such database) every
        waiter that no server will reach fails now with the database's own error."""
        self.connecting -= 1
        self.stats.connect_failures += 1
        self.last_error = (sqlstate, message)
        if retry_in > 0 and not self.closed:
            self.retry_at = _monotonic() + retry_in
            return
        while self.waiters and len(self.waiters) > self.connecting + len(self.idle):
            self.waiters.pop().checkout_failed(sqlstate, message)

    def retry_due(self, now: float) -> None:
        """Called by the janitor while clients wait: try again to open servers for them
        after a failed login, and open the reserve pool once the first waited long enough."""
        if self.retry_at and now >= self.retry_at:
            self.retry_at = 0.0
            self._grow()
        elif self.limits.reserve_size and self.total < self.limits.size + self._reserve(now):
            self._grow(now=now)

    def _reserve(self, now: float) -> int:
        """How many servers above ``size`` may be opened now (0 until a client waited)."""
        limits = self.limits
        waiters = self.waiters
        if not limits.reserve_size or not waiters:
            return 0
        if now - waiters[0].wait_started >= limits.reserve_timeout:
            return limits.reserve_size
        return 0

    def _check_due(self, server: PoolServer) -> bool:
        idle_since = getattr(server, "idle_since", None)
        return idle_since is None or _monotonic() - idle_since >= self.limits.check_delay

    def _offer(self, server: PoolServer) -> None:
        if self.closed or server.generation != self.generation or self._expired(server):
            server.close("server lifetime over" if not self.closed else "pool closed")
            self.stats.servers_closed += 1
            self._grow()
            return
        if not self.paused:
            self.active += 1
            if self._offer_to_waiters(server):
                return
            self.active -= 1
        server.park()
        self.idle.append(server)

    def _offer_to_waiters(self, server: PoolServer) -> bool:
        """Hand ``server`` (already counted active) to the first waiter that takes it."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if waiter.server_ready(server):
                self.stats.checkouts += 1
                self.stats.checkout_wait.observe(_monotonic() - waiter.wait_started)
                return True
        return False

    def _expired(self, server: PoolServer) -> bool:
        lifetime = self.limits.server_lifetime
        return lifetime > 0 and _monotonic() - server.created_at > lifetime

    def _grow(self, reserve: bool = True, now: float = 0.0) -> None:
        """Open servers while waiters outnumber the servers on their way (``reserve``: up to
        the reserve pool too, if the first waiter waited long enough).

        After a failed login, one login at a time until one succeeds: a database that
        refuses connections (restarting, or "too many clients already" at max_connections)
        gets one probe per retry interval, not one login per waiting client (each a
        backend process started and refused)."""
        if self.closed or self.paused or self.retry_at:
            return
        if self.last_error is not None and self.connecting:
            return
        size = self.limits.size
        if reserve and self.limits.reserve_size:
            limit = size + self._reserve(now or _monotonic())
        else:
            limit = size
        while self.waiters and self.connecting < len(self.waiters) and self.total < limit:
            if self.total >= size:
                self.stats.reserve_opened += 1
            self.connecting += 1
            self.connector(self)
            if self.last_error is not None:
                return  # the probe (see above)

    # -- housekeeping -------------------------------------------------------------------

    def expire_waiters(self, now: float) -> int:
        """Fail waiters that waited longer than the checkout timeout; return how many."""
        timeout = self.limits.checkout_timeout
        failed = 0
        while self.waiters and now - self.waiters[0].wait_started >= timeout:
            waiter = self.waiters.popleft()
            failed += 1
            self.stats.checkout_timeouts += 1
            waiter.checkout_failed(*self.timeout_error(timeout))
        return failed

    def timeout_error(self, timeout: float) -> tuple[str, str]:
        """The error for a client that waited ``timeout`` seconds for a server in vain."""
        waited = f"{int(timeout * 1000)} ms"
        if self.last_error is not None and not self.idle and not self.active:
            sqlstate, reason = self.last_error
            return (
                sqlstate if sqlstate == "57P03" else "08006",
                f"the tenant database did not accept connections within {waited} "
                f"(query_wait_timeout / pool_checkout_timeout) for {self.key}: {reason}; "
                "retry when it is back",
            )
        if self.paused:
            return (
                "57P03",
                f"{self.key} is paused and was not resumed within {waited}; "
                "retry after the operator resumes it",
            )
        return (
            "53300",
            f"no server connection became free within pool_checkout_timeout ({waited}) for "
            f"{self.key}: retry later, raise pool_size, or shorten the transactions that "
            "hold the connections",
        )

    def expire_resets(self, now: float, limit: float) -> list:
        """Discard the servers whose reset or check query got no answer within ``limit``
        seconds (a server that stopped answering must not hold a slot of the pool for
        ever) and return them: their backends may still run the query, the caller cancels
        it. A waiter behind a check gets a new server, or waits on up to its timeout."""
        late = [server for server, sent in self.resetting.items() if now - sent >= limit]
        expired = []
        for server in late:
            del self.resetting[server]
            if server.abandon_reset():  # else it was closed meanwhile: not ours to discard
                self.stats.reset_timeouts += 1
                self.discard(
                    server,
                    f"the reset or check query got no answer within {limit:g} s "
                    "(server_reset_timeout)",
                )
                expired.append(server)
        return expired

    def close_idle(self, now: float) -> None:
        """Close idle servers past server_idle_timeout or server_lifetime."""
        idle_timeout = self.limits.server_idle_timeout
        keep = ListDeque()
        for server in self.idle:
            idle_since = getattr(server, "idle_since", now)
            if (idle_timeout > 0 and now - idle_since > idle_timeout) or self._expired(server):
                server.close("server idle timeout")
                self.stats.servers_closed += 1
            else:
                keep.append(server)
        self.idle = keep

    def forget_idle(self, server: PoolServer) -> bool:
        """An idle server died on its own; drop it from the pool."""
        try:
            self.idle.remove(server)
        except ValueError:
            return False
        self.stats.servers_closed += 1
        return True

    def pause(self) -> None:
        """PAUSE: stop lending servers; waiters queue until resume()."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        while self.idle and self.waiters:
            server = self.idle.pop()
            self.active += 1
            if not self._offer_to_waiters(server):
                self.active -= 1
                self.idle.append(server)
                break
        self._grow()

    def close(self, reason: str) -> None:
        self.closed = True
        while self.idle:
            self.idle.popleft().close(reason)
            self.stats.servers_closed += 1

    def snapshot(self) -> dict[str, int | float | str]:
        return {
            "tenant": self.key.tenant,
            "user": self.key.user,
            "database": self.key.database,
            "mode": self.key.mode,
            "cl_active": self.clients - len(self.waiters),
            "cl_waiting": len(self.waiters),
            "sv_active": self.active,
            "sv_idle": len(self.idle),
            "sv_login": self.connecting,
            "pool_size": self.limits.size,
            "maxwait": (_monotonic() - self.waiters[0].wait_started) if self.waiters else 0.0,
        }


def _pool_in_c() -> str:
    """With the C relay on (pooler/client.py's RELAY_STATUS), let pooler/_sysio.c check a
    server out of the idle list when nobody waits, give it back, queue a client when the
    pool is full and hand a released server to the first waiter (relay_checkout,
    relay_release, relay_queue there: the same fields, after the same checks);
    ``GREENVISOR_C_POOL=0`` keeps all that in compiled Python (for an A/B comparison).
    Returns what was decided, for the start-up log."""
    from pooler import client, loginio

    sysio = loginio._SYSIO
    if (
        sysio is None
        or not hasattr(sysio, "relay_pool_types")
        or not client.RELAY_STATUS.startswith("in C")
    ):
        return "in Python"
    if os.environ.get("GREENVISOR_C_POOL", "1") == "0":
        return "in compiled Python (GREENVISOR_C_POOL=0)"
    sysio.relay_pool_types(Pool, ListDeque, PoolLimits, PoolStats, Histogram)
    return "in C (checkout, release, queue, hand-over)"


#: Where the pool's checkout, release, queue and hand-over run (logged at start-up).
POOL_STATUS: Final = _pool_in_c()
