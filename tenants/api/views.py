"""REST API views (Supavisor's routes), health, the schema and Swagger UI, and /metrics.

Every write goes through tenants.services, which bumps the config version the running
pooler polls, so changes reach it without any other mechanism. Views that need the live
node (terminate, clients) read pooler.runtime and answer 503 where no pooler runs.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from django.db import connection
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django_prometheus.exports import ExportToDjangoView
from drf_spectacular.renderers import (
    OpenApiJsonRenderer,
    OpenApiJsonRenderer2,
    OpenApiYamlRenderer,
    OpenApiYamlRenderer2,
)
from drf_spectacular.utils import OpenApiResponse, extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework import status
from rest_framework.exceptions import APIException, NotFound
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView, exception_handler

from pooler import runtime
from tenants import crypto
from tenants.api import auth
from tenants.api import serializers as s
from tenants.models import EXTERNAL_ID_PATTERN, Tenant, TenantUser
from tenants.services import (
    USER_FIELDS,
    TenantConfigError,
    delete_tenant,
    tenant_to_document,
    upsert_tenant,
)

log = logging.getLogger("tenants.api")

_EXTERNAL_ID = re.compile(EXTERNAL_ID_PATTERN)
_LABEL = re.compile(r"^(?:tenant '[^']*'|tenants\[\d+\]|tenant): ")
_UNKNOWN = re.compile(r"^unknown key '(?P<key>[^']*)'")
_FIELD = re.compile(r"^(?P<field>[A-Za-z_][\w]*(?:\[\d+\])?(?:\.[A-Za-z_]\w*)?): (?P<message>.+)$")

NOT_FOUND = OpenApiResponse(s.ErrorSerializer, description="no tenant with this external_id")
UNAUTHORIZED = OpenApiResponse(s.ErrorSerializer, description="missing, invalid or expired token")
INVALID = OpenApiResponse(s.ValidationErrorSerializer, description="the errors, by field")
NO_POOLER = OpenApiResponse(s.ErrorSerializer, description="no pooler runs in this process")
AUTH_ERRORS = {401: UNAUTHORIZED}


class PoolerNotRunning(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = (
        "the pooler is not running in this process: this route reads the live pooler, so "
        "call it on the HTTP port of a `manage.py runpooler` process"
    )
    default_code = "pooler_not_running"


class VaultUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "vault_key"


class BadDocument(APIException):
    """A 400 with one entry per problem, each naming its field (None when there is none)."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "invalid"

    def __init__(self, errors: list[dict[str, str | None]]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e["message"]) for e in errors))


