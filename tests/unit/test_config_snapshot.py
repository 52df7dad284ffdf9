"""ConfigSnapshot's derived fields: what the janitor and the SNI lookup read instead of
walking every tenant (or every client) each time."""

from __future__ import annotations

import pytest

from pooler.config import ConfigSnapshot, TenantConfig

pytestmark = pytest.mark.unit


def test_idle_timeouts_is_false_when_no_tenant_has_one() -> None:
    snapshot = ConfigSnapshot(1, {"a": TenantConfig("a", "h"), "b": TenantConfig("b", "h")})
    assert snapshot.idle_timeouts is False
    assert ConfigSnapshot().idle_timeouts is False


def test_idle_timeouts_is_true_when_one_tenant_has_one() -> None:
    tenants = {"a": TenantConfig("a", "h"), "b": TenantConfig("b", "h", client_idle_timeout=30)}
    assert ConfigSnapshot(2, tenants).idle_timeouts is True
