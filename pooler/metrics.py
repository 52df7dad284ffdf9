"""Prometheus collector that READS the node's pools and clients at scrape time; no pool logic.

Series exist only for pools that exist, so a deleted tenant's series disappear with its
pools. Counters are the pool's folded totals (clients that already left) plus the live
clients' own numbers, so they only grow while a pool lives. Labels: tenant, user, mode,
database (the pool key).
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from greenlet import greenlet
from prometheus_client.core import (
    REGISTRY,
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from pooler.node import Node
    from pooler.pool import Histogram, Pool

PREFIX = "greenvisor"
LABELS = ["tenant", "user", "mode", "database"]
CLIENT_STATES = ("active", "waiting", "idle")
SERVER_STATES = ("active", "idle", "login")


@dataclass
class _Live:
    """What a pool's connected clients have done that is not in its stats yet."""

    states: dict[str, int]
    transactions: int = 0
    queries: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


def _labels(pool: Pool) -> list[str]:
    key = pool.key
    return [key.tenant, key.user, key.mode, key.database]


def _live_by_pool(node: Node) -> dict[int, _Live]:
    live: dict[int, _Live] = {}
    for client in list(node.clients.values()):
        row = live.get(id(client.pool))
        if row is None:
            row = live[id(client.pool)] = _Live({state: 0 for state in CLIENT_STATES})
        row.states[client.state] = row.states.get(client.state, 0) + 1
        row.transactions += client.transactions
        row.queries += client.ex.ready_count
        row.bytes_in += client.bytes_in
        row.bytes_out += client.bytes_out
    return live


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = [(floatToGoString(b), c) for b, c in histogram.cumulative()]
    out.append(("+Inf", histogram.count))
    return out


class _Families:
    """The metric families of one scrape, filled pool by pool."""

    def __init__(self) -> None:
        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=[*LABELS, *extra])

        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=LABELS)

        def histogram(name: str, doc: str) -> HistogramMetricFamily:
            return HistogramMetricFamily(f"{PREFIX}_{name}", doc, labels=LABELS)

        self.clients = gauge("client_connections", "Client connections by state", ("state",))
        self.servers = gauge("server_connections", "Server connections by state", ("state",))
        self.pool_size = gauge("pool_size", "Server connections the pool may open")
        self.max_clients = gauge("pool_max_clients", "Client connections the pool accepts")
        self.max_wait = gauge("pool_max_wait_seconds", "Longest current wait for a server")
        self.queries = counter("queries", "Queries completed (ReadyForQuery relayed)")
        self.transactions = counter("transactions", "Transactions completed")
        self.received = counter("bytes_received", "Bytes received from clients (sent upstream)")
        self.sent = counter("bytes_sent", "Bytes sent to clients (received from upstream)")
        self.checkouts = counter("checkouts", "Server connections lent to clients")
        self.timeouts = counter("checkout_timeouts", "Clients that waited for a server in vain")
        self.reset_timeouts = counter(
            "server_reset_timeouts", "Server connections closed: reset/check query unanswered"
        )
        self.opened = counter("server_connections_opened", "Server logins that succeeded")
        self.closed = counter("server_connections_closed", "Server connections closed")
        self.failures = counter("server_connect_failures", "Server logins that failed")
        self.reserve = counter("reserve_connections_opened", "Server logins above pool_size")
        self.joined = counter("client_connections_accepted", "Client logins into the pool")
        self.wait = histogram("checkout_wait_seconds", "Time a client waited for a server")
        self.xact = histogram("transaction_seconds", "Transaction duration")

    def add_pool(self, pool: Pool, live: _Live | None) -> None:
        labels = _labels(pool)
        live = live or _Live({state: 0 for state in CLIENT_STATES})
        for state in CLIENT_STATES:
            self.clients.add_metric([*labels, state], live.states.get(state, 0))
        servers = {"active": pool.active, "idle": len(pool.idle), "login": pool.connecting}
        for state in SERVER_STATES:
            self.servers.add_metric([*labels, state], servers[state])
        snapshot = pool.snapshot()
        self.pool_size.add_metric(labels, pool.limits.size)
        self.max_clients.add_metric(labels, pool.limits.max_clients)
        self.max_wait.add_metric(labels, float(snapshot["maxwait"]))
        stats = pool.stats
        self.queries.add_metric(labels, stats.queries + live.queries)
        self.transactions.add_metric(labels, stats.transactions + live.transactions)
        self.received.add_metric(labels, stats.bytes_in + live.bytes_in)
        self.sent.add_metric(labels, stats.bytes_out + live.bytes_out)
        self.checkouts.add_metric(labels, stats.checkouts)
        self.timeouts.add_metric(labels, stats.checkout_timeouts)
        self.reset_timeouts.add_metric(labels, stats.reset_timeouts)
        self.opened.add_metric(labels, stats.servers_opened)
        self.closed.add_metric(labels, stats.servers_closed)
        self.failures.add_metric(labels, stats.connect_failures)
        self.reserve.add_metric(labels, stats.reserve_opened)
        self.joined.add_metric(labels, stats.clients_total)
        self.wait.add_metric(labels, _buckets(stats.checkout_wait), stats.checkout_wait.total)
        self.xact.add_metric(labels, _buckets(stats.xact_time), stats.xact_time.total)

    def __iter__(self) -> Iterator[Metric]:
        return iter(vars(self).values())


def _node_totals(node: Node) -> Iterable[Metric]:
    pools = list(node.pools.values())
    snapshot = node.registry.snapshot
    totals = [
        ("clients", "Client connections on this node", len(node.clients)),
        ("servers", "Server connections on this node", sum(p.total for p in pools)),
        ("pools", "Pools on this node", len(pools)),
        ("tenants", "Tenants in the configuration this node runs", len(snapshot.tenants)),
        ("config_version", "Configuration version this node runs", snapshot.version),
        ("greenlets", "Live greenlets in this process (a leak check)", _greenlets()),
    ]
    parked = list(node.cluster.parked.values()) if node.cluster is not None else []
    totals += [
        (
            "relayed_clients",
            "Clients on this node whose pool another node owns (parked ones included)",
            len(parked),
        ),
        (
            "parked_clients",
            "Relayed clients that have not queried yet (no internal connection)",
            sum(1 for p in parked if p.asleep),
        ),
    ]
    for name, doc, value in totals:
        yield GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _greenlets() -> int:
    """Greenlets that have not finished. A walk of the GC heap: scrape-time only, never on
    the relay path (clients are relayed by watcher callbacks, not greenlets, so this counts
    logins, timers and background loops, and must return to its baseline when load stops)."""
    # type(), not isinstance(): the heap holds weakref proxies, and isinstance() on a dead
    # one raises ReferenceError.
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), greenlet) and not obj.dead)


class NodeCollector(Collector):
    """Reads one node; runs on the gevent hub like everything else, so reads are consistent."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterable[Metric]:
        node = self.node
        live = _live_by_pool(node)
        families = _Families()
        for pool in list(node.pools.values()):
            families.add_pool(pool, live.get(id(pool)))
        yield from families
        yield from _node_totals(node)


_installed: weakref.WeakKeyDictionary[CollectorRegistry, NodeCollector] = (
    weakref.WeakKeyDictionary()
)


def install(node: Node, registry: CollectorRegistry = REGISTRY) -> NodeCollector:
    """Register a collector for ``node`` on ``registry`` (replacing an earlier one)."""
    old = _installed.pop(registry, None)
    if old is not None:
        registry.unregister(old)
    collector = NodeCollector(node)
    registry.register(collector)
    _installed[registry] = collector
    return collector
