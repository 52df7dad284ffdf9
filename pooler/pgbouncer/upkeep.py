"""pgbouncer.ini's periodic duties: ``query_timeout`` and ``min_pool_size``.

Theory of operation
-------------------
:func:`run` is one greenlet (started by ``runpooler --pgbouncer-ini``) that wakes every
:data:`TICK` seconds and reads the *current* settings, so a RELOAD takes effect at the
next tick. Nothing here touches the relay's hot path.

* ``query_timeout``: a client whose server still owes a reply (``Exchange.expected > 0``)
  and has answered nothing (its ReadyForQuery count unchanged) since a tick more than
  ``query_timeout`` seconds ago gets PgBouncer's ``query_timeout`` error (08P01) and is
  disconnected; its server is cancelled and closed, never reused (the client's usual
  "left in the middle of an exchange" path). Sampling makes the limit exact to one tick.
* ``min_pool_size`` (the database's, else the [pgbouncer] one): each existing pool of a
  pgbouncer.ini database that is not paused and not backing off after a failed login gets
  servers opened until it holds that many (never more than its pool size).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import gevent

if TYPE_CHECKING:
    from pooler.pgbouncer.dropin import DropIn

log = logging.getLogger("pooler.pgbouncer")

TICK = 0.5
QUERY_TIMEOUT_SQLSTATE = "08P01"


def run(dropin: DropIn) -> None:
    """Forever: enforce query_timeout and min_pool_size."""
    started: dict[int, tuple[int, float]] = {}  # client pid -> (ready_count, first seen)
    while True:
        gevent.sleep(TICK)
        try:
            tick(dropin, started, time.monotonic())
        except Exception:  # noqa: BLE001 - housekeeping must keep running
            log.exception("pgbouncer.ini upkeep failed; retrying")


def tick(dropin: DropIn, started: dict[int, tuple[int, float]], now: float) -> None:
    settings = dropin.config.settings
    _query_timeouts(dropin, started, now, settings.query_timeout)
    _min_pool_sizes(dropin)


def _query_timeouts(
    dropin: DropIn, started: dict[int, tuple[int, float]], now: float, limit: float
) -> None:
    if limit <= 0:
        started.clear()
        return
    seen: dict[int, tuple[int, float]] = {}
    for pid, client in list(dropin.node.clients.items()):
        ex = client.ex
        if client.server is None or ex.expected <= 0:
            continue
        count, since = started.get(pid, (ex.ready_count, now))
        if count != ex.ready_count:
            count, since = ex.ready_count, now
        if now - since > limit:
            client.fatal(
                QUERY_TIMEOUT_SQLSTATE,
                f"query_timeout: no answer within {limit:g} s; the query was cancelled and "
                "the connection closed (raise query_timeout in pgbouncer.ini if it must run)",
            )
            continue
        seen[pid] = (count, since)
    started.clear()
    started.update(seen)


def _min_pool_sizes(dropin: DropIn) -> None:
    config = dropin.config
    default = config.settings.min_pool_size
    for pool in list(dropin.node.pools.values()):
        name = dropin.database_of(pool)
        entry = config.databases.get(name)
        if entry is None and not (pool.key.tenant == "*" and config.autodb is not None):
            continue  # a metadata-DB tenant
        if entry is None:
            entry = config.autodb
        assert entry is not None
        wanted = min(entry.min_pool_size if entry.min_pool_size is not None else default,
                     pool.limits.size)  # fmt: skip
        while pool.total < wanted and not pool.paused and not pool.retry_at and not pool.closed:
            pool.connecting += 1
            pool.connector(pool)
