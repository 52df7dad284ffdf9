"""pytest-django tests of the tenants app (models, services, applytenants)."""