def _error(field: str | None, message: str) -> dict[str, str | None]:
    return {"field": field, "message": message}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus: vault key problems -> 503, field errors -> their list."""
    if isinstance(exc, crypto.VaultKeyError):
        exc = VaultUnavailable(str(exc))
    if isinstance(exc, TenantConfigError):
        exc = BadDocument([_field_error(line) for line in exc.errors])
    response = exception_handler(exc, context)
    if response is None or response.status_code != 400:
        return response
    if isinstance(exc, BadDocument):
        response.data = {"detail": "invalid tenant", "errors": exc.errors}
    else:  # malformed JSON and the like: the same shape, no field to name
        detail = str(response.data.get("detail", response.data))
        response.data = {"detail": detail, "errors": [_error(None, detail)]}
    return response


def _field_error(line: str) -> dict[str, str | None]:
    """A services error line (``tenant 't1': users[0].pool_size: must be ...``) split into
    its field and message."""
    rest = _LABEL.sub("", line, count=1)
    match = _FIELD.match(rest)
    if match is not None:
        return _error(match["field"], match["message"])
    unknown = _UNKNOWN.match(rest)
    return _error(unknown["key"] if unknown else None, rest)


# --- request bodies -----------------------------------------------------------------------


def _tenant_object(body: Any) -> dict[str, Any]:
    """The ``tenant`` object of a request body, checked for text the database cannot store."""
    if not isinstance(body, dict) or not isinstance(body.get("tenant"), dict):
        raise BadDocument([_error("tenant", 'required: send {"tenant": {...}}, a JSON object')])
    problems = [
        _error(str(key), "unknown key: the body holds only 'tenant'")
        for key in body
        if key != "tenant"
    ]
    problems += _text_problems(body["tenant"], "")
    if problems:
        raise BadDocument(problems)
    return dict(body["tenant"])


def _text_problems(value: Any, path: str) -> list[dict[str, str | None]]:
    """NUL characters or lone surrogates anywhere (keys too): no database stores them."""
    if isinstance(value, str):
        return [_error(path or None, why)] if (why := _bad_text(value)) else []
    problems: list[dict[str, str | None]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if why := _bad_text(str(key)):
                problems.append(_error(path or None, f"a key {why}"))
            problems.extend(_text_problems(item, where))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problems.extend(_text_problems(item, f"{path}[{index}]"))
    return problems


def _bad_text(text: str) -> str | None:
    if "\x00" in text:
        return "must not contain NUL characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (no lone surrogates)"
    return None


def _check_external_id(item: dict[str, Any], external_id: str) -> None:
    given = item.setdefault("external_id", external_id)
    if given != external_id:
        message = f"must match the URL ({external_id!r}), got {given!r}"
        raise BadDocument([_error("external_id", message)])


# --- lookups ------------------------------------------------------------------------------


def _tenants() -> QuerySet[Tenant]:
    """Tenants with their users, passwords not even loaded (reads never decrypt)."""
    users = TenantUser.objects.defer("db_password")
    return Tenant.objects.prefetch_related(Prefetch("users", queryset=users))


def _get_tenant(external_id: str) -> Tenant:
    if _EXTERNAL_ID.match(external_id):
        tenant = _tenants().filter(external_id=external_id).first()
        if tenant is not None:
            return tenant
    raise NotFound(f"no tenant {external_id!r}: list them with GET /api/tenants")


def _node() -> Any:
    node = runtime.get_node()
    if node is None:
        raise PoolerNotRunning()
    return node


def _merged_users(patch: Any, current: list[dict[str, Any]]) -> Any:
    """PATCH users: each entry over the existing user with the same alias and mode."""
    if not isinstance(patch, list):
        return patch  # services reports the type error
    by_key = {(u["db_user_alias"], u["mode_type"]): u for u in current}
    merged = []
    for item in patch:
        if isinstance(item, dict):
            key = (item.get("db_user_alias") or item.get("db_user"), item.get("mode_type"))
            if key[1] is None:
                key = (key[0], "transaction")
            if all(isinstance(part, str) for part in key) and key in by_key:
                item = {**by_key[key], **item}  # wrong types: services reports them
        merged.append(item)
    return merged


def _current_users(tenant: Tenant) -> list[dict[str, Any]]:
    """The tenant's users with their passwords, in memory only, for a PATCH merge."""
    users = TenantUser.objects.filter(tenant=tenant)
    return [{name: getattr(user, name) for name in USER_FIELDS} for user in users]


# --- tenants ------------------------------------------------------------------------------


class DataPagination(LimitOffsetPagination):
    """``?limit=&offset=``; the page is under ``data`` (Supavisor's envelope)."""

    default_limit = 100
    max_limit = 1000

    def get_paginated_response(self, data: Any) -> Response:
        return Response(
            {
                "count": self.count,
                "next": self.get_next_link(),
                "previous": self.get_previous_link(),
                "data": data,
            }
        )

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        page = super().get_paginated_response_schema(schema)
        page["properties"]["data"] = page["properties"].pop("results")
        page["required"] = ["count", "data"]
        return page


class TenantListView(APIView):
    pagination_class = DataPagination

    @extend_schema(
        operation_id="list_tenants",
        tags=["tenants"],
        responses={200: s.TenantOutSerializer(many=True), **AUTH_ERRORS},
        summary="List tenants (paginated, by external_id)",
    )
    def get(self, request: Request) -> Response:
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(_tenants(), request, view=self)
        return paginator.get_paginated_response([s.tenant_data(t) for t in page or []])


