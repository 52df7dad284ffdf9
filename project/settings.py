"""Django settings for Greenvisor, read from the environment (12-factor style)."""

import os
from pathlib import Path
from typing import Any

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


# Development default only: set DJANGO_SECRET_KEY in any real deployment.
SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "django-insecure-greenvisor-dev-key-do-not-use-in-production"
)
DEBUG = _env_bool("DJANGO_DEBUG", False)
# The HTTP API is served to the operator's own network (like Supavisor's port 4000), not to
# the public internet, so any Host header is accepted by default. Restrict it with a
# comma-separated DJANGO_ALLOWED_HOSTS when the API is reachable from elsewhere.
ALLOWED_HOSTS = _env_list("DJANGO_ALLOWED_HOSTS", ["*"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_prometheus",
    "tenants",
    "pooler",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _database_config() -> dict[str, Any]:
    """DATABASE_URL if set, else the embedded SQLite file in GREENVISOR_DATA_DIR (or BASE_DIR)."""
    data_dir = Path(os.environ.get("GREENVISOR_DATA_DIR") or BASE_DIR)
    default_url = "sqlite:///" + str(data_dir / "greenvisor.sqlite3")
    url = os.environ.get("DATABASE_URL") or default_url
    if url.startswith("sqlite"):
        return dict(dj_database_url.parse(url))
    return dict(dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True))


DATABASES = {"default": _database_config()}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        name: {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False}
        for name in ("greenvisor", "pooler", "tenants")
    },
}

# The REST API (tenants/api): JSON only, every route behind a bearer JWT signed with
# API_JWT_SECRET (read per request; unset -> the routes answer 503 saying so). Health and
# Swagger UI opt out in their views.
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": ["tenants.api.auth.BearerJWTAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "tenants.api.views.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Greenvisor API",
    "DESCRIPTION": (
        "Tenant management for the Greenvisor Postgres connection pooler (Supavisor's "
        "routes). Send `Authorization: Bearer <JWT>`: HS256, signed with API_JWT_SECRET, "
        "with an `exp` claim; mint one with `python manage.py minttoken`. Passwords are "
        "accepted, stored encrypted and never returned."
    ),
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PUBLIC": False,
    "SERVE_AUTHENTICATION": ["tenants.api.auth.BearerJWTAuthentication"],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"persistAuthorization": True, "deepLinking": True},
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "tenants.api.schema.strip_trailing_slashes",
    ],
    "ENUM_NAME_OVERRIDES": {"PoolModeEnum": "tenants.models.TenantUser.MODES"},
}

# /metrics: open unless METRICS_JWT_SECRET is set (then a bearer JWT signed with it is
# needed, like Supavisor). Greenvisor's own collector (pooler.metrics) is registered by
# runpooler on the default registry next to django-prometheus's HTTP and DB metrics.
PROMETHEUS_EXPORT_MIGRATIONS = False  # no per-app migration gauges (a DB query at start)
