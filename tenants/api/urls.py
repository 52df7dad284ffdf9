"""Routes of the REST API (mounted at /api/); a trailing slash is accepted everywhere."""

from django.urls import re_path

from tenants.api import views

_ID = r"(?P<external_id>[^/]+)"

urlpatterns = [
    re_path(r"^health/?$", views.HealthView.as_view(), name="api-health"),
    re_path(r"^openapi/?$", views.SchemaView.as_view(), name="api-openapi"),
    re_path(r"^tenants/?$", views.TenantListView.as_view(), name="api-tenants"),
    re_path(rf"^tenants/{_ID}/?$", views.TenantDetailView.as_view(), name="api-tenant"),
    re_path(
        rf"^tenants/{_ID}/terminate/?$",
        views.TenantTerminateView.as_view(),
        name="api-tenant-terminate",
    ),
    re_path(rf"^tenants/{_ID}/pause/?$", views.TenantPauseView.as_view(), name="api-tenant-pause"),
    re_path(
        rf"^tenants/{_ID}/resume/?$", views.TenantResumeView.as_view(), name="api-tenant-resume"
    ),
    re_path(
        rf"^tenants/{_ID}/reconnect/?$",
        views.TenantReconnectView.as_view(),
        name="api-tenant-reconnect",
    ),
    re_path(
        rf"^tenants/{_ID}/clients/?$", views.TenantClientsView.as_view(), name="api-tenant-clients"
    ),
    re_path(r"^(?P<rest>.*)$", views.api_not_found, name="api-not-found"),
]
