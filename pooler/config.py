"""Plain, immutable tenant configuration as the pooler sees it (no Django import).

The tenants app turns its ORM rows into these objects (``tenants.services.build_snapshot``);
the pooler only ever reads a :class:`ConfigSnapshot`, swapped atomically when the
configuration version changes. Nothing here touches the database or the network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

MODE_TRANSACTION = "transaction"
MODE_SESSION = "session"
MODES = (MODE_TRANSACTION, MODE_SESSION)


@dataclass(frozen=True, slots=True)
class UserConfig:
    """One tenant user: how clients log in to Greenvisor and how Greenvisor logs in upstream."""

    db_user_alias: str
    db_user: str
    db_password: str = field(repr=False)
    mode_type: str = MODE_TRANSACTION
    pool_size: int | None = None  # None: the tenant's default_pool_size
    max_clients: int | None = None  # None: the tenant's default_max_clients
    pool_checkout_timeout: int = 60000  # milliseconds
    is_manager: bool = False


@dataclass(frozen=True, slots=True)
class TenantConfig:
    """One tenant: its upstream database and its users."""

    external_id: str
    db_host: str
    db_port: int = 5432
    db_database: str = "postgres"
    default_pool_size: int = 15
    default_max_clients: int = 1000
    require_user: bool = True
    auth_query: str | None = None
    enforce_ssl: bool = False
    sni_hostname: str | None = None
    ip_version: str = "auto"  # auto | v4 | v6
    allow_list: tuple[str, ...] = ()
    client_idle_timeout: int = 0  # seconds, 0 = off
    default_parameter_status: Mapping[str, str] = field(default_factory=dict)
    users: tuple[UserConfig, ...] = ()
    session_state_policy: str = "reset"  # transaction mode: reset | warn | error
    upstream_ssl: bool = False  # log in to db_host over TLS
    upstream_verify: str = "none"  # none | peer (CA chain and host name, as verify-full)
    upstream_tls_ca: str | None = field(default=None, repr=False)  # PEM; None: system CAs
    #: ``users`` by (alias, mode), and by (alias, "") the first of any mode: built from
    #: ``users`` once per configuration version, read by every login (find_user).
    user_index: Mapping[tuple[str, str], UserConfig] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        index: dict[tuple[str, str], UserConfig] = {}
        for user in self.users:
            index.setdefault((user.db_user_alias, user.mode_type), user)
            index.setdefault((user.db_user_alias, ""), user)
        object.__setattr__(self, "user_index", index)

    def find_user(self, alias: str, mode: str) -> UserConfig | None:
        """The user a client named ``alias`` logs in as on a ``mode`` listener.

        A user row of the same mode wins; otherwise a row of the other mode with the same
        alias supplies the credentials (the listener still decides the pool mode).
        """
        index = self.user_index
        return index.get((alias, mode)) or index.get((alias, ""))


@dataclass(frozen=True, slots=True)
class ConfigSnapshot:
    """Every tenant at one configuration version."""

    version: int = 0
    tenants: Mapping[str, TenantConfig] = field(default_factory=dict)
    #: external_id by lower-cased sni_hostname, built from ``tenants``.
    by_sni: Mapping[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)
    #: Some tenant has a client_idle_timeout (else the janitor need not look at idle clients).
    idle_timeouts: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tenants = self.tenants.values()
        index = {t.sni_hostname.lower(): t.external_id for t in tenants if t.sni_hostname}
        object.__setattr__(self, "by_sni", index)
        object.__setattr__(self, "idle_timeouts", any(t.client_idle_timeout for t in tenants))

    def tenant(self, external_id: str) -> TenantConfig | None:
        return self.tenants.get(external_id)

    def tenant_by_sni(self, server_name: str | None) -> TenantConfig | None:
        """The tenant whose sni_hostname a TLS client asked for, if any."""
        if not server_name:
            return None
        external_id = self.by_sni.get(server_name)
        return self.tenants.get(external_id) if external_id is not None else None
