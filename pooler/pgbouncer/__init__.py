"""PgBouncer drop-in: pgbouncer.ini and auth_file readers (no sockets, no Django)."""

from pooler import hotpath

__path__ = hotpath.package_path(__path__, __name__)  # compiled modules first, if active
