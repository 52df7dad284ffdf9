"""Helpers for integration tests: a real Postgres cluster, the pooler as a subprocess, ports."""
