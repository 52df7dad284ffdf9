"""`manage.py applytenants`: JSON/YAML files applied atomically, idempotently, with clear errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError

from tenants.models import Tenant, TenantUser
from tenants.services import TenantConfigError, apply_tenants, config_version

pytestmark = [pytest.mark.api, pytest.mark.django_db]

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "app-Pa55word!"


def tenant_doc(external_id: str, *users: dict[str, Any], **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"external_id": external_id, "db_host": "127.0.0.1", "db_database": "app"}
    doc.update(fields)
    doc["users"] = list(users)
    return doc


def user_doc(db_user: str = "app", **fields: Any) -> dict[str, Any]:
    return {"db_user": db_user, "db_password": PASSWORD, **fields}


def write(tmp_path: Path, doc: object, name: str = "tenants.json") -> Path:
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps(doc))
    else:
        path.write_text(yaml.safe_dump(doc))
    return path


def apply_file(path: Path | str, *args: str, stdin: str | None = None) -> str:
    out = io.StringIO()
    extra = {} if stdin is None else {"stdin": io.StringIO(stdin)}
    call_command("applytenants", str(path), *args, stdout=out, **extra)
    return out.getvalue()


def state() -> list[tuple[Any, ...]]:
    """Everything applytenants can change, to compare before/after."""
    tenants = list(Tenant.objects.order_by("external_id").values_list())
    users = list(TenantUser.objects.order_by("pk").values_list())
    return [*tenants, *users, ("version", config_version())]


TWO_TENANTS = {
    "tenants": [
        tenant_doc("t1", user_doc("app"), user_doc("app", mode_type="session"), db_port=5433),
        tenant_doc("t2", user_doc("reader", db_user_alias="ro", pool_size=5)),
    ]
}


# --- creating and re-applying -------------------------------------------------------------


@pytest.mark.parametrize("name", ["tenants.json", "tenants.yaml", "tenants.yml"])
def test_creates_tenants_and_users_from_a_file(tmp_path: Path, name: str) -> None:
    output = apply_file(write(tmp_path, TWO_TENANTS, name))
    assert "created   t1" in output
    assert "created   t2" in output
    assert "2 created, 0 updated, 0 unchanged, 0 deleted" in output
    t1 = Tenant.objects.get(external_id="t1")
    assert (t1.db_host, t1.db_port, t1.db_database, t1.default_pool_size) == (
        "127.0.0.1",
        5433,
        "app",
        15,
    )
    modes = sorted(t1.users.values_list("db_user_alias", "mode_type"))
    assert modes == [("app", "session"), ("app", "transaction")]
    reader = TenantUser.objects.get(tenant__external_id="t2")
    assert (reader.db_user_alias, reader.db_user, reader.pool_size) == ("ro", "reader", 5)
    assert reader.db_password == PASSWORD


def test_second_run_is_unchanged_and_keeps_the_version(tmp_path: Path) -> None:
    path = write(tmp_path, TWO_TENANTS, "tenants.yaml")
    apply_file(path)
    before = state()
    output = apply_file(path)
    assert "unchanged t1" in output
    assert "unchanged t2" in output
    assert "0 created, 0 updated, 2 unchanged, 0 deleted" in output
    assert state() == before


def test_a_changed_field_updates_in_place(tmp_path: Path) -> None:
    apply_file(write(tmp_path, TWO_TENANTS))
    t1_pk = Tenant.objects.get(external_id="t1").pk
    version = config_version()
    changed = {"tenants": [dict(TWO_TENANTS["tenants"][0], default_pool_size=40)]}
    changed["tenants"].append(TWO_TENANTS["tenants"][1])
    output = apply_file(write(tmp_path, changed))
    assert "updated   t1" in output
    assert "unchanged t2" in output
    t1 = Tenant.objects.get(external_id="t1")
    assert (t1.pk, t1.default_pool_size) == (t1_pk, 40)
    assert config_version() > version


def test_a_field_left_out_returns_to_its_default(tmp_path: Path) -> None:
    apply_file(write(tmp_path, {"tenants": [tenant_doc("t1", db_port=6000, enforce_ssl=True)]}))
    apply_file(write(tmp_path, {"tenants": [tenant_doc("t1")]}))
    t1 = Tenant.objects.get(external_id="t1")
    assert (t1.db_port, t1.enforce_ssl) == (5432, False)


def test_users_are_added_updated_and_removed(tmp_path: Path) -> None:
    apply_file(write(tmp_path, {"tenants": [tenant_doc("t1", user_doc("a"), user_doc("b"))]}))
    kept_pk = TenantUser.objects.get(db_user_alias="a").pk
    doc = {"tenants": [tenant_doc("t1", user_doc("a", max_clients=7), user_doc("c"))]}
    output = apply_file(write(tmp_path, doc))
    assert "updated   t1" in output
    users = {u.db_user_alias: u for u in TenantUser.objects.all()}
    assert sorted(users) == ["a", "c"]
    assert (users["a"].pk, users["a"].max_clients) == (kept_pk, 7)


def test_a_password_change_alone_is_an_update(tmp_path: Path) -> None:
    apply_file(write(tmp_path, {"tenants": [tenant_doc("t1", user_doc("a"))]}))
    version = config_version()
    doc = {"tenants": [tenant_doc("t1", user_doc("a", db_password="rotated"))]}
    assert "updated   t1" in apply_file(write(tmp_path, doc))
    assert TenantUser.objects.get().db_password == "rotated"
    assert config_version() > version


def test_without_prune_other_tenants_are_left_alone(tmp_path: Path) -> None:
    apply_file(write(tmp_path, TWO_TENANTS))
    output = apply_file(write(tmp_path, {"tenants": [TWO_TENANTS["tenants"][0]]}))
    assert "1 unchanged, 0 deleted" in output
    assert Tenant.objects.count() == 2


def test_prune_deletes_tenants_missing_from_the_file(tmp_path: Path) -> None:
    apply_file(write(tmp_path, TWO_TENANTS))
    output = apply_file(write(tmp_path, {"tenants": [TWO_TENANTS["tenants"][0]]}), "--prune")
    assert "deleted   t2" in output
    assert "0 created, 0 updated, 1 unchanged, 1 deleted" in output
    assert list(Tenant.objects.values_list("external_id", flat=True)) == ["t1"]
    assert not TenantUser.objects.filter(db_user_alias="ro").exists()


def test_prune_frees_an_sni_hostname_for_a_new_tenant(tmp_path: Path) -> None:
    apply_file(write(tmp_path, {"tenants": [tenant_doc("old", sni_hostname="db.example.com")]}))
    doc = {"tenants": [tenant_doc("new", sni_hostname="db.example.com")]}
    apply_file(write(tmp_path, doc), "--prune")
    assert Tenant.objects.get(sni_hostname="db.example.com").external_id == "new"


def test_dry_run_reports_but_writes_nothing(tmp_path: Path) -> None:
    apply_file(write(tmp_path, {"tenants": [tenant_doc("gone")]}))
    before = state()
    output = apply_file(write(tmp_path, TWO_TENANTS), "--dry-run", "--prune")
    assert "created   t1" in output
    assert "deleted   gone" in output
    assert "dry run: nothing written" in output
    assert state() == before


def test_reads_json_and_yaml_from_stdin() -> None:
    apply_file("-", stdin=json.dumps({"tenants": [tenant_doc("j1")]}))
    apply_file("-", stdin=yaml.safe_dump({"tenants": [tenant_doc("y1")]}))
    assert sorted(Tenant.objects.values_list("external_id", flat=True)) == ["j1", "y1"]


# --- bad input: clear errors, nothing applied ---------------------------------------------


def test_bad_file_names_tenant_and_field_and_applies_nothing(tmp_path: Path) -> None:
    doc = {"tenants": [tenant_doc("good"), tenant_doc("t1", user_doc("app", pool_size=-1))]}
    with pytest.raises(CommandError) as info:
        apply_file(write(tmp_path, doc))
    message = str(info.value)
    assert "tenant 't1': users[0].pool_size: must be a positive integer, got -1" in message
    assert "nothing applied" in message
    assert not Tenant.objects.exists()


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    doc = {
        "tenants": [
            tenant_doc("t1", db_port=70000),
            tenant_doc("t2", user_doc("app", mode_type="statement")),
            tenant_doc("t.3", allow_list=["300.0.0.0/8"]),
        ]
    }
    with pytest.raises(TenantConfigError) as info:
        apply_tenants(doc)
    assert info.value.errors == [
        "tenant 't1': db_port: must be a port number between 1 and 65535, got 70000",
        "tenant 't2': users[0].mode_type: must be one of transaction, session, got 'statement'",
        "tenant 't.3': external_id: must be 1-63 characters of A-Z, a-z, 0-9, '_' or '-' "
        "(no dots: the tenant is the part after the last dot of the user name), got 't.3'",
        "tenant 't.3': allow_list: entry 0: '300.0.0.0/8' does not appear to be an IPv4 or "
        "IPv6 network",
    ]


def test_a_database_conflict_rolls_back_tenants_already_written(tmp_path: Path) -> None:
    """The first tenant is valid and written before the second hits a unique conflict."""
    apply_file(write(tmp_path, {"tenants": [tenant_doc("owner", sni_hostname="db.example.com")]}))
    before = state()
    doc = {"tenants": [tenant_doc("first"), tenant_doc("second", sni_hostname="db.example.com")]}
    with pytest.raises(CommandError) as info:
        apply_file(write(tmp_path, doc))
    assert "tenant 'second': sni_hostname: is already used by another tenant" in str(info.value)
    assert state() == before


def test_apply_tenants_itself_is_atomic() -> None:
    apply_tenants({"tenants": [tenant_doc("owner", sni_hostname="db.example.com")]})
    before = state()
    doc = {"tenants": [tenant_doc("first"), tenant_doc("second", sni_hostname="db.example.com")]}
    with pytest.raises(TenantConfigError):
        apply_tenants(doc)
    assert state() == before


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            {"tenants": [tenant_doc("t1", pool_sise=3)]},
            "tenant 't1': unknown key 'pool_sise' (did you mean 'default_pool_size'?)",
        ),
        (
            {"tenants": [tenant_doc("t1", user_doc("app", pool_sise=3))]},
            "tenant 't1': users[0]: unknown key 'pool_sise' (did you mean 'pool_size'?)",
        ),
        ({"tenant": []}, "document: unknown key 'tenant'"),
    ],
)
def test_unknown_keys_are_rejected(tmp_path: Path, doc: dict[str, Any], expected: str) -> None:
    with pytest.raises(CommandError) as info:
        apply_file(write(tmp_path, doc))
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"db_port": "5432"}, "db_port: must be an integer, got '5432'"),
        ({"db_port": True}, "db_port: must be an integer, got True"),
        ({"enforce_ssl": "yes"}, "enforce_ssl: must be true or false, got 'yes'"),
        ({"db_host": 10}, "db_host: must be a string, got 10"),
        ({"allow_list": "0.0.0.0/0"}, "allow_list: must be a list, got '0.0.0.0/0'"),
        ({"db_database": None}, "db_database: must not be null"),
    ],
)
def test_types_are_checked(fields: dict[str, Any], expected: str) -> None:
    with pytest.raises(TenantConfigError) as info:
        apply_tenants({"tenants": [tenant_doc("t1", **fields)]})
    assert info.value.errors == [f"tenant 't1': {expected}"]


def test_required_fields_are_named() -> None:
    with pytest.raises(TenantConfigError) as info:
        apply_tenants({"tenants": [{"external_id": "t1", "users": [{"db_user": "a"}]}]})
    assert info.value.errors == [
        "tenant 't1': db_host: required",
        "tenant 't1': db_database: required",
        "tenant 't1': users[0].db_password: required",
    ]


def test_duplicates_in_one_file_are_rejected() -> None:
    doc = {
        "tenants": [
            tenant_doc("t1", user_doc("app"), user_doc("other", db_user_alias="app")),
            tenant_doc("t1"),
        ]
    }
    with pytest.raises(TenantConfigError) as info:
        apply_tenants(doc)
    assert info.value.errors == [
        "tenant 't1': users[1]: duplicate user (db_user_alias 'app', mode_type 'transaction'), "
        "also at users[0]",
        "tenant 't1': external_id: duplicate, at tenants[0] and tenants[1]",
    ]


def test_errors_never_contain_a_password(tmp_path: Path) -> None:
    doc = {"tenants": [tenant_doc("t1", user_doc("app", pool_size=0), user_doc("b", typo=1))]}
    doc["tenants"].append(tenant_doc("t2", {"db_user": "x", "db_password": 123456789}))
    with pytest.raises(CommandError) as info:
        apply_file(write(tmp_path, doc))
    message = str(info.value)
    assert "users[0].db_password: must be a string, got an integer" in message
    assert PASSWORD not in message
    assert "123456789" not in message


def test_malformed_yaml_reports_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("tenants:\n  - external_id: t1\n    db_host: [unclosed\n    db_port: 1\n")
    with pytest.raises(CommandError) as info:
        apply_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid YAML at line ")
    assert "column" in message
    assert not Tenant.objects.exists()


def test_yaml_error_line_is_the_offending_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("tenants:\n  - external_id: t1\n  db_host: x\n")
    with pytest.raises(CommandError) as info:
        apply_file(path)
    assert "line 3, column 3" in str(info.value)


def test_duplicate_yaml_keys_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("tenants: []\ntenants:\n  - external_id: t1\n")
    with pytest.raises(CommandError) as info:
        apply_file(path)
    assert "duplicate key 'tenants'" in str(info.value)
    assert "line 2" in str(info.value)


def test_malformed_json_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "tenants": [\n    {"external_id": "t1",}\n  ]\n}\n')
    with pytest.raises(CommandError) as info:
        apply_file(path)
    assert str(info.value).startswith(f"{path}: invalid JSON at line 3, column ")


def test_duplicate_json_keys_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "dup.json"
    path.write_text('{"tenants": [], "tenants": []}')
    with pytest.raises(CommandError, match="duplicate key 'tenants'"):
        apply_file(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(CommandError, match=r"absent\.yaml: cannot read: No such file"):
        apply_file(path)


def test_unknown_file_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text("x = 1")
    with pytest.raises(CommandError, match=r"expected a \.json, \.yaml or \.yml file"):
        apply_file(path)


def test_document_must_be_an_object_with_a_list(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="document: must be an object"):
        apply_file(write(tmp_path, [tenant_doc("t1")]))
    with pytest.raises(CommandError, match="'tenants' must be a list"):
        apply_file(write(tmp_path, {"tenants": {"t1": {}}}))


def test_manage_py_exits_non_zero_with_the_error_on_stderr(tmp_path: Path) -> None:
    path = write(tmp_path, {"tenants": [tenant_doc("a.b")]})
    env = {**os.environ, "GREENVISOR_DATA_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "manage.py", "applytenants", str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "tenant 'a.b': external_id:" in proc.stderr
    assert proc.stdout == ""
