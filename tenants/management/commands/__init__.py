"""The tenants app's manage.py commands (applytenants)."""
