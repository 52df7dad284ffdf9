"""Protocol and authentication errors, each carrying the SQLSTATE the client will be sent."""

from __future__ import annotations

PROTOCOL_VIOLATION = "08P01"
CONNECTION_FAILURE = "08006"
FEATURE_NOT_SUPPORTED = "0A000"
INVALID_AUTHORIZATION = "28000"
INVALID_PASSWORD = "28P01"
INVALID_CATALOG_NAME = "3D000"
SYNTAX_ERROR = "42601"
INSUFFICIENT_PRIVILEGE = "42501"
TOO_MANY_CONNECTIONS = "53300"
QUERY_CANCELED = "57014"
ADMIN_SHUTDOWN = "57P01"
CANNOT_CONNECT_NOW = "57P03"
INTERNAL_ERROR = "XX000"


class PgError(Exception):
    """Base of the errors that end in an ErrorResponse: ``message`` is shown to the client."""

    default_sqlstate = INTERNAL_ERROR

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate or self.default_sqlstate

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, {self.sqlstate!r})"


class ProtocolError(PgError):
    """A peer broke the wire protocol (bad length, layout, encoding or version)."""

    default_sqlstate = PROTOCOL_VIOLATION

    def __init__(self, message: str, sqlstate: str = PROTOCOL_VIOLATION) -> None:
        super().__init__(message, sqlstate)


class AuthError(PgError):
    """An authentication exchange failed (wrong password) or was malformed."""

    default_sqlstate = INVALID_PASSWORD

    def __init__(self, message: str, sqlstate: str = INVALID_PASSWORD) -> None:
        super().__init__(message, sqlstate)
