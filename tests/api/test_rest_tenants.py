"""The tenant routes: PUT/GET/PATCH/DELETE, the paginated list, terminate and clients,
health, validation errors by field, 404s, trailing slashes; db_password never returned."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from pooler import runtime
from tenants.models import Tenant, TenantUser
from tenants.services import build_snapshot, config_version

pytestmark = [pytest.mark.api, pytest.mark.django_db]

PASSWORD = "rest-Pa55word-never-shown"
OTHER_PASSWORD = "rest-0ther-Pa55word"


def tenant_body(**fields: Any) -> dict[str, Any]:
    tenant: dict[str, Any] = {
        "db_host": "127.0.0.1",
        "db_port": 5432,
        "db_database": "app",
        "default_pool_size": 5,
        "users": [
            {"db_user": "app", "db_password": PASSWORD, "pool_size": 3},
            {"db_user": "app", "db_password": PASSWORD, "mode_type": "session"},
        ],
    }
    tenant.update(fields)
    return {"tenant": tenant}


def put(api: APIClient, external_id: str, body: Any) -> Any:
    return api.put(f"/api/tenants/{external_id}", body, format="json")


def patch(api: APIClient, external_id: str, tenant: dict[str, Any]) -> Any:
    return api.patch(f"/api/tenants/{external_id}", {"tenant": tenant}, format="json")


def assert_no_password(response: Any) -> None:
    assert PASSWORD.encode() not in response.content
    assert OTHER_PASSWORD.encode() not in response.content
    assert b"db_password" not in response.content


# --- PUT -------------------------------------------------------------------------------


def test_put_creates_a_tenant_with_201_and_returns_it_without_passwords(api: APIClient) -> None:
    before = config_version()
    response = put(api, "t1", tenant_body())
    assert response.status_code == 201, response.content
    data = response.json()["data"]
    assert data["external_id"] == "t1"
    assert data["db_host"] == "127.0.0.1"
    assert [(u["db_user_alias"], u["mode_type"], u["pool_size"]) for u in data["users"]] == [
        ("app", "session", None),
        ("app", "transaction", 3),
    ]
    assert_no_password(response)
    assert config_version() > before
    assert TenantUser.objects.get(mode_type="session").db_password == PASSWORD


def test_put_again_replaces_and_answers_200(api: APIClient) -> None:
    put(api, "t1", tenant_body())
    body = tenant_body(db_host="db.internal", users=[{"db_user": "app", "db_password": "x"}])
    response = put(api, "t1", body)
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["db_host"] == "db.internal"
    assert len(data["users"]) == 1  # users not listed are deleted, as with applytenants
    assert Tenant.objects.count() == 1


def test_put_with_the_same_body_changes_nothing(api: APIClient) -> None:
    put(api, "t1", tenant_body())
    before = config_version()
    assert put(api, "t1", tenant_body()).status_code == 200
    assert config_version() == before


def test_put_external_id_in_the_body_must_match_the_url(api: APIClient) -> None:
    response = put(api, "t1", tenant_body(external_id="t2"))
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "external_id"
    assert not Tenant.objects.exists()


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"db_port": 70000}, "db_port", "between 1 and 65535"),
        ({"db_port": "5432"}, "db_port", "must be an integer"),
        ({"default_pool_size": 0}, "default_pool_size", "positive"),
        ({"ip_version": "v5"}, "ip_version", "auto, v4, v6"),
        ({"allow_list": ["10.0.0.0/33"]}, "allow_list", "entry 0"),
        ({"db_hots": "x"}, "db_hots", "did you mean 'db_host'"),
        ({"users": [{"db_user": "app"}]}, "users[0].db_password", "required"),
        ({"users": [{"db_user": "a", "db_password": "p", "mode_type": "x"}]}, "users[0].mode_type",
         "transaction, session"),
        ({"db_host": "bad\x00host"}, "db_host", "NUL"),
    ],
)  # fmt: skip
def test_put_validation_errors_name_the_field(
    api: APIClient, fields: dict[str, Any], field: str | None, words: str
) -> None:
    response = put(api, "t1", tenant_body(**fields))
    assert response.status_code == 400, response.content
    errors = response.json()["errors"]
    assert any(e["field"] == field and words in e["message"] for e in errors), errors
    assert not Tenant.objects.exists()


def test_a_bad_password_type_is_reported_without_its_value(api: APIClient) -> None:
    body = tenant_body(users=[{"db_user": "a", "db_password": 918273645}])
    response = put(api, "t1", body)
    assert response.status_code == 400
    assert b"918273645" not in response.content
    assert "users[0].db_password" in [e["field"] for e in response.json()["errors"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "tenant"), ([], "tenant"), ({"tenant": "x"}, "tenant"), ({"data": {}}, "tenant"),
     ({"tenant": {}, "extra": 1}, "extra")],
)  # fmt: skip
def test_put_body_must_be_a_tenant_object(api: APIClient, body: Any, field: str) -> None:
    response = put(api, "t1", body)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == field


def test_put_malformed_json_is_400(api: APIClient) -> None:
    response = api.put("/api/tenants/t1", b"{not json", content_type="application/json")
    assert response.status_code == 400


def test_put_an_invalid_external_id_is_400(api: APIClient) -> None:
    response = put(api, "dev.t1", tenant_body())
    assert response.status_code == 400
    assert "no dots" in response.json()["errors"][0]["message"]


# --- GET, list -------------------------------------------------------------------------


def test_get_returns_supavisors_envelope(api: APIClient) -> None:
    put(api, "t1", tenant_body())
    response = api.get("/api/tenants/t1")
    assert response.status_code == 200
    data = response.json()["data"]
    assert {"external_id", "db_host", "users", "inserted_at", "updated_at"} <= set(data)
    assert_no_password(response)


def test_unknown_tenant_is_a_json_404(api: APIClient) -> None:
    for method in ("get", "patch", "delete"):
        response = getattr(api, method)("/api/tenants/nope", {"tenant": {}}, format="json")
        assert response.status_code == 404, method
        assert "nope" in response.json()["detail"]
    for path in ("/api/tenants/nope/terminate", "/api/tenants/nope/clients"):
        method = api.post if path.endswith("terminate") else api.get
        assert method(path).status_code == 404


def test_an_unknown_api_route_is_a_json_404(api: APIClient) -> None:
    response = api.get("/api/nothing/here")
    assert response.status_code == 404
    assert "see /api/openapi" in response.json()["detail"]


def test_list_is_paginated_and_ordered(api: APIClient) -> None:
    for index in range(5):
        put(api, f"t{index}", tenant_body())
    first = api.get("/api/tenants?limit=2").json()
    assert first["count"] == 5
    assert [t["external_id"] for t in first["data"]] == ["t0", "t1"]
    second = api.get(first["next"]).json()
    assert [t["external_id"] for t in second["data"]] == ["t2", "t3"]
    everything = api.get("/api/tenants")
    assert len(everything.json()["data"]) == 5
    assert_no_password(everything)


@pytest.mark.parametrize("suffix", ["", "/"])
def test_trailing_slash_is_accepted(api: APIClient, suffix: str) -> None:
    assert put(api, "t1" + suffix, tenant_body()).status_code == 201
    assert api.get("/api/tenants" + suffix).status_code == 200
    assert api.get("/api/tenants/t1" + suffix).status_code == 200
    assert api.get("/api/health" + suffix).status_code == 200
    assert api.get("/api/openapi" + suffix).status_code == 200


# --- PATCH -----------------------------------------------------------------------------


def test_patch_changes_only_the_fields_given(api: APIClient) -> None:
    put(api, "t1", tenant_body(db_port=5433))
    response = patch(api, "t1", {"default_pool_size": 9})
    assert response.status_code == 200, response.content
    data = response.json()["data"]
    assert data["default_pool_size"] == 9
    assert data["db_port"] == 5433
    assert len(data["users"]) == 2
    assert_no_password(response)
    assert set(TenantUser.objects.values_list("db_password", flat=True)) == {PASSWORD}


def test_patch_users_merges_over_existing_ones_and_keeps_passwords(api: APIClient) -> None:
    put(api, "t1", tenant_body())
    users = [{"db_user": "app", "pool_size": 7}, {"db_user": "new", "db_password": OTHER_PASSWORD}]
    response = patch(api, "t1", {"users": users})
    assert response.status_code == 200, response.content
    rows = {(u.db_user, u.mode_type): u for u in TenantUser.objects.all()}
    assert set(rows) == {("app", "transaction"), ("new", "transaction")}  # session user dropped
    assert rows["app", "transaction"].pool_size == 7
    assert rows["app", "transaction"].db_password == PASSWORD
    assert rows["new", "transaction"].db_password == OTHER_PASSWORD
    assert_no_password(response)


def test_patch_a_password_rotates_it(api: APIClient) -> None:
    put(api, "t1", tenant_body())
    patch(api, "t1", {"users": [{"db_user": "app", "db_password": OTHER_PASSWORD}]})
    assert TenantUser.objects.get().db_password == OTHER_PASSWORD
    snapshot = build_snapshot().tenant("t1")
    assert snapshot is not None and snapshot.users[0].db_password == OTHER_PASSWORD


def test_patch_validation_errors_name_the_field_and_change_nothing(api: APIClient) -> None:
    put(api, "t1", tenant_body())
    before = config_version()
    response = patch(api, "t1", {"db_port": 0})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "db_port"
    response = patch(api, "t1", {"users": [{"db_user": "brand-new"}]})
    assert [e["field"] for e in response.json()["errors"]] == ["users[0].db_password"]
    response = patch(api, "t1", {"external_id": "t2"})
    assert response.json()["errors"][0]["field"] == "external_id"
    assert config_version() == before


# --- DELETE ----------------------------------------------------------------------------


def test_delete_answers_204_then_404(api: APIClient) -> None:
    put(api, "t1", tenant_body())
    response = api.delete("/api/tenants/t1")
    assert response.status_code == 204
    assert not Tenant.objects.exists() and not TenantUser.objects.exists()
    assert api.delete("/api/tenants/t1").status_code == 404


# --- terminate, clients (a real Node in this process) ----------------------------------


def _open_pools(node: Any, external_id: str) -> list[Any]:
    config = build_snapshot().tenant(external_id)
    assert config is not None
    node.apply_snapshot(build_snapshot())
    return [node.pool_for(config, user, "app", user.mode_type) for user in config.users]


def test_terminate_closes_only_that_tenants_pools(api: APIClient, node: Any) -> None:
    put(api, "t1", tenant_body())
    put(api, "t2", tenant_body())
    mine = _open_pools(node, "t1")
    theirs = _open_pools(node, "t2")
    response = api.post("/api/tenants/t1/terminate")
    assert response.status_code == 200, response.content
    assert response.json()["data"] == {"external_id": "t1", "clients_closed": 0}
    assert all(pool.closed for pool in mine)
    assert not any(pool.closed for pool in theirs)
    assert {key.tenant for key in node.pools} == {"t2"}
    assert Tenant.objects.filter(external_id="t1").exists()  # the tenant itself stays


def test_clients_lists_rows_of_the_live_node(api: APIClient, node: Any) -> None:
    put(api, "t1", tenant_body())
    response = api.get("/api/tenants/t1/clients")
    assert response.status_code == 200
    assert response.json() == {"data": []}  # rows from real clients: tests/integration


def test_node_routes_answer_503_where_no_pooler_runs(api: APIClient) -> None:
    assert runtime.get_node() is None
    put(api, "t1", tenant_body())
    for response in (api.post("/api/tenants/t1/terminate"), api.get("/api/tenants/t1/clients")):
        assert response.status_code == 503
        assert "runpooler" in response.json()["detail"]


# --- health ----------------------------------------------------------------------------


def test_health_reports_the_metadata_db_and_no_pooler(anon: APIClient) -> None:
    response = anon.get("/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["metadata_db"]["ok"] is True
    assert body["pooler"]["running"] is False


def test_health_with_a_node_reports_its_listeners(
    anon: APIClient, node: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Server:
        started = False

    from pooler.listener import Listener

    stopped = Listener("transaction", "127.0.0.1", 6543, Server(), "--proxy-port-transaction")
    monkeypatch.setattr(runtime.current, "listeners", [stopped])
    response = anon.get("/api/health")
    assert response.status_code == 503  # a listener that is not serving
    pooler = response.json()["pooler"]
    assert pooler["running"] is True
    assert pooler["listeners"] == [
        {"name": "transaction", "host": "127.0.0.1", "port": 6543, "serving": False}
    ]
    Server.started = True
    assert anon.get("/api/health").status_code == 200


def test_health_is_503_when_the_metadata_db_fails(
    anon: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import connection

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise connection.Database.OperationalError("password=leaked-in-message host=x")

    monkeypatch.setattr(connection, "cursor", broken)
    response = anon.get("/api/health")
    assert response.status_code == 503
    body = json.dumps(response.json())
    assert "unreachable (OperationalError)" in body
    assert "leaked-in-message" not in body  # driver messages stay in the log


# --- vault problems surface as 503 -----------------------------------------------------


def test_a_missing_vault_key_is_a_clear_503(
    api: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VAULT_ENC_KEY")
    response = put(api, "t1", tenant_body())
    assert response.status_code == 503
    assert "VAULT_ENC_KEY is not set" in response.json()["detail"]
    assert not Tenant.objects.exists()
