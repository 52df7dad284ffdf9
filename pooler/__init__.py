"""Greenvisor: the Postgres proxy (listeners, clients, pools, servers)."""

from pooler import hotpath

hotpath.activate()  # the compiled hot path, if built and current (pooler/hotpath.py)
__path__ = hotpath.package_path(__path__, __name__)