class TenantDetailView(APIView):
    @extend_schema(
        operation_id="get_tenant",
        tags=["tenants"],
        responses={200: s.TenantResponseSerializer, 404: NOT_FOUND, **AUTH_ERRORS},
        summary="A tenant and its users (never their passwords)",
    )
    def get(self, request: Request, external_id: str) -> Response:
        return Response({"data": s.tenant_data(_get_tenant(external_id))})

    @extend_schema(
        operation_id="put_tenant",
        tags=["tenants"],
        request=s.TenantPutRequestSerializer,
        responses={
            200: s.TenantResponseSerializer,
            201: s.TenantResponseSerializer,
            400: INVALID,
            **AUTH_ERRORS,
        },
        summary="Create or replace a tenant with its users",
        description="The body's tenant is an applytenants tenant object: fields left out "
        "take their defaults and users not listed are deleted. 201 when created.",
    )
    def put(self, request: Request, external_id: str) -> Response:
        item = _tenant_object(request.data)
        _check_external_id(item, external_id)
        tenant, created = upsert_tenant(item)
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response({"data": s.tenant_data(_get_tenant(tenant.external_id))}, status=code)

    @extend_schema(
        operation_id="patch_tenant",
        tags=["tenants"],
        request=s.TenantPatchRequestSerializer,
        responses={200: s.TenantResponseSerializer, 400: INVALID, 404: NOT_FOUND, **AUTH_ERRORS},
        summary="Change some fields of a tenant",
        description="Fields left out keep their values. `users`, when given, is the complete "
        "list of users afterwards; each entry is merged over the existing user with the same "
        "alias and mode, so db_password may be left out to keep it.",
    )
    def patch(self, request: Request, external_id: str) -> Response:
        tenant = _get_tenant(external_id)
        changes = _tenant_object(request.data)
        _check_external_id(changes, external_id)
        current = _current_users(tenant)
        item = {**tenant_to_document(tenant), "users": current}
        item.update({k: v for k, v in changes.items() if k != "users"})
        if "users" in changes:
            item["users"] = _merged_users(changes["users"], current)
        upsert_tenant(item)
        return Response({"data": s.tenant_data(_get_tenant(external_id))})

    @extend_schema(
        operation_id="delete_tenant",
        tags=["tenants"],
        responses={204: None, 404: NOT_FOUND, **AUTH_ERRORS},
        summary="Delete a tenant: its clients get FATAL 57P01 and its pools close",
    )
    def delete(self, request: Request, external_id: str) -> Response:
        if not _EXTERNAL_ID.match(external_id) or not delete_tenant(external_id):
            raise NotFound(f"no tenant {external_id!r}: list them with GET /api/tenants")
        return Response(status=status.HTTP_204_NO_CONTENT)


class TenantTerminateView(APIView):
    @extend_schema(
        operation_id="terminate_tenant",
        tags=["tenants"],
        request=None,
        responses={
            200: s.TerminateResponseSerializer,
            404: NOT_FOUND,
            503: NO_POOLER,
            **AUTH_ERRORS,
        },
        summary="Close the tenant's pools and client connections on this node",
        description="Its clients get FATAL 57P01; they may reconnect at once.",
    )
    def post(self, request: Request, external_id: str) -> Response:
        tenant = _get_tenant(external_id)
        closed = _node().terminate_tenant(tenant.external_id)
        log.info("tenant %s terminated through the API (%d clients)", tenant.external_id, closed)
        return Response({"data": {"external_id": tenant.external_id, "clients_closed": closed}})


class TenantPoolActionView(APIView):
    """PgBouncer's PAUSE, RESUME and RECONNECT for one tenant's pools on this node."""

    action = "pause"

    @extend_schema(
        tags=["tenants"],
        request=None,
        responses={
            200: s.PoolActionResponseSerializer,
            404: NOT_FOUND,
            503: NO_POOLER,
            **AUTH_ERRORS,
        },
        summary="Pause, resume or reconnect the tenant's pools on this node",
        description=(
            "pause: new transactions wait (up to query_wait_timeout) while running ones "
            "finish; poll until busy_servers is 0 before switching the database. resume: "
            "waiting transactions go on. reconnect: every server connection is replaced as "
            "soon as it is released (use after moving the database)."
        ),
    )
    def post(self, request: Request, external_id: str) -> Response:
        tenant = _get_tenant(external_id)
        node = _node()
        name = tenant.external_id
        if self.action == "pause":
            node.pause_tenant(name)
        elif self.action == "resume":
            node.resume_tenant(name)
        else:
            node.reconnect_tenant(name)
        pools = node.pools_of(name)
        log.info("tenant %s: %s through the API", name, self.action)
        return Response(
            {
                "data": {
                    "external_id": name,
                    "action": self.action,
                    "pools": len(pools),
                    "busy_servers": sum(pool.active for pool in pools),
                }
            }
        )


