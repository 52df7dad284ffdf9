"""pooler.metrics against a real Node with real pools and real Client objects (on socket
pairs): series per pool, live clients added to the folded totals, histograms, node totals,
deleted tenants' series gone; and the /metrics endpoint with and without its secret."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from pooler import metrics
from pooler.client import Client
from pooler.config import ConfigSnapshot, TenantConfig, UserConfig
from pooler.node import Node, NodeSettings
from pooler.pool import Pool
from tenants.api.auth import mint_token
from tests.api.conftest import TEST_API_SECRET, TEST_METRICS_SECRET

pytestmark = [pytest.mark.api]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def snapshot(*external_ids: str, version: int = 1) -> ConfigSnapshot:
    users = (
        UserConfig("app", "app", "pw", pool_size=3),
        UserConfig("app", "app", "pw", mode_type="session"),
    )
    tenants = {
        tid: TenantConfig(tid, "127.0.0.1", db_database="app", default_pool_size=7, users=users)
        for tid in external_ids
    }
    return ConfigSnapshot(version=version, tenants=tenants)


def open_pool(node: Node, tenant: str, mode: str = "transaction") -> Pool:
    config = node.registry.snapshot.tenant(tenant)
    assert config is not None
    user = config.find_user("app", mode)
    assert user is not None
    return node.pool_for(config, user, "app", mode)


@pytest.fixture
def node() -> Node:
    live = Node(NodeSettings())
    live.apply_snapshot(snapshot("t1", "t2"))
    return live


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def connect(node: Node, pool: Pool, sockets: list[socket.socket]) -> Client:
    """A real Client (as after login) on one end of a socket pair."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    sockets += [ours, theirs]
    pid, key = node.new_backend_key()
    assert pool.client_joined()
    client = Client(ours, node, pool, ("127.0.0.1", 40000 + len(sockets)), pid, key)
    node.client_opened(client)
    return client


def scrape(node: Node) -> Samples:
    registry = CollectorRegistry()
    metrics.install(node, registry)
    text = generate_latest(registry).decode()
    return parse(text)


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def labels(tenant: str = "t1", mode: str = "transaction", **extra: str) -> tuple[Any, ...]:
    base = {"tenant": tenant, "user": "app", "mode": mode, "database": "app", **extra}
    return tuple(sorted(base.items()))


def test_each_pool_has_its_series(node: Node) -> None:
    open_pool(node, "t1")
    open_pool(node, "t2", "session")
    samples = scrape(node)
    assert samples["greenvisor_pool_size", labels()] == 3  # the user's pool_size
    assert samples["greenvisor_pool_size", labels("t2", "session")] == 7  # tenant default
    for state in ("active", "waiting", "idle"):
        assert samples["greenvisor_client_connections", labels(state=state)] == 0
    for state in ("active", "idle", "login"):
        assert samples["greenvisor_server_connections", labels(state=state)] == 0
    assert samples["greenvisor_pools", ()] == 2
    assert samples["greenvisor_tenants", ()] == 2
    assert samples["greenvisor_config_version", ()] == 1


def test_live_clients_are_added_and_stay_counted_after_they_leave(
    node: Node, sockets: list[socket.socket]
) -> None:
    pool = open_pool(node, "t1")
    pool.stats.transactions, pool.stats.queries = 10, 30  # from clients that already left
    pool.stats.bytes_in, pool.stats.bytes_out = 1000, 5000
    first, second = connect(node, pool, sockets), connect(node, pool, sockets)
    first.transactions, first.bytes_in, first.bytes_out = 2, 100, 400
    second.transactions, second.bytes_in, second.bytes_out = 3, 50, 200
    second.pending, second.wait_started = b"Q", 0.0  # waiting for a server
    live = scrape(node)
    assert live["greenvisor_transactions_total", labels()] == 15
    assert live["greenvisor_bytes_received_total", labels()] == 1150
    assert live["greenvisor_bytes_sent_total", labels()] == 5600
    assert live["greenvisor_client_connections", labels(state="idle")] == 1
    assert live["greenvisor_client_connections", labels(state="waiting")] == 1
    assert live["greenvisor_clients", ()] == 2
    second.pending = None
    first.disconnect()
    second.disconnect()
    after = scrape(node)
    for name in ("transactions_total", "queries_total", "bytes_received_total"):
        assert after[f"greenvisor_{name}", labels()] == live[f"greenvisor_{name}", labels()]
    assert after["greenvisor_bytes_sent_total", labels()] == 5600
    assert after["greenvisor_client_connections", labels(state="idle")] == 0
    assert after["greenvisor_clients", ()] == 0


