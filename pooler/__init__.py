"""Greenvisor: the Postgres proxy (listeners, clients, pools, servers)."""
