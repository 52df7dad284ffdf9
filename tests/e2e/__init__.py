"""End-to-end tests: real clients and a real browser against a running pooler."""
