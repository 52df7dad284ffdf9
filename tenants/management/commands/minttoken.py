"""`manage.py minttoken [--secret-env API_JWT_SECRET] [--ttl 3600]`: print a bearer JWT."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.api.auth import (
    API_SECRET_ENV,
    METRICS_SECRET_ENV,
    SecretNotConfigured,
    mint_token,
    signing_secret,
)


class Command(BaseCommand):
    help = (
        "Print an HS256 JWT for the REST API (or /metrics with --secret-env "
        f"{METRICS_SECRET_ENV}), signed with the secret in that environment variable."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--secret-env",
            default=API_SECRET_ENV,
            help=f"environment variable holding the signing secret (default {API_SECRET_ENV})",
        )
        parser.add_argument(
            "--ttl", type=float, default=3600.0, help="seconds until the token expires (3600)"
        )
        parser.add_argument("--subject", default="operator", help="the sub claim (operator)")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["ttl"] <= 0:
            raise CommandError("--ttl must be a positive number of seconds")
        try:
            secret = signing_secret(opts["secret_env"])
        except SecretNotConfigured as exc:
            raise CommandError(str(exc.detail)) from None
        self.stdout.write(mint_token(secret, opts["ttl"], opts["subject"]))
