"""Model validation, password secrecy, config-version bumps and the admin's password field."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models.signals import post_save

from tenants.admin import TenantUserForm
from tenants.models import ConfigVersion, Tenant, TenantUser
from tenants.services import config_version

pytestmark = [pytest.mark.api, pytest.mark.django_db]

PASSWORD = "s3cret-Pa55word"


def make_tenant(external_id: str = "t1", **fields: object) -> Tenant:
    values: dict[str, object] = {"db_host": "127.0.0.1", "db_database": "app"}
    values.update(fields)
    return Tenant.objects.create(external_id=external_id, **values)


def invalid_fields(instance: Tenant | TenantUser) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as info:
        instance.full_clean(exclude=["tenant"])
    return info.value.message_dict


# --- Tenant validation --------------------------------------------------------------------


@pytest.mark.parametrize("external_id", ["t1", "A_b-9", "x" * 63])
def test_valid_external_ids_pass(external_id: str) -> None:
    Tenant(external_id=external_id, db_host="h", db_database="d").full_clean()


@pytest.mark.parametrize("external_id", ["dev.t1", "", "x" * 64, "sp ace", "tenant/1", "t1\n"])
def test_bad_external_id_is_rejected(external_id: str) -> None:
    errors = invalid_fields(Tenant(external_id=external_id, db_host="h", db_database="d"))
    assert list(errors) == ["external_id"]


def test_external_id_error_explains_the_dot() -> None:
    errors = invalid_fields(Tenant(external_id="a.b", db_host="h", db_database="d"))
    assert "no dots" in errors["external_id"][0]


@pytest.mark.parametrize("port", [0, 65536, 100000])
def test_port_out_of_range_is_rejected(port: int) -> None:
    errors = invalid_fields(Tenant(external_id="t1", db_host="h", db_database="d", db_port=port))
    assert errors == {"db_port": ["must be a port number between 1 and 65535"]}


@pytest.mark.parametrize("port", [1, 5432, 65535])
def test_port_in_range_passes(port: int) -> None:
    Tenant(external_id="t1", db_host="h", db_database="d", db_port=port).full_clean()


@pytest.mark.parametrize(
    ("allow_list", "fragment"),
    [
        (["10.0.0.0/33"], "entry 0"),
        (["0.0.0.0/0", "not-an-ip"], "entry 1"),
        (["10.0.0.1/8"], "host bits set"),
        ([42], "must be a CIDR string"),
        ("0.0.0.0/0", "must be a list"),
        ([], "at least one CIDR"),
    ],
)
def test_bad_allow_list_is_rejected(allow_list: object, fragment: str) -> None:
    tenant = Tenant(external_id="t1", db_host="h", db_database="d", allow_list=allow_list)
    errors = invalid_fields(tenant)
    assert list(errors) == ["allow_list"]
    assert fragment in " ".join(errors["allow_list"])


def test_default_allow_list_admits_everyone_and_is_not_shared() -> None:
    first, second = Tenant(), Tenant()
    assert first.allow_list == ["0.0.0.0/0", "::/0"]
    first.allow_list.append("10.0.0.0/8")
    assert second.allow_list == ["0.0.0.0/0", "::/0"]


def test_ipv6_and_single_address_entries_pass() -> None:
    allow = ["2001:db8::/32", "192.168.1.7", "::1"]
    Tenant(external_id="t1", db_host="h", db_database="d", allow_list=allow).full_clean()


def test_pool_sizes_must_be_positive() -> None:
    tenant = Tenant(
        external_id="t1", db_host="h", db_database="d", default_pool_size=0, default_max_clients=0
    )
    errors = invalid_fields(tenant)
    assert errors["default_pool_size"] == ["must be a positive integer"]
    assert errors["default_max_clients"] == ["must be a positive integer"]


def test_blank_sni_hostnames_are_stored_as_null_and_do_not_collide() -> None:
    make_tenant("t1", sni_hostname="")
    make_tenant("t2", sni_hostname="")
    assert list(Tenant.objects.values_list("sni_hostname", flat=True)) == [None, None]


def test_sni_hostname_is_unique_when_set() -> None:
    make_tenant("t1", sni_hostname="db.example.com")
    duplicate = Tenant(
        external_id="t2", db_host="h", db_database="d", sni_hostname="db.example.com"
    )
    assert "sni_hostname" in invalid_fields(duplicate)


# --- TenantUser ---------------------------------------------------------------------------


def test_alias_defaults_to_db_user_on_save() -> None:
    user = TenantUser.objects.create(tenant=make_tenant(), db_user="app", db_password=PASSWORD)
    user.refresh_from_db()
    assert user.db_user_alias == "app"


def test_alias_defaults_to_db_user_in_clean() -> None:
    user = TenantUser(tenant=make_tenant(), db_user="app", db_password=PASSWORD)
    user.full_clean()
    assert user.db_user_alias == "app"


def test_explicit_alias_is_kept() -> None:
    tenant = make_tenant()
    user = TenantUser.objects.create(
        tenant=tenant, db_user_alias="web", db_user="app", db_password=PASSWORD
    )
    assert TenantUser.objects.get(pk=user.pk).db_user_alias == "web"


def test_user_pool_size_must_be_positive_but_may_be_empty() -> None:
    tenant = make_tenant()
    TenantUser(tenant=tenant, db_user="a", db_password="p", pool_size=None).full_clean()
    errors = invalid_fields(TenantUser(tenant=tenant, db_user="a", db_password="p", pool_size=0))
    assert errors == {"pool_size": ["must be a positive integer"]}


def test_mode_type_must_be_a_known_mode() -> None:
    user = TenantUser(tenant=make_tenant(), db_user="a", db_password="p", mode_type="statement")
    assert invalid_fields(user) == {"mode_type": ["must be one of transaction, session"]}


def test_same_alias_and_mode_twice_in_a_tenant_is_refused_by_the_database() -> None:
    tenant = make_tenant()
    TenantUser.objects.create(tenant=tenant, db_user="app", db_password="p")
    TenantUser.objects.create(tenant=tenant, db_user="app", db_password="p", mode_type="session")
    TenantUser.objects.create(tenant=make_tenant("t2"), db_user="app", db_password="p")
    with pytest.raises(IntegrityError), transaction.atomic():
        TenantUser.objects.create(tenant=tenant, db_user="app", db_password="other")


def test_repr_and_str_never_show_the_password() -> None:
    user = TenantUser.objects.create(tenant=make_tenant(), db_user="app", db_password=PASSWORD)
    for text in (repr(user), str(user), repr(TenantUser.objects.all()), repr(user.tenant)):
        assert PASSWORD not in text
    assert "app" in str(user)


def test_password_survives_a_database_round_trip() -> None:
    user = TenantUser.objects.create(tenant=make_tenant(), db_user="app", db_password=PASSWORD)
    assert TenantUser.objects.get(pk=user.pk).db_password == PASSWORD


# --- ConfigVersion ------------------------------------------------------------------------


def test_config_version_row_is_created_lazily() -> None:
    ConfigVersion.objects.all().delete()
    assert config_version() == 0
    assert ConfigVersion.objects.count() == 1


def test_every_orm_write_bumps_the_version() -> None:
    versions = [config_version()]
    tenant = make_tenant()
    versions.append(config_version())
    tenant.db_port = 6000
    tenant.save()
    versions.append(config_version())
    user = TenantUser.objects.create(tenant=tenant, db_user="app", db_password="p")
    versions.append(config_version())
    user.delete()
    versions.append(config_version())
    assert versions == sorted(set(versions)), versions  # strictly increasing


def test_deleting_a_tenant_bumps_the_version_for_it_and_its_users() -> None:
    tenant = make_tenant()
    TenantUser.objects.create(tenant=tenant, db_user="app", db_password="p")
    before = config_version()
    tenant.delete()
    assert config_version() > before
    assert TenantUser.objects.count() == 0


def test_queryset_delete_bumps_the_version() -> None:
    make_tenant("t1")
    make_tenant("t2")
    before = config_version()
    Tenant.objects.all().delete()
    assert config_version() >= before + 2


def test_a_rolled_back_change_rolls_back_its_bump() -> None:
    before = config_version()

    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        make_tenant()
        assert config_version() > before
        raise Abort
    assert config_version() == before
    assert not Tenant.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_in_autocommit_a_save_and_its_bump_commit_together() -> None:
    """A failure after the row is written (here: a later post_save receiver) undoes both."""

    def fail(**kwargs: object) -> None:
        raise RuntimeError("receiver failed")

    before = config_version()
    post_save.connect(fail, sender=Tenant, dispatch_uid="test-fail-after-bump")
    try:
        with pytest.raises(RuntimeError):
            make_tenant()
    finally:
        post_save.disconnect(sender=Tenant, dispatch_uid="test-fail-after-bump")
    assert not Tenant.objects.exists()
    assert config_version() == before


def test_config_version_is_one_query(django_assert_num_queries) -> None:
    config_version()
    with django_assert_num_queries(1):
        config_version()


# --- admin: write-only password -----------------------------------------------------------


def user_form_data(user: TenantUser, password: str) -> dict[str, object]:
    return {
        "tenant": user.tenant_id,
        "db_user_alias": user.db_user_alias,
        "db_user": user.db_user,
        "db_password": password,
        "mode_type": user.mode_type,
        "pool_checkout_timeout": user.pool_checkout_timeout,
    }


def test_admin_form_keeps_the_password_when_left_empty() -> None:
    user = TenantUser.objects.create(tenant=make_tenant(), db_user="app", db_password=PASSWORD)
    form = TenantUserForm(data=user_form_data(user, ""), instance=user)
    assert form.is_valid(), form.errors
    assert "db_password" not in form.changed_data
    form.save()
    assert TenantUser.objects.get(pk=user.pk).db_password == PASSWORD


def test_admin_form_changes_the_password_when_given() -> None:
    user = TenantUser.objects.create(tenant=make_tenant(), db_user="app", db_password=PASSWORD)
    form = TenantUserForm(data=user_form_data(user, "new-password"), instance=user)
    assert form.is_valid(), form.errors
    form.save()
    assert TenantUser.objects.get(pk=user.pk).db_password == "new-password"


def test_admin_form_requires_a_password_for_a_new_user() -> None:
    tenant = make_tenant()
    form = TenantUserForm(data={"tenant": tenant.pk, "db_user": "app", "mode_type": "session"})
    assert not form.is_valid()
    assert "db_password" in form.errors


def test_admin_change_page_never_renders_the_password(admin_client) -> None:
    tenant = make_tenant()
    TenantUser.objects.create(tenant=tenant, db_user="app", db_password=PASSWORD)
    response = admin_client.get(f"/admin/tenants/tenant/{tenant.pk}/change/")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'type="password"' in page
    assert PASSWORD not in page
