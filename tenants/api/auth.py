"""Bearer JWT authentication (HS256, ``exp`` required) for the REST API and /metrics.

The secret comes from the environment on every request (API_JWT_SECRET for the API,
METRICS_JWT_SECRET for /metrics), so nothing is open when it is unset: the API answers 503
saying what to set. Tokens are minted by ``python manage.py minttoken``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import status
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import APIException, AuthenticationFailed
from rest_framework.request import Request

API_SECRET_ENV = "API_JWT_SECRET"
METRICS_SECRET_ENV = "METRICS_JWT_SECRET"
ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32
REALM = "greenvisor"
MINT_HINT = "mint one with `python manage.py minttoken`"


class SecretNotConfigured(APIException):
    """The signing secret is unset or too weak: the protected routes are switched off."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "auth_not_configured"


class TokenError(Exception):
    """A token that must be refused; the message says why and what to do."""


@dataclass(frozen=True)
class TokenUser:
    """The caller of an API request: whoever holds a valid token. Carries its claims."""

    claims: dict[str, Any] = field(default_factory=dict)
    is_authenticated: bool = True
    is_anonymous: bool = False
    is_staff: bool = False

    @property
    def username(self) -> str:
        return str(self.claims.get("sub") or "api-token")

    def __str__(self) -> str:
        return self.username


def signing_secret(env_var: str) -> str:
    """The secret in ``env_var``; :class:`SecretNotConfigured` if unset or shorter than 32 bytes."""
    secret = os.environ.get(env_var, "")
    if not secret:
        raise SecretNotConfigured(
            f"{env_var} is not set: set it to a random secret of at least {MIN_SECRET_BYTES} "
            f"bytes (e.g. `openssl rand -hex 32`); the routes it protects answer 503 until then"
        )
    if len(secret.encode("utf-8", errors="surrogatepass")) < MIN_SECRET_BYTES:
        raise SecretNotConfigured(
            f"{env_var} is too short to sign HS256 tokens safely: set it to at least "
            f"{MIN_SECRET_BYTES} random bytes (e.g. `openssl rand -hex 32`); the routes it "
            "protects answer 503 until then"
        )
    return secret


def mint_token(secret: str, ttl: float, subject: str = "operator") -> str:
    """A signed HS256 token valid for ``ttl`` seconds."""
    now = int(time.time())
    claims = {"sub": subject, "iat": now, "exp": now + int(ttl)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def decode_token(token: str, secret: str, env_var: str) -> dict[str, Any]:
    """The claims of a valid token; :class:`TokenError` saying why otherwise."""
    try:
        return dict(jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["exp"]}))
    except jwt.ExpiredSignatureError:
        raise TokenError(f"the token has expired: {MINT_HINT}") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(f"the token has no '{exc.claim}' claim (required): {MINT_HINT}") from None
    except jwt.InvalidSignatureError:
        raise TokenError(
            f"the token's signature does not verify with {env_var}: {MINT_HINT} with the "
            "same secret"
        ) from None
    except jwt.InvalidAlgorithmError:
        raise TokenError(f"the token must be signed with {ALGORITHM}: {MINT_HINT}") from None
    except jwt.ImmatureSignatureError:
        raise TokenError("the token is not valid yet (nbf or iat in the future)") from None
    except jwt.InvalidTokenError:
        raise TokenError(f"the bearer value is not a valid JWT: {MINT_HINT}") from None


def bearer_token(header: bytes) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; :class:`TokenError` otherwise."""
    if not header:
        raise TokenError(
            f"authentication required: send `Authorization: Bearer <JWT>` signed (HS256) with "
            f"the server's secret and with an exp claim; {MINT_HINT}"
        )
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() != b"bearer":
        raise TokenError("the Authorization header must be `Bearer <JWT>` (one token, no spaces)")
    try:
        return parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise TokenError("the bearer token must be ASCII (a JWT)") from None


def verify_header(header: bytes, env_var: str) -> dict[str, Any]:
    """Claims of the bearer token in ``header`` checked against the secret in ``env_var``."""
    secret = signing_secret(env_var)
    return decode_token(bearer_token(header), secret, env_var)


def www_authenticate() -> str:
    """The WWW-Authenticate header value of a 401 (RFC 6750)."""
    return f'Bearer realm="{REALM}"'


class BearerJWTAuthentication(BaseAuthentication):
    """DRF authentication: every request must carry a valid token (none is anonymous)."""

    env_var = API_SECRET_ENV

    def authenticate(self, request: Request) -> tuple[TokenUser, dict[str, Any]]:
        try:
            claims = verify_header(get_authorization_header(request), self.env_var)
        except TokenError as exc:
            raise AuthenticationFailed(str(exc)) from None
        return TokenUser(claims), claims

    def authenticate_header(self, request: Request) -> str:
        return www_authenticate()


class BearerJWTScheme(OpenApiAuthenticationExtension):
    """How drf-spectacular documents (and Swagger UI sends) the bearer token."""

    target_class = BearerJWTAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": f"HS256 JWT signed with {API_SECRET_ENV}, exp required; {MINT_HINT}",
        }
