"""The management plane against a running pooler: the REST API changes what psql sees
within a second, /metrics counts real traffic, the clients view lists live connections,
terminate and DELETE send FATAL, health lists the listeners, and the admin's live pools
page shows real numbers."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PASSWORDS, PoolerFactory
from tests.support.net import WireClient, parse_error_fields
from tests.support.pg import PgCluster
from tests.support.pooler import PoolerProcess, run_manage, tenant_doc, user_doc

pytestmark = pytest.mark.integration

API_SECRET = "integration-api-jwt-secret-0123456789abcdef"
ADMIN = ("opsadmin", "Adm1n-pass-for-tests")
USER, PASSWORD, DB = "app1user", PASSWORDS["app1user"], "app1"
QUERY = "SELECT 1"
RELOAD_BUDGET = 1.5  # seconds: the contract says ~1 s (0.5 s polling), with slack for CI


class Api:
    """A tiny client for one pooler's HTTP port with a valid token."""

    def __init__(self, pooler: PoolerProcess, token: str, pg_port: int) -> None:
        self.base = f"http://{pooler.host}:{pooler.http_port}"
        self.pg_port = pg_port
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def __call__(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.session.request(method, self.base + path, json=body, timeout=10, **kwargs)

    def tenant(self, external_id: str, **fields: Any) -> dict[str, Any]:
        """A PUT body: the tenant reaches the test cluster's app1 as app1user (pool_size 3)."""
        users = [user_doc(USER, PASSWORD, pool_size=3)]
        doc = tenant_doc(external_id, DB, self.pg_port, users, **fields)
        doc.pop("external_id")  # the URL names it
        return {"tenant": doc}

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = requests.get(self.base + "/metrics", timeout=10).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


@pytest.fixture(scope="module")
def pooler(pooler_factory: PoolerFactory, pg: PgCluster) -> PoolerProcess:
    """A pooler with no tenants yet (the API creates them), API_JWT_SECRET set."""
    return pooler_factory({"tenants": []}, env={"API_JWT_SECRET": API_SECRET})


@pytest.fixture(scope="module")
def token(pooler: PoolerProcess) -> str:
    out = run_manage(["minttoken", "--ttl", "600"], pooler.env)
    return out.stdout.strip()


@pytest.fixture
def api(pooler: PoolerProcess, token: str, pg: PgCluster) -> Api:
    return Api(pooler, token, pg.port)


def put_tenant(api: Api, external_id: str, **fields: Any) -> Any:
    response = api("PUT", f"/api/tenants/{external_id}", api.tenant(external_id, **fields))
    assert response.status_code in (200, 201), response.text
    return response


def connect(pooler: PoolerProcess, external_id: str, **kwargs: Any) -> Any:
    conn, _ = pooler.connect_eventually(f"{USER}.{external_id}", PASSWORD, DB)
    conn.autocommit = kwargs.get("autocommit", True)
    return conn


def labels(tenant: str, **extra: str) -> tuple[tuple[str, str], ...]:
    base = {"tenant": tenant, "user": USER, "mode": "transaction", "database": DB, **extra}
    return tuple(sorted(base.items()))


def fatal_after(pooler: PoolerProcess, external_id: str, action: Any) -> tuple[dict, float]:
    """Log a raw client in, run ``action()``, and return the ErrorResponse fields the
    pooler then sends it unprompted, with the seconds it took (libpq hides such messages)."""
    with WireClient(pooler.host, pooler.transaction_port) as wire:
        assert wire.login(f"{USER}.{external_id}", PASSWORD, DB) == {}
        started = time.monotonic()
        action()
        kind, body = wire.read_message()
        elapsed = time.monotonic() - started
    assert kind == b"E"
    return parse_error_fields(body), elapsed


@pytest.fixture
def connections() -> Iterator[list[Any]]:
    opened: list[Any] = []
    yield opened
    for conn in opened:
        conn.close()


# --- live reload ---------------------------------------------------------------------


def test_put_then_psql_through_the_pooler_within_a_second(
    api: Api, pooler: PoolerProcess, pg: PgCluster
) -> None:
    put_tenant(api, "apinew")
    started = time.monotonic()
    url = pooler.url(f"{USER}.apinew", PASSWORD, DB)
    while True:
        out = subprocess.run(
            [str(pg.bindir / "psql"), url, "-XAtc", "select current_user, 40 + 2"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        elapsed = time.monotonic() - started
        if out.returncode == 0 or elapsed > 5:
            break
        time.sleep(0.05)
    assert out.stdout.strip() == f"{USER}|42", out.stderr
    assert elapsed < RELOAD_BUDGET, f"the new tenant took {elapsed:.2f} s to reach the pooler"


def test_patch_pool_size_applies_to_the_running_pool(
    api: Api, pooler: PoolerProcess, connections: list[Any]
) -> None:
    put_tenant(api, "apisize")
    holder = connect(pooler, "apisize", autocommit=False)
    waiter = connect(pooler, "apisize")
    connections += [holder, waiter]
    response = api("PATCH", "/api/tenants/apisize", {"tenant": {"users": [
        {"db_user": USER, "pool_size": 1}]}})  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json()["data"]["users"][0]["pool_size"] == 1
    deadline = time.monotonic() + RELOAD_BUDGET
    while api.metrics().get(("greenvisor_pool_size", labels("apisize"))) != 1:
        assert time.monotonic() < deadline, "pool_size 1 did not reach the pool in time"
        time.sleep(0.1)
    holder.cursor().execute("SELECT 1")  # BEGIN: the only server is held until COMMIT
    finished = threading.Event()

    def run_waiter() -> None:
        waiter.cursor().execute("SELECT 2")
        finished.set()

    thread = threading.Thread(target=run_waiter, daemon=True)
    thread.start()
    assert not finished.wait(0.5), "a second server was lent despite pool_size 1"
    holder.commit()
    assert finished.wait(5), "the waiter never got the released server"
    thread.join(5)


def test_delete_sends_connected_clients_a_fatal(
    api: Api, pooler: PoolerProcess, connections: list[Any]
) -> None:
    put_tenant(api, "apidel")
    conn = connect(pooler, "apidel")  # a libpq client, and a raw one to read the FATAL
    connections.append(conn)
    conn.cursor().execute(QUERY)

    def delete() -> None:
        assert api("DELETE", "/api/tenants/apidel").status_code == 204

    fields, elapsed = fatal_after(pooler, "apidel", delete)
    assert (fields["S"], fields["C"]) == ("FATAL", "57P01")
    assert "the tenant or user was deleted" in fields["M"]
    assert elapsed < RELOAD_BUDGET
    with pytest.raises(psycopg2.OperationalError):
        conn.cursor().execute(QUERY)
    assert api("GET", "/api/tenants/apidel").status_code == 404
    assert not [key for key in api.metrics() if dict(key[1]).get("tenant") == "apidel"]


def test_unauthenticated_writes_change_nothing_on_the_live_pooler(
    api: Api, pooler: PoolerProcess
) -> None:
    body = api.tenant("apisneak")
    response = requests.put(f"{api.base}/api/tenants/apisneak", json=body, timeout=10)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert api("GET", "/api/tenants/apisneak").status_code == 404


# --- metrics and the per-connection view -----------------------------------------------


def test_metrics_and_clients_view_count_the_traffic_sent(
    api: Api, pooler: PoolerProcess, connections: list[Any]
) -> None:
    put_tenant(api, "apimetrics")
    conn = connect(pooler, "apimetrics")
    connections.append(conn)
    runs = 25
    with conn.cursor() as cursor:
        for _ in range(runs):
            cursor.execute(QUERY)
            assert cursor.fetchone() == (1,)
    query_bytes = runs * (1 + 4 + len(QUERY) + 1)  # 'Q', length, text, NUL
    live = api.metrics()
    key = labels("apimetrics")
    assert live["greenvisor_transactions_total", key] == runs
    assert live["greenvisor_queries_total", key] == runs
    assert live["greenvisor_bytes_received_total", key] == query_bytes
    # Each reply: RowDescription, DataRow, CommandComplete, ReadyForQuery (66 bytes here).
    assert runs * 40 <= live["greenvisor_bytes_sent_total", key] <= runs * 100
    assert live["greenvisor_client_connections", labels("apimetrics", state="idle")] == 1
    assert live["greenvisor_transaction_seconds_count", key] == runs
    checkouts = live["greenvisor_checkouts_total", key]
    assert runs <= checkouts <= runs + 1  # one per transaction (+1 if login borrowed one)
    assert live["greenvisor_checkout_wait_seconds_count", key] == checkouts
    assert live["greenvisor_server_connections", labels("apimetrics", state="idle")] == 1

    rows = api("GET", "/api/tenants/apimetrics/clients").json()["data"]
    assert len(rows) == 1
    row = rows[0]
    assert (row["address"], row["user"], row["database"], row["mode"]) == (
        "127.0.0.1", USER, DB, "transaction",
    )  # fmt: skip
    assert row["state"] == "idle"
    assert row["transactions"] == runs
    assert row["bytes_in"] == query_bytes
    assert row["bytes_out"] == live["greenvisor_bytes_sent_total", key]
    assert re.match(r"\d{4}-\d\d-\d\dT", row["connected_since"])

    conn.close()
    deadline = time.monotonic() + 5
    while api("GET", "/api/tenants/apimetrics/clients").json()["data"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    after = api.metrics()  # the client's numbers are folded into the pool's: no drop
    assert after["greenvisor_transactions_total", key] == runs
    assert query_bytes <= after["greenvisor_bytes_received_total", key] <= query_bytes + 5
    assert after["greenvisor_bytes_sent_total", key] == live["greenvisor_bytes_sent_total", key]
    assert after["greenvisor_client_connections", labels("apimetrics", state="idle")] == 0


def test_terminate_closes_the_tenants_clients(
    api: Api, pooler: PoolerProcess, connections: list[Any]
) -> None:
    put_tenant(api, "apiterm")
    conn = connect(pooler, "apiterm")
    connections.append(conn)
    results = []

    def terminate() -> None:
        response = api("POST", "/api/tenants/apiterm/terminate")
        assert response.status_code == 200
        results.append(response.json()["data"])

    fields, _ = fatal_after(pooler, "apiterm", terminate)
    assert results == [{"external_id": "apiterm", "clients_closed": 2}]  # libpq's and ours
    assert (fields["C"], fields["M"]) == (
        "57P01", "terminating connection: terminated by an operator (app1user.apiterm/app1 "
        "(transaction))",
    )  # fmt: skip
    with pytest.raises(psycopg2.OperationalError):
        conn.cursor().execute(QUERY)
    again = connect(pooler, "apiterm")  # the tenant still exists: new logins work
    connections.append(again)
    again.cursor().execute(QUERY)


def test_health_lists_the_listeners(pooler: PoolerProcess) -> None:
    response = requests.get(f"http://{pooler.host}:{pooler.http_port}/api/health", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["metadata_db"]["ok"] is True
    listeners = {item["name"]: item for item in body["pooler"]["listeners"]}
    assert set(listeners) == {"transaction", "session", "http"}
    assert listeners["transaction"]["port"] == pooler.transaction_port
    assert all(item["serving"] for item in listeners.values())


# --- secrets ---------------------------------------------------------------------------


def test_passwords_are_ciphertext_in_the_metadata_db_and_never_returned(
    api: Api, pooler: PoolerProcess
) -> None:
    put_tenant(api, "apisecret")
    shown = api("GET", "/api/tenants/apisecret").text + api("GET", "/api/tenants").text
    assert PASSWORD not in shown and "db_password" not in shown
    path = pooler.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        stored = [row[0] for row in db.execute("SELECT db_password FROM tenants_user")]
    assert stored and all(value.startswith("gcm1:") for value in stored)
    assert not [value for value in stored if PASSWORD in value]
    assert PASSWORD not in pooler.log_text()


# --- the admin's live pools page -------------------------------------------------------


def test_admin_live_pools_page_shows_real_numbers(
    api: Api, pooler: PoolerProcess, connections: list[Any]
) -> None:
    put_tenant(api, "apiadmin")
    conn = connect(pooler, "apiadmin")
    connections.append(conn)
    conn.cursor().execute(QUERY)
    env = {**pooler.env, "DJANGO_SUPERUSER_PASSWORD": ADMIN[1]}
    run_manage(
        ["createsuperuser", "--noinput", "--username", ADMIN[0], "--email", "ops@example.com"], env
    )
    path = pooler.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        (pk,) = db.execute("SELECT id FROM tenants_tenant WHERE external_id='apiadmin'").fetchone()
    browser = requests.Session()
    login_url = f"{api.base}/admin/login/"
    browser.get(login_url, timeout=10)
    form = {"username": ADMIN[0], "password": ADMIN[1], "next": "/admin/"}
    form["csrfmiddlewaretoken"] = browser.cookies["csrftoken"]
    assert browser.post(login_url, data=form, timeout=10).url.endswith("/admin/")
    page = browser.get(f"{api.base}/admin/tenants/tenant/{pk}/pools/", timeout=10)
    assert page.status_code == 200
    table = page.text.split('<table id="live-pools">', 1)[1].split("</table>", 1)[0]
    cells = re.findall(r"<td>([^<]*)</td>", table)
    # database, user, mode, cl_active, cl_waiting, sv_active, sv_idle, sv_login, pool_size
    assert cells[:9] == [DB, USER, "transaction", "1", "0", "0", "1", "0", "3"], cells
    assert "1 client connection on this node" in page.text


def test_pause_holds_new_transactions_until_resume(
    api: Api, pooler: PoolerProcess, connections: list[Any]
) -> None:
    """PgBouncer's PAUSE/RESUME through the API: a transaction that starts while the pools
    are paused waits, then runs once they are resumed; RECONNECT replaces the servers."""
    put_tenant(api, "apipause")
    conn = connect(pooler, "apipause")
    connections.append(conn)
    cur = conn.cursor()
    cur.execute("SELECT pg_backend_pid()")
    (first_pid,) = cur.fetchone()
    paused = api("POST", "/api/tenants/apipause/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["data"] == {
        "external_id": "apipause", "action": "pause", "pools": 1, "busy_servers": 0,
    }  # fmt: skip
    done: list[float] = []

    def query() -> None:
        started = time.monotonic()
        cur.execute("SELECT 1")
        done.append(time.monotonic() - started)

    waiter = threading.Thread(target=query)
    waiter.start()
    time.sleep(0.8)
    assert not done, "a transaction ran while the pool was paused"
    assert api("POST", "/api/tenants/apipause/resume").status_code == 200
    waiter.join(10)
    assert done and done[0] >= 0.7
    assert api("POST", "/api/tenants/apipause/reconnect").status_code == 200
    cur.execute("SELECT pg_backend_pid()")
    (second_pid,) = cur.fetchone()
    assert second_pid != first_pid  # the old server was replaced, not reused
    assert api("POST", "/api/tenants/nosuch/pause").status_code == 404
