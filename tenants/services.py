"""The only door through which tenant configuration changes reach the pooler.

Writers (applytenants, the admin, the REST API) validate and apply documents here; every
write bumps :class:`~tenants.models.ConfigVersion` in the same transaction, and the pooler
polls :func:`config_version` and reloads :func:`build_snapshot` when it changes.

Document shape (JSON or YAML)::

    {"tenants": [{"external_id": "t1", "db_host": "...", "db_database": "...",
                  "users": [{"db_user": "...", "db_password": "..."}]}]}

A document is declarative: a field it leaves out takes the model's default.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import models, transaction

from pooler.config import ConfigSnapshot, TenantConfig, UserConfig
from tenants.models import ConfigVersion, Tenant, TenantUser

logger = logging.getLogger(__name__)

_STR, _INT, _BOOL, _LIST, _OBJECT = "a string", "an integer", "true or false", "a list", "an object"


@dataclass(frozen=True)
class _Spec:
    """How one document key is type-checked before the model validates its value."""

    kind: str
    required: bool = False
    nullable: bool = False
    secret: bool = False


TENANT_FIELDS: dict[str, _Spec] = {
    "external_id": _Spec(_STR, required=True),
    "db_host": _Spec(_STR, required=True),
    "db_port": _Spec(_INT),
    "db_database": _Spec(_STR, required=True),
    "default_pool_size": _Spec(_INT),
    "default_max_clients": _Spec(_INT),
    "require_user": _Spec(_BOOL),
    "auth_query": _Spec(_STR, nullable=True),
    "enforce_ssl": _Spec(_BOOL),
    "sni_hostname": _Spec(_STR, nullable=True),
    "ip_version": _Spec(_STR),
    "allow_list": _Spec(_LIST),
    "client_idle_timeout": _Spec(_INT),
    "default_parameter_status": _Spec(_OBJECT),
    "session_state_policy": _Spec(_STR),
    "upstream_ssl": _Spec(_BOOL),
    "upstream_verify": _Spec(_STR),
    "upstream_tls_ca": _Spec(_STR, nullable=True),
}
USER_FIELDS: dict[str, _Spec] = {
    "db_user_alias": _Spec(_STR, nullable=True),
    "db_user": _Spec(_STR, required=True),
    "db_password": _Spec(_STR, required=True, secret=True),
    "pool_size": _Spec(_INT, nullable=True),
    "mode_type": _Spec(_STR),
    "max_clients": _Spec(_INT, nullable=True),
    "pool_checkout_timeout": _Spec(_INT),
    "is_manager": _Spec(_BOOL),
}
_DJANGO_MESSAGES = {"blank": "must not be empty", "null": "must not be null"}


class TenantConfigError(Exception):
    """An invalid tenant document; ``errors`` holds one line per problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


