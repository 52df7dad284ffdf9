"""Django admin for tenants and their users (passwords are write-only)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin

from tenants.models import ConfigVersion, Tenant, TenantUser


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
        ("db_user_alias", "db_user", "db_password"),
        ("mode_type", "pool_size", "max_clients", "pool_checkout_timeout", "is_manager"),
    ]


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    inlines = [TenantUserInline]
    list_display = ["external_id", "db_host", "db_port", "db_database", "updated_at"]
    search_fields = ["external_id", "db_host", "db_database"]
    list_filter = ["ip_version", "enforce_ssl", "require_user"]
    readonly_fields = ["inserted_at", "updated_at"]


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