def test_histograms_are_cumulative_with_sum_and_count(node: Node) -> None:
    pool = open_pool(node, "t1")
    for seconds in (0.0, 0.003, 0.2, 99.0):
        pool.stats.checkout_wait.observe(seconds)
    pool.stats.xact_time.observe(0.002)
    samples = scrape(node)
    wait = "greenvisor_checkout_wait_seconds"
    assert samples[f"{wait}_bucket", labels(le="0.0001")] == 1
    assert samples[f"{wait}_bucket", labels(le="0.005")] == 2
    assert samples[f"{wait}_bucket", labels(le="0.5")] == 3
    assert samples[f"{wait}_bucket", labels(le="60.0")] == 3
    assert samples[f"{wait}_bucket", labels(le="+Inf")] == 4
    assert samples[f"{wait}_count", labels()] == 4
    assert samples[f"{wait}_sum", labels()] == pytest.approx(99.203)
    assert samples["greenvisor_transaction_seconds_count", labels()] == 1


def test_a_deleted_tenants_series_disappear(node: Node, sockets: list[socket.socket]) -> None:
    connect(node, open_pool(node, "t1"), sockets)
    open_pool(node, "t2")
    assert any(key[1] and dict(key[1])["tenant"] == "t1" for key in scrape(node))
    node.apply_snapshot(snapshot("t2", version=2))  # t1 deleted
    samples = scrape(node)
    assert not [key for key in samples if key[1] and dict(key[1]).get("tenant") == "t1"]
    assert samples["greenvisor_pool_size", labels("t2")] == 3
    assert samples["greenvisor_clients", ()] == 0  # t1's client got FATAL and left


def test_greenlets_gauge_counts_live_greenlets(node: Node) -> None:
    import gevent

    before = scrape(node)["greenvisor_greenlets", ()]
    sleeper = gevent.spawn(gevent.sleep, 30)
    gevent.sleep(0)
    assert scrape(node)["greenvisor_greenlets", ()] == before + 1
    sleeper.kill()
    assert scrape(node)["greenvisor_greenlets", ()] == before  # back to the baseline


def test_install_replaces_the_previous_collector(node: Node) -> None:
    registry = CollectorRegistry()
    metrics.install(Node(NodeSettings()), registry)
    metrics.install(node, registry)
    open_pool(node, "t1")
    assert parse(generate_latest(registry).decode())["greenvisor_pools", ()] == 1


# --- the /metrics endpoint ---------------------------------------------------------------


@pytest.fixture
def installed(node: Node) -> Iterator[Node]:
    metrics.install(node)  # the default registry, as runpooler does
    open_pool(node, "t1")
    yield node
    metrics.install(Node(NodeSettings()))  # leave an empty node behind, not this one


@pytest.mark.django_db
def test_metrics_endpoint_is_open_without_a_metrics_secret(installed: Node) -> None:
    response = APIClient().get("/metrics")
    assert response.status_code == 200
    samples = parse(response.content.decode())
    assert samples["greenvisor_pool_size", labels()] == 3
    assert any(name.startswith("django_http_requests") for name, _ in samples)


@pytest.mark.django_db
def test_metrics_endpoint_needs_a_token_when_the_secret_is_set(
    installed: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METRICS_JWT_SECRET", TEST_METRICS_SECRET)
    client = APIClient()
    refused = client.get("/metrics")
    assert refused.status_code == 401
    assert refused["WWW-Authenticate"].startswith("Bearer")
    assert b"greenvisor_" not in refused.content
    wrong = client.get("/metrics", HTTP_AUTHORIZATION="Bearer " + mint_token(TEST_API_SECRET, 60))
    assert wrong.status_code == 401  # an API token is not a metrics token
    right = mint_token(TEST_METRICS_SECRET, 60)
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {right}")
    assert response.status_code == 200
    assert b"greenvisor_pool_size" in response.content


@pytest.mark.django_db
def test_a_weak_metrics_secret_is_refused(installed: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICS_JWT_SECRET", "short")
    response = APIClient().get("/metrics")
    assert response.status_code == 503
    assert "METRICS_JWT_SECRET is too short" in response.json()["detail"]
