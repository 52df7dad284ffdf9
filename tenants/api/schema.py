"""OpenAPI schema extras: Supavisor's paths are documented without a trailing slash."""

from __future__ import annotations

from typing import Any


def strip_trailing_slashes(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: ``/api/tenants/`` -> ``/api/tenants``.

    The routes accept both forms; the schema shows the one Supavisor's clients use.
    """
    paths = result.get("paths", {})
    result["paths"] = {
        (name.rstrip("/") if name != "/" else name): item for name, item in paths.items()
    }
    return result
