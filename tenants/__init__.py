"""Tenant management: models, admin, and the services that feed config to the pooler."""
