"""The drop-in's pure parts: tenants merged into snapshots, routing decisions, node settings,
the statement-mode ReadyForQuery check (no sockets, no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pooler.config import ConfigSnapshot, TenantConfig
from pooler.node import Node, NodeSettings
from pooler.pgbouncer.authfile import parse_auth_file
from pooler.pgbouncer.dropin import FOREVER, DropIn, node_settings
from pooler.pgbouncer.ini import load
from pooler.pgbouncer.statement import _ends_in_ready

pytestmark = pytest.mark.unit

INI = """\
[databases]
app1 = host=127.0.0.1 port=5432 dbname=app1
stmt = host=127.0.0.1 dbname=app1 pool_mode=statement
* = host=127.0.0.1

[pgbouncer]
listen_addr = 127.0.0.1
auth_file = userlist.txt
query_wait_timeout = 0
server_lifetime = 12.5
client_login_timeout = 7
"""


@pytest.fixture
def dropin(tmp_path: Path) -> DropIn:
    (tmp_path / "userlist.txt").write_text('"alice" "pw"\n')
    (tmp_path / "pgbouncer.ini").write_text(INI)
    config = load(tmp_path / "pgbouncer.ini")
    authfile = parse_auth_file('"alice" "pw"\n')
    return DropIn(Node(NodeSettings()), config, authfile)


def test_ini_tenants_join_every_snapshot_and_win_a_name_clash(dropin: DropIn) -> None:
    db = ConfigSnapshot(7, {"t1": TenantConfig("t1", "h"), "app1": TenantConfig("app1", "other")})
    dropin.node.apply_snapshot(db)
    merged = dropin.node.registry.snapshot
    assert merged.version == 7
    assert set(merged.tenants) == {"t1", "app1", "stmt", "*"}
    assert merged.tenants["app1"].db_host == "127.0.0.1"  # the ini's, not the DB's
    assert dropin.is_db_tenant("t1")
    assert not dropin.is_db_tenant("app1") and not dropin.is_db_tenant(None)
    assert not dropin.is_db_tenant("nosuch")


def test_ini_users_get_the_pool_mode_of_their_database(dropin: DropIn) -> None:
    tenants = dropin.ini_tenants
    assert [u.mode_type for u in tenants["stmt"].users] == ["statement"]
    assert [u.db_user_alias for u in tenants["app1"].users] == ["alice"]


def test_node_settings_come_from_the_file(dropin: DropIn) -> None:
    settings = node_settings(dropin.config, NodeSettings())
    assert settings.server_lifetime == 12.5
    assert settings.client_login_timeout == 7
    assert settings.query_wait_timeout == FOREVER  # 0: wait forever, as PgBouncer
    assert dropin.node.settings == settings


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"C\0\0\0\x0aBEGIN\0Z\0\0\0\x05T", True),
        (b"Z\0\0\0\x05E", True),
        (b"Z\0\0\0\x05", False),
        (b"D\0\0\0\x05x", False),
        (memoryview(b"xxZ\0\0\0\x05T"), True),
    ],
)
def test_a_reply_ending_in_ready_for_query_is_recognised(data: bytes, expected: bool) -> None:
    assert _ends_in_ready(data) is expected
