"""API test environment: vault key and JWT secrets set at import (before any model is
saved), token helpers, an authenticated DRF client and a real pooler Node in the runtime."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from rest_framework.test import APIClient

from tests.support.pooler import TEST_VAULT_KEY  # 32 characters, Supavisor's form

TEST_API_SECRET = "greenvisor-tests-api-jwt-secret-0123456789"
TEST_METRICS_SECRET = "greenvisor-tests-metrics-jwt-secret-987654321"

# Forced, not defaulted: the tests must not depend on the caller's shell. Subprocesses
# started by the integration tests inherit these too.
os.environ["VAULT_ENC_KEY"] = TEST_VAULT_KEY
os.environ["API_JWT_SECRET"] = TEST_API_SECRET
os.environ.pop("METRICS_JWT_SECRET", None)


@pytest.fixture
def token() -> str:
    """A valid API token (HS256, API_JWT_SECRET, one hour)."""
    from tenants.api.auth import mint_token

    return mint_token(TEST_API_SECRET, 3600)


@pytest.fixture
def anon() -> APIClient:
    """A client that sends no token."""
    return APIClient()


@pytest.fixture
def api(token: str) -> APIClient:
    """A client that sends a valid bearer token with every request."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def node() -> Iterator[object]:
    """A real pooler Node registered as this process's running node (no listeners)."""
    from pooler import runtime
    from pooler.node import Node, NodeSettings

    live = Node(NodeSettings())
    runtime.current.node = live
    try:
        yield live
    finally:
        runtime.current.node = None