class TenantPauseView(TenantPoolActionView):
    action = "pause"


class TenantResumeView(TenantPoolActionView):
    action = "resume"


class TenantReconnectView(TenantPoolActionView):
    action = "reconnect"


class TenantClientsView(APIView):
    @extend_schema(
        operation_id="list_tenant_clients",
        tags=["tenants"],
        responses={200: s.ClientsResponseSerializer, 404: NOT_FOUND, 503: NO_POOLER, **AUTH_ERRORS},
        summary="The tenant's client connections on this node, one row each",
    )
    def get(self, request: Request, external_id: str) -> Response:
        tenant = _get_tenant(external_id)
        rows = _node().clients_of(tenant.external_id)
        return Response({"data": [s.client_row(row) for row in rows]})


# --- health, schema, UI -------------------------------------------------------------------


def health_status() -> tuple[int, dict[str, Any]]:
    """One service function behind the health view: (HTTP status, body)."""
    metadata: dict[str, Any] = {"ok": True, "vendor": connection.vendor}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        log.warning("health: metadata DB unreachable: %s: %s", exc.__class__.__name__, exc)
        metadata.update(ok=False, error=f"unreachable ({exc.__class__.__name__}); see the log")
    pooler = _pooler_status()
    serving = all(item["serving"] for item in pooler["listeners"])
    healthy = metadata["ok"] and serving
    body = {"status": "ok" if healthy else "unavailable", "metadata_db": metadata, "pooler": pooler}
    return (200 if healthy else 503), body


def _pooler_status() -> dict[str, Any]:
    node = runtime.get_node()
    if node is None:
        return {"running": False, "listeners": [], "config_version": None, "tenants": None,
                "pools": None, "clients": None}  # fmt: skip
    snapshot = node.registry.snapshot
    return {
        "running": True,
        "listeners": runtime.listeners(),
        "config_version": snapshot.version,
        "tenants": len(snapshot.tenants),
        "pools": len(node.pools),
        "clients": len(node.clients),
    }


class HealthView(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="health",
        tags=["health"],
        auth=[],
        responses={200: s.HealthSerializer, 503: s.HealthSerializer},
        summary="Metadata DB reachable and listeners serving (no token needed)",
    )
    def get(self, request: Request) -> Response:
        code, body = health_status()
        return Response(body, status=code)


class SchemaView(SpectacularAPIView):
    """The OpenAPI 3 schema, JSON first (``?format=yaml`` for YAML); needs a token."""

    authentication_classes = [auth.BearerJWTAuthentication]
    renderer_classes = [
        OpenApiJsonRenderer2,
        OpenApiJsonRenderer,
        OpenApiYamlRenderer,
        OpenApiYamlRenderer2,
    ]


class SwaggerUIView(SpectacularSwaggerView):
    """Swagger UI from the sidecar's files (no CDN), with a box to paste a token."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    template_name = "greenvisor/swagger_ui.html"
    url_name = "api-openapi"

    def _get_schema_auth_names(self) -> list[str]:
        return [auth.BearerJWTScheme.name]  # Swagger UI sends the token with the schema fetch


def api_not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    """Unknown /api paths answer JSON, like the rest of the API."""
    return JsonResponse({"detail": f"no API route {request.path!r}: see /api/openapi"}, status=404)


# --- /metrics -----------------------------------------------------------------------------


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition; needs a METRICS_JWT_SECRET token when that variable is set."""
    if os.environ.get(auth.METRICS_SECRET_ENV):
        header = request.META.get("HTTP_AUTHORIZATION", "").encode("latin-1", errors="replace")
        try:
            auth.verify_header(header, auth.METRICS_SECRET_ENV)
        except auth.SecretNotConfigured as exc:
            return JsonResponse({"detail": str(exc.detail)}, status=503)
        except auth.TokenError as exc:
            response = JsonResponse({"detail": str(exc)}, status=401)
            response["WWW-Authenticate"] = auth.www_authenticate()
            return response
    return ExportToDjangoView(request)
