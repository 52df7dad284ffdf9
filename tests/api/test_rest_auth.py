"""Every protected route refuses a missing, badly signed, expired or malformed token with
401 and changes nothing; an unset or weak secret switches the API off (503)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from tenants.api.auth import mint_token
from tenants.models import Tenant
from tenants.services import config_version, upsert_tenant
from tests.api.conftest import TEST_API_SECRET

pytestmark = [pytest.mark.api, pytest.mark.django_db]

PASSWORD = "auth-Pa55word"
NEW_TENANT = {
    "tenant": {
        "db_host": "10.0.0.9",
        "db_database": "other",
        "users": [{"db_user": "app", "db_password": "new-Pa55"}],
    }
}

#: (method, path, body) of every route that needs a token.
PROTECTED = [
    ("get", "/api/tenants", None),
    ("get", "/api/tenants/t1", None),
    ("put", "/api/tenants/t1", NEW_TENANT),
    ("put", "/api/tenants/t9", NEW_TENANT),
    ("patch", "/api/tenants/t1", {"tenant": {"default_pool_size": 2}}),
    ("delete", "/api/tenants/t1", None),
    ("post", "/api/tenants/t1/terminate", None),
    ("post", "/api/tenants/t1/pause", None),
    ("post", "/api/tenants/t1/resume", None),
    ("post", "/api/tenants/t1/reconnect", None),
    ("get", "/api/tenants/t1/clients", None),
    ("get", "/api/openapi", None),
]


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": "tester", "iat": now, "exp": now + 600}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(claims: dict[str, Any], secret: str = TEST_API_SECRET, alg: str = "HS256") -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)  # HS512 wants 64 bytes
        return jwt.encode(claims, secret, algorithm=alg)


BAD_HEADERS: dict[str, Callable[[], str | None]] = {
    "no token": lambda: None,
    "bad signature": lambda: "Bearer " + _sign(_claims(), "another-secret-0123456789abcdef-xyz"),
    "expired": lambda: "Bearer " + _sign(_claims(iat=int(time.time()) - 7200, exp=1)),
    "no exp": lambda: "Bearer " + _sign(_claims(exp=None)),
    "HS512": lambda: "Bearer " + _sign(_claims(), alg="HS512"),
    "alg none": lambda: "Bearer " + jwt.encode(_claims(), None, algorithm="none"),
    "not a jwt": lambda: "Bearer not.a.jwt",
    "basic scheme": lambda: "Basic dXNlcjpwYXNz",
    "two tokens": lambda: "Bearer a b",
}


@pytest.fixture
def t1() -> Tenant:
    tenant, _ = upsert_tenant(
        {
            "external_id": "t1",
            "db_host": "127.0.0.1",
            "db_database": "app",
            "default_pool_size": 5,
            "users": [{"db_user": "app", "db_password": PASSWORD}],
        }
    )
    return tenant


def _call(client: APIClient, method: str, path: str, body: Any, header: str | None) -> Any:
    kwargs: dict[str, Any] = {"format": "json"} if body is not None else {}
    if header is not None:
        kwargs["HTTP_AUTHORIZATION"] = header
    return getattr(client, method)(path, body, **kwargs)


def _state() -> tuple[int, list[tuple[Any, ...]]]:
    rows = Tenant.objects.order_by("external_id").values_list(
        "external_id", "db_host", "default_pool_size", "updated_at"
    )
    return config_version(), list(rows)


@pytest.mark.parametrize("case", list(BAD_HEADERS))
@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_refused_with_401_and_nothing_changes(
    t1: Tenant, node: Any, case: str, method: str, path: str, body: Any
) -> None:
    pool = node.pool_for(*_pool_args())
    before = _state()
    response = _call(APIClient(), method, path, body, BAD_HEADERS[case]())
    assert response.status_code == 401, response.content
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response["Content-Type"] == "application/json"
    detail = response.json()["detail"]
    assert "minttoken" in detail or "Bearer <JWT>" in detail
    assert _state() == before
    assert node.pools == {pool.key: pool} and not pool.closed  # terminate did not run


def _pool_args() -> tuple[Any, ...]:
    from tenants.services import build_snapshot

    config = build_snapshot().tenant("t1")
    assert config is not None
    return config, config.users[0], "app", "transaction"


def test_refusal_says_why(t1: Tenant, anon: APIClient) -> None:
    reasons = {
        case: _call(anon, "get", "/api/tenants", None, make()).json()["detail"]
        for case, make in BAD_HEADERS.items()
    }
    assert "authentication required" in reasons["no token"]
    assert "signature does not verify with API_JWT_SECRET" in reasons["bad signature"]
    assert "expired" in reasons["expired"]
    assert "'exp' claim" in reasons["no exp"]
    assert "HS256" in reasons["HS512"]
    assert "HS256" in reasons["alg none"] or "not a valid JWT" in reasons["alg none"]
    assert "Bearer <JWT>" in reasons["basic scheme"]


def test_a_valid_token_is_accepted(t1: Tenant, api: APIClient) -> None:
    assert api.get("/api/tenants").status_code == 200


def test_a_token_expiring_in_the_future_by_one_second_still_works(t1: Tenant) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer " + mint_token(TEST_API_SECRET, 5))
    assert client.get("/api/tenants/t1").status_code == 200


@pytest.mark.parametrize("secret", ["", "too-short-secret"])
def test_unset_or_weak_secret_switches_the_api_off(
    t1: Tenant, token: str, monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    monkeypatch.setenv("API_JWT_SECRET", secret)
    before = _state()
    for method, path, body in PROTECTED:
        response = _call(APIClient(), method, path, body, f"Bearer {token}")
        assert response.status_code == 503, (method, path)
        assert "API_JWT_SECRET" in response.json()["detail"]
    assert _state() == before


def test_a_token_for_another_secret_fails_after_rotation(
    t1: Tenant, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_JWT_SECRET", "rotated-secret-0123456789abcdef-0123456789")
    response = _call(APIClient(), "get", "/api/tenants", None, f"Bearer {token}")
    assert response.status_code == 401


def test_health_and_swagger_ui_need_no_token(anon: APIClient) -> None:
    assert anon.get("/api/health").status_code == 200
    page = anon.get("/swaggerui")
    assert page.status_code == 200
    assert b"swagger-ui" in page.content


# --- minttoken ------------------------------------------------------------------------


def test_minttoken_prints_a_token_the_api_accepts(
    t1: Tenant, capsys: pytest.CaptureFixture[str]
) -> None:
    call_command("minttoken", "--ttl", "120")
    printed = capsys.readouterr().out.strip()
    claims = jwt.decode(printed, TEST_API_SECRET, algorithms=["HS256"])
    assert 100 <= claims["exp"] - time.time() <= 121
    response = _call(APIClient(), "get", "/api/tenants/t1", None, f"Bearer {printed}")
    assert response.status_code == 200


def test_minttoken_uses_the_secret_env_it_is_given(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "metrics-secret-for-this-test-0123456789"
    monkeypatch.setenv("METRICS_JWT_SECRET", secret)
    call_command("minttoken", "--secret-env", "METRICS_JWT_SECRET")
    printed = capsys.readouterr().out.strip()
    assert jwt.decode(printed, secret, algorithms=["HS256"])["sub"] == "operator"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(printed, TEST_API_SECRET, algorithms=["HS256"])


def test_minttoken_refuses_without_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("API_JWT_SECRET")
    with pytest.raises(CommandError, match="API_JWT_SECRET is not set"):
        call_command("minttoken")
