"""The OpenAPI schema is valid OpenAPI 3 and describes the API; schemathesis, loading it
from /api/openapi with a token, sends generated requests (valid and invalid) in-process
and finds no 5xx and no response outside the schema."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from drf_spectacular.validation import validate_schema
from hypothesis import HealthCheck, settings
from rest_framework.test import APIClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from project.wsgi import application

pytestmark = [pytest.mark.api, pytest.mark.django_db]

SUPAVISOR_ROUTES = {
    "/api/tenants": {"get"},
    "/api/tenants/{external_id}": {"get", "put", "patch", "delete"},
    "/api/tenants/{external_id}/terminate": {"post"},
    "/api/tenants/{external_id}/pause": {"post"},
    "/api/tenants/{external_id}/resume": {"post"},
    "/api/tenants/{external_id}/reconnect": {"post"},
    "/api/tenants/{external_id}/clients": {"get"},
    "/api/health": {"get"},
}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_schema_is_valid_openapi_3_with_supavisors_routes(api: APIClient) -> None:
    response = api.get("/api/openapi")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    schema = response.json()
    validate_schema(schema)  # raises on an invalid OpenAPI 3 document
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "Greenvisor API"
    routes = {path: set(item) - {"parameters"} for path, item in schema["paths"].items()}
    assert routes == SUPAVISOR_ROUTES
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert "security" not in schema["paths"]["/api/health"]["get"] or (
        schema["paths"]["/api/health"]["get"]["security"] in ([], [{}])
    )


def test_schema_never_offers_the_password_in_a_response(api: APIClient) -> None:
    components = api.get("/api/openapi").json()["components"]["schemas"]
    assert "db_password" not in components["UserOut"]["properties"]
    assert "db_password" in components["UserInRequest"]["properties"]


def test_schema_is_available_as_yaml_too(api: APIClient) -> None:
    response = api.get("/api/openapi?format=yaml")
    assert response.status_code == 200
    assert response.content.startswith(b"openapi: 3.")


@pytest.fixture
def api_schema(node: Any, token: str) -> Any:
    """The schema as served (with a token), bound to the WSGI app in this process."""
    headers = {"Authorization": f"Bearer {token}"}
    return schemathesis.openapi.from_wsgi("/api/openapi", application, headers=headers)


lazy = schemathesis.pytest.from_fixture("api_schema")


@lazy.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_generated_requests_find_no_5xx(case: Any, token: str) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)