@dataclass
class ApplyResult:
    """What :func:`apply_tenants` did, by external_id."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deleted)


# --- reading the version and the snapshot -------------------------------------------------


def config_version() -> int:
    """The current configuration version (one SELECT by primary key)."""
    return ConfigVersion.current()


def bump_config_version() -> None:
    """For bulk writes that send no model signals (``QuerySet.update``, ``bulk_create``)."""
    ConfigVersion.bump()


def build_snapshot() -> ConfigSnapshot:
    """Every tenant with its users as frozen pooler dataclasses, at one version."""
    with transaction.atomic():
        # Version first: the rows read next are at least this new, so a change committed in
        # between shows up as a newer version at the next poll instead of being missed.
        version = config_version()
        tenants = list(Tenant.objects.prefetch_related("users"))
    return ConfigSnapshot(
        version=version, tenants={t.external_id: _tenant_config(t) for t in tenants}
    )


def _tenant_config(tenant: Tenant) -> TenantConfig:
    values = {name: getattr(tenant, name) for name in TENANT_FIELDS}
    values["allow_list"] = tuple(tenant.allow_list)
    values["default_parameter_status"] = dict(tenant.default_parameter_status)
    users = tuple(_user_config(user) for user in tenant.users.all())
    return TenantConfig(**values, users=users)


def _user_config(user: TenantUser) -> UserConfig:
    return UserConfig(**{name: getattr(user, name) for name in USER_FIELDS})


def tenant_to_document(tenant: Tenant) -> dict[str, Any]:
    """The tenant as an applytenants/API object. Never includes ``db_password``."""
    doc: dict[str, Any] = {name: getattr(tenant, name) for name in TENANT_FIELDS}
    doc["allow_list"] = list(tenant.allow_list)
    doc["default_parameter_status"] = dict(tenant.default_parameter_status)
    doc["users"] = [
        {name: getattr(user, name) for name, spec in USER_FIELDS.items() if not spec.secret}
        for user in tenant.users.all()
    ]
    return doc


# --- validating documents ----------------------------------------------------------------


def validate_tenants_document(doc: object) -> list[dict[str, Any]]:
    """Check a whole ``{"tenants": [...]}`` document; return its normalized tenants.

    Raises :class:`TenantConfigError` listing every problem found.
    """
    if not isinstance(doc, dict):
        got = _describe(doc, secret=False)
        raise TenantConfigError([f"document: must be an object with a 'tenants' list, got {got}"])
    errors = [_unknown_key("document.", key, ["tenants"]) for key in doc if key != "tenants"]
    items = doc.get("tenants")
    if not isinstance(items, list):
        got = "nothing" if items is None else _describe(items, secret=False)
        raise TenantConfigError([*errors, f"document: 'tenants' must be a list, got {got}"])
    tenants = []
    for index, item in enumerate(items):
        tenant, problems = _validate_tenant(item, f"tenants[{index}]")
        errors.extend(problems)
        if tenant is not None:
            tenants.append(tenant)
    errors.extend(_duplicate_tenants(items))
    errors.extend(_duplicate_sni_hostnames(tenants))
    if errors:
        raise TenantConfigError(errors)
    return tenants


def _validate_tenant(item: object, position: str) -> tuple[dict[str, Any] | None, list[str]]:
    """Normalize one tenant object; ``position`` labels it when its external_id is unusable."""
    if not isinstance(item, dict):
        return None, [f"{position}: must be an object, got {_describe(item, secret=False)}"]
    external_id = item.get("external_id")
    label = f"tenant {external_id!r}" if isinstance(external_id, str) and external_id else position
    problems: list[str] = []
    values = _typed_values(item, TENANT_FIELDS, "", problems, extra=("users",))
    tenant = Tenant(**values)
    problems.extend(_model_problems(tenant, TENANT_FIELDS, "", item, values))
    users = _validate_users(item.get("users"), "users" in item, problems)
    if problems:
        return None, [f"{label}: {problem}" for problem in problems]
    normalized = {name: getattr(tenant, name) for name in TENANT_FIELDS}
    normalized["users"] = users
    return normalized, []


def _validate_users(raw: object, present: bool, problems: list[str]) -> list[dict[str, Any]]:
    if not present:
        problems.append("users: required (an empty list is allowed)")
        return []
    if not isinstance(raw, list):
        problems.append(f"users: must be a list, got {_describe(raw, secret=False)}")
        return []
    users: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], int] = {}
    for index, item in enumerate(raw):
        where = f"users[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be an object, got {_describe(item, secret=False)}")
            continue
        user = _validate_user(item, f"{where}.", problems)
        if user is None:
            continue
        key = (user["db_user_alias"], user["mode_type"])
        if key in seen:
            problems.append(
                f"{where}: duplicate user (db_user_alias {key[0]!r}, mode_type {key[1]!r}), "
                f"also at users[{seen[key]}]"
            )
        seen.setdefault(key, index)
        users.append(user)
    return users


def _validate_user(item: dict, prefix: str, problems: list[str]) -> dict[str, Any] | None:
    before = len(problems)
    values = _typed_values(item, USER_FIELDS, prefix, problems)
    if values.get("db_user_alias") is None:
        values["db_user_alias"] = ""  # the model's clean() defaults it to db_user
    user = TenantUser(**values)
    problems.extend(_model_problems(user, USER_FIELDS, prefix, item, values))
    if len(problems) > before:
        return None
    return {name: getattr(user, name) for name in USER_FIELDS}


def _typed_values(
    item: Mapping[Any, Any],
    specs: Mapping[str, _Spec],
    prefix: str,
    problems: list[str],
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """The keys of ``item`` that exist and have the right JSON type; problems for the rest."""
    values: dict[str, Any] = {}
    for key in item:
        if key not in specs and key not in extra:
            problems.append(_unknown_key(prefix, key, [*specs, *extra]))
    for name, spec in specs.items():
        if name not in item:
            if spec.required:
                problems.append(f"{prefix}{name}: required")
            continue
        error = _type_error(spec, item[name])
        if error:
            problems.append(f"{prefix}{name}: {error}")
        else:
            values[name] = item[name]
    return values


def _type_error(spec: _Spec, value: object) -> str | None:
    if value is None:
        return None if spec.nullable else "must not be null"
    checks = {
        _STR: isinstance(value, str),
        _INT: isinstance(value, int) and not isinstance(value, bool),
        _BOOL: isinstance(value, bool),
        _LIST: isinstance(value, list),
        _OBJECT: isinstance(value, dict),
    }
    if checks[spec.kind]:
        return None
    return f"must be {spec.kind}, got {_describe(value, spec.secret)}"


def _model_problems(
    instance: models.Model,
    specs: Mapping[str, _Spec],
    prefix: str,
    item: Mapping[Any, Any],
    values: Mapping[str, Any],
) -> list[str]:
    """Run the model's own validators (the single source of truth) on an unsaved row.

    Fields already reported (missing, or of the wrong type) are not reported twice.
    """
    try:
        instance.full_clean(exclude=["tenant"], validate_unique=False, validate_constraints=False)
    except ValidationError as exc:
        reported = {n for n, s in specs.items() if n not in values and (n in item or s.required)}
        return _validation_problems(exc, instance, specs, prefix, skip=reported)
    return []


def _validation_problems(
    exc: ValidationError,
    instance: models.Model,
    specs: Mapping[str, _Spec],
    prefix: str,
    skip: Collection[str] = (),
) -> list[str]:
    """One line per Django error: ``<prefix><field>: <message>, got <value>``."""
    problems = []
    for name, errors in exc.error_dict.items():
        if name in skip:
            continue
        spec = specs.get(name)
        for error in errors:
            text = " ".join(error.messages)
            if error.message == models.Field.default_error_messages.get(error.code or ""):
                text = _DJANGO_MESSAGES.get(error.code or "", text)  # friendlier than Django's
            text = text[:1].lower() + text[1:].rstrip(".")
            if name == NON_FIELD_ERRORS or spec is None:
                problems.append(f"{_owner(prefix)}{text}")
                continue
            value = getattr(instance, name, None)
            hidden = spec.secret or value in (None, "") or isinstance(value, list | dict)
            got = "" if hidden else f", got {_describe(value, secret=False)}"
            problems.append(f"{prefix}{name}: {text}{got}")
    return problems


def _unknown_key(prefix: str, key: object, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{_owner(prefix)}unknown key {key!r}{hint}"


def _owner(prefix: str) -> str:
    """``users[0].`` (a field path prefix) -> ``users[0]: `` (a message prefix)."""
    return f"{prefix.removesuffix('.')}: " if prefix else ""


def _duplicate_tenants(items: list[Any]) -> list[str]:
    seen: dict[str, int] = {}
    problems = []
    for index, item in enumerate(items):
        external_id = item.get("external_id") if isinstance(item, dict) else None
        if not isinstance(external_id, str):
            continue
        if external_id in seen:
            problems.append(
                f"tenant {external_id!r}: external_id: duplicate, "
                f"at tenants[{seen[external_id]}] and tenants[{index}]"
            )
        seen.setdefault(external_id, index)
    return problems


def _duplicate_sni_hostnames(tenants: list[dict[str, Any]]) -> list[str]:
    owners: dict[str, str] = {}
    problems = []
    for tenant in tenants:
        sni = tenant["sni_hostname"]
        if sni is None:
            continue
        if sni in owners:
            problems.append(
                f"tenant {tenant['external_id']!r}: sni_hostname: {sni!r} is also used by "
                f"tenant {owners[sni]!r}"
            )
        owners.setdefault(sni, tenant["external_id"])
    return problems


def _describe(value: object, secret: bool) -> str:
    """A value for an error message; secrets are described by their type only."""
    if secret:
        return _json_type(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "an object", type(None): "null"})
    return names.get(type(value), type(value).__name__)


# --- writing -----------------------------------------------------------------------------


def apply_tenants(doc: object, *, prune: bool = False) -> ApplyResult:
    """Make the database match ``doc`` in one transaction; nothing is written on error.

    With ``prune`` tenants missing from the document are deleted. Re-applying the same
    document changes nothing and does not bump the config version.
    """
    tenants = validate_tenants_document(doc)
    result = ApplyResult()
    errors: list[str] = []
    with transaction.atomic():
        if prune:
            result.deleted = _delete_missing({t["external_id"] for t in tenants})
        for data in tenants:
            try:
                _, status = _write_tenant(data)
            except ValidationError as exc:
                label = f"tenant {data['external_id']!r}: "
                errors.extend(label + p for p in _db_problems(exc, data))
                continue
            getattr(result, status).append(data["external_id"])
        if errors:
            raise TenantConfigError(errors)  # rolls the whole transaction back
        transaction.on_commit(lambda: _log_result(result))  # not for a rolled-back dry run
    return result


def upsert_tenant(data: dict[str, Any]) -> tuple[Tenant, bool]:
    """Create or replace one tenant and its users (a document's tenant object).

    Returns the tenant and whether it was created. Raises :class:`TenantConfigError`.
    """
    normalized, problems = _validate_tenant(data, "tenant")
    if normalized is None:
        raise TenantConfigError(problems)
    with transaction.atomic():
        try:
            tenant, status = _write_tenant(normalized)
        except ValidationError as exc:
            label = f"tenant {normalized['external_id']!r}: "
            raise TenantConfigError([label + p for p in _db_problems(exc, normalized)]) from None
        if status != "unchanged":
            transaction.on_commit(lambda: logger.info("tenant %s %s", tenant.external_id, status))
    return tenant, status == "created"


def delete_tenant(external_id: str) -> bool:
    """Delete a tenant and its users; False if there was no such tenant."""
    with transaction.atomic():
        deleted, _ = Tenant.objects.filter(external_id=external_id).delete()
        if deleted:
            transaction.on_commit(lambda: logger.info("tenant %s deleted", external_id))
    return deleted > 0


def _delete_missing(keep: set[str]) -> list[str]:
    stale = list(Tenant.objects.exclude(external_id__in=keep).values_list("external_id", flat=True))
    if stale:
        Tenant.objects.filter(external_id__in=stale).delete()
    return sorted(stale)


def _write_tenant(data: dict[str, Any]) -> tuple[Tenant, str]:
    """Create or update one normalized tenant; status is created, updated or unchanged."""
    fields = {name: value for name, value in data.items() if name != "users"}
    tenant = Tenant.objects.select_for_update().filter(external_id=fields["external_id"]).first()
    if tenant is None:
        tenant = Tenant(**fields)
        tenant.full_clean()  # unique checks against the database (sni_hostname)
        tenant.save()
        for user in data["users"]:
            TenantUser.objects.create(tenant=tenant, **user)
        return tenant, "created"
    changed = _assign(tenant, fields)
    if changed:
        tenant.full_clean()
        tenant.save(update_fields=[*changed, "updated_at"])
    users_changed = _sync_users(tenant, data["users"])
    return tenant, "updated" if changed or users_changed else "unchanged"


def _sync_users(tenant: Tenant, users: list[dict[str, Any]]) -> bool:
    """Create, update and delete the tenant's users to match; True if anything changed."""
    existing = {(u.db_user_alias, u.mode_type): u for u in tenant.users.select_for_update()}
    wanted = {(u["db_user_alias"], u["mode_type"]): u for u in users}
    stale = [user.pk for key, user in existing.items() if key not in wanted]
    if stale:
        TenantUser.objects.filter(pk__in=stale).delete()
    changed = bool(stale)
    for key, values in wanted.items():
        user = existing.get(key)
        if user is None:
            TenantUser.objects.create(tenant=tenant, **values)
            changed = True
            continue
        fields = _assign(user, values)
        if fields:
            user.save(update_fields=[*fields, "updated_at"])
            changed = True
    return changed


def _assign(instance: models.Model, values: Mapping[str, Any]) -> list[str]:
    """Set the attributes that differ; return their names."""
    changed = []
    for name, value in values.items():
        if getattr(instance, name) != value:
            setattr(instance, name, value)
            changed.append(name)
    return changed


def _db_problems(exc: ValidationError, data: dict[str, Any]) -> list[str]:
    """Problems only the database can reveal (uniqueness against other tenants)."""
    fields = {name: value for name, value in data.items() if name != "users"}
    return _validation_problems(exc, Tenant(**fields), TENANT_FIELDS, "")


def _log_result(result: ApplyResult) -> None:
    for status in ("created", "updated", "deleted"):
        for external_id in getattr(result, status):
            logger.info("tenant %s %s", external_id, status)
