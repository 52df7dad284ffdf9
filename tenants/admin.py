"""Django admin for tenants and their users (passwords write-only) and a live pools page."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from pooler import runtime
from tenants.models import ConfigVersion, Tenant, TenantUser

MASK = "\u2022" * 8
POOL_COLUMNS = [
    "database", "user", "mode", "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_login",
    "pool_size", "maxwait",
]  # fmt: skip


class TenantUserForm(forms.ModelForm):
    """Never shows the stored password; leaving the field empty keeps it."""

    db_password = forms.CharField(
        label="Password",
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Leave empty to keep the current password.",
    )

    class Meta:
        model = TenantUser
        fields = "__all__"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.initial.pop("db_password", None)  # not even in memory for rendering/diffing

    def clean_db_password(self) -> str:
        password: str = self.cleaned_data.get("db_password") or ""
        if password:
            return password
        if self.instance.pk is not None:
            return self.instance.db_password
        raise forms.ValidationError("A new user needs a password.")


class TenantUserInline(admin.StackedInline):
    model = TenantUser
    form = TenantUserForm
    extra = 0
    fields = [
        ("db_user_alias", "db_user", "stored_password", "db_password"),
        ("mode_type", "pool_size", "max_clients", "pool_checkout_timeout", "is_manager"),
    ]
    readonly_fields = ["stored_password"]

    @admin.display(description="Stored password")
    def stored_password(self, obj: TenantUser | None) -> str:
        """Masked: says a password is set (stored encrypted), never shows it."""
        if obj is None or obj.pk is None:
            return "-"
        return f"{MASK} (encrypted)"


def _cell(value: Any) -> Any:
    return f"{value:.3f}" if isinstance(value, float) else value


def live_pools(external_id: str) -> tuple[bool, list[dict[str, Any]], int]:
    """(pooler running here?, the tenant's pool rows, its client count) from pooler.runtime."""
    node = runtime.get_node()
    if node is None:
        return False, [], 0
    rows = [pool.snapshot() for pool in node.pools_of(external_id)]
    rows.sort(key=lambda row: (row["database"], row["user"], row["mode"]))
    clients = sum(1 for c in list(node.clients.values()) if c.pool.key.tenant == external_id)
    return True, rows, clients


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    inlines = [TenantUserInline]
    list_display = ["external_id", "db_host", "db_port", "db_database", "updated_at"]
    search_fields = ["external_id", "db_host", "db_database"]
    list_filter = ["ip_version", "enforce_ssl", "require_user"]
    readonly_fields = ["inserted_at", "updated_at", "pools_link"]

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(self.pools_view)
        extra = [path("<path:object_id>/pools/", view, name="tenants_tenant_pools")]
        return extra + super().get_urls()

    @admin.display(description="Live pools")
    def pools_link(self, obj: Tenant | None) -> str:
        if obj is None or obj.pk is None:
            return "-"
        url = reverse("admin:tenants_tenant_pools", args=[obj.pk])
        return format_html('<a href="{}">live pool numbers of {}</a>', url, obj.external_id)

    def pools_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Read-only page: the tenant's pools on this node (PgBouncer's SHOW POOLS columns)."""
        tenant = get_object_or_404(Tenant, pk=object_id)
        if not self.has_view_permission(request, tenant):
            raise PermissionDenied
        running, rows, clients = live_pools(tenant.external_id)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Live pools of {tenant.external_id}",
            "opts": self.model._meta,
            "original": tenant,
            "running": running,
            "columns": POOL_COLUMNS,
            "rows": [[_cell(row[c]) for c in POOL_COLUMNS] for row in rows],
            "clients": clients,
        }
        return TemplateResponse(request, "admin/tenants/tenant/pools.html", context)


@admin.register(ConfigVersion)
class ConfigVersionAdmin(admin.ModelAdmin):
    """Read-only: the version only ever moves through tenant and user changes."""

    list_display = ["version", "updated_at"]

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False
