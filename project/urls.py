"""URL routes: the REST API, its schema and Swagger UI, the admin, /metrics, static files."""

from django.contrib import admin
from django.contrib.staticfiles.views import serve as serve_static
from django.urls import include, path, re_path

from tenants.api import views as api_views

urlpatterns = [
    path("api/", include("tenants.api.urls")),
    re_path(r"^swaggerui/?$", api_views.SwaggerUIView.as_view(), name="swaggerui"),
    path("admin/", admin.site.urls),
    path("metrics", api_views.metrics_view, name="prometheus-django-metrics"),
    # runpooler serves the admin's and Swagger UI's files itself (no CDN, no collectstatic).
    re_path(r"^static/(?P<path>.*)$", serve_static, {"insecure": True}),
]
