"""upstream_ssl / upstream_verify / upstream_tls_ca: stored, validated, in the snapshot and API."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from tenants.models import Tenant
from tenants.services import TenantConfigError, apply_tenants, build_snapshot, tenant_to_document
from tests.support.certs import TestCA

pytestmark = [pytest.mark.api, pytest.mark.django_db]


@pytest.fixture(scope="module")
def ca_pem() -> str:
    return TestCA(Path(tempfile.mkdtemp(prefix="gv-api-ca-"))).pem


def doc(**fields: Any) -> dict[str, Any]:
    tenant = {"external_id": "t1", "db_host": "db.internal", "db_database": "app"}
    tenant.update(fields)
    tenant["users"] = [{"db_user": "app", "db_password": "x-Pa55word"}]
    return {"tenants": [tenant]}


def test_defaults_are_plaintext_upstream() -> None:
    apply_tenants(doc())
    tenant = build_snapshot().tenant("t1")
    assert tenant is not None
    assert (tenant.upstream_ssl, tenant.upstream_verify, tenant.upstream_tls_ca) == (
        False,
        "none",
        None,
    )


def test_fields_reach_the_snapshot_and_the_document(ca_pem: str) -> None:
    apply_tenants(doc(upstream_ssl=True, upstream_verify="peer", upstream_tls_ca=ca_pem))
    tenant = build_snapshot().tenant("t1")
    assert tenant is not None
    assert (tenant.upstream_ssl, tenant.upstream_verify, tenant.upstream_tls_ca) == (
        True,
        "peer",
        ca_pem,
    )
    assert "BEGIN CERTIFICATE" not in repr(tenant)  # kept out of log lines
    document = tenant_to_document(Tenant.objects.get(external_id="t1"))
    assert document["upstream_tls_ca"] == ca_pem and document["upstream_verify"] == "peer"


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        (
            {"upstream_verify": "full", "upstream_ssl": True},
            "upstream_verify: must be one of none, peer",
        ),
        ({"upstream_verify": "peer"}, "upstream_verify: peer needs upstream_ssl true"),
        ({"upstream_ssl": True, "upstream_tls_ca": "not a pem"}, "upstream_tls_ca: must be PEM"),
        ({"upstream_ssl": "yes"}, "upstream_ssl"),
    ],
)
def test_bad_values_are_refused_naming_the_field(fields: dict[str, Any], needle: str) -> None:
    with pytest.raises(TenantConfigError) as info:
        apply_tenants(doc(**fields))
    assert needle in str(info.value), str(info.value)
