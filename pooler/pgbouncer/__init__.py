"""PgBouncer drop-in: pgbouncer.ini and auth_file readers (no sockets, no Django)."""
