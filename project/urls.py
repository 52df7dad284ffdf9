"""URL routes: the admin and the Prometheus /metrics endpoint (the REST API comes later)."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("django_prometheus.urls")),
]
