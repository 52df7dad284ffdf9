"""Load and comparison harness: Postgres direct vs PgBouncer vs Greenvisor (never run by pytest)."""
