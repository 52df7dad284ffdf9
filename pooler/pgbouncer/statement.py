"""Statement pool mode: the server goes back after every statement; transactions are refused.

Theory of operation
-------------------
A statement-mode client is a transaction-mode :class:`~pooler.client.Client` (the server is
released at every ReadyForQuery 'I' with nothing outstanding, i.e. after each statement
outside a transaction block) plus PgBouncer's refusal: when a reply ends in a
ReadyForQuery whose status is 'T' or 'E' (the client opened a transaction block, e.g.
``BEGIN``, or an extended-query Sync inside one), that ReadyForQuery is not forwarded; the
client gets PgBouncer's ``FATAL 08P01 transaction blocks not allowed in statement pooling
mode`` and is disconnected, and the server, now inside a transaction, is closed, never
reused. Everything before that ReadyForQuery (e.g. BEGIN's CommandComplete) is forwarded,
as PgBouncer does.

The check lives in the writes towards the client, which run right after the framing scan
has noted the ReadyForQuery status (``Exchange.tx_status``): only statement-mode clients
pay for it; the shared relay in client.py is unchanged.
"""

from __future__ import annotations

from typing import Any

from pooler.client import Client
from pooler.protocol.framing import TX_IDLE

REFUSAL = "transaction blocks not allowed in statement pooling mode"
_READY_HEADER = b"Z\0\0\0\x05"


def _ends_in_ready(data: Any) -> bool:
    return len(data) >= 6 and bytes(data[-6:-1]) == _READY_HEADER


class StatementClient(Client):
    """A client of a statement-mode pool."""

    __slots__ = ()

    def _in_block(self, data: Any) -> bool:
        ex = self.ex
        return (
            self.server is not None
            and ex.tx_status != TX_IDLE
            and ex.at_rest()
            and _ends_in_ready(data)
        )

    def write(self, data: Any) -> bool:
        if self._in_block(data):
            if len(data) > 6:
                super().write(data[:-6])
            self._refuse()
            return True
        return super().write(data)

    def write_many(self, parts: list) -> bool:
        if parts and self._in_block(parts[-1]):
            last = parts[-1][:-6]
            rest = parts[:-1] + ([last] if len(last) else [])
            if rest:
                super().write_many(rest)
            self._refuse()
            return True
        return super().write_many(parts)

    def _refuse(self) -> None:
        server = self.server
        assert server is not None
        self.server = None
        server.stop_reading()
        self.pool.discard(server, "a transaction block was opened in statement pooling mode")
        self.fatal("08P01", REFUSAL)
