"""Statements that leave state on a server session, which transaction pooling would leak.

In transaction mode the next transaction on a server may belong to another client, so a
session-level SET, SET ROLE, LISTEN, session advisory lock, SQL PREPARE, temporary table
that outlives the transaction, or WITH HOLD cursor would be seen by a stranger. This module
only recognises such statements in SQL text; the relay applies the tenant's policy (reset
the server before reuse, warn the client, or refuse the statement).

Recognition is lexical and errs on the side of "stateful": string literals, quoted
identifiers and comments are blanked out first so that a word inside them does not count.
"""

from __future__ import annotations

import re

POLICIES = ("reset", "warn", "error")

_BLANK = re.compile(
    rb"'(?:[^']|'')*'"  # string literals
    rb"|\"(?:[^\"]|\"\")*\""  # quoted identifiers
    rb"|--[^\n]*"  # line comments
    rb"|/\*.*?\*/"  # block comments (not nested)
    rb"|\$([A-Za-z_]*)\$.*?\$\1\$",  # dollar-quoted bodies
    re.DOTALL,
)

#: Cheap first look: none of these words, nothing to do (the usual case). Searched in the
#: lower-cased text: re.IGNORECASE on an alternation costs ~5x more per statement (it showed
#: as ~15% of the relay's Python on pgbench -S, whose texts all differ, so never cached).
_HINT = re.compile(rb"set|listen|prepare|advisory|temp|hold|session")
#: The same plus the words of _DROPS_STATEMENTS: one search decides most statements.
_ANY_HINT = re.compile(rb"set|listen|prepare|advisory|temp|hold|session|discard|deallocate")
#: Statements that drop server-side prepared statements (the pooler's cache must follow).
_DROPS_STATEMENTS = re.compile(rb"discard|deallocate", re.IGNORECASE)
#: Verdicts on recently seen statement texts (applications repeat the same few).
_SEEN: dict[bytes, tuple[str | None, bool]] = {}
_SEEN_LIMIT = 4096
_SEEN_MAX_TEXT = 4096
_NOTHING: tuple[str | None, bool] = (None, False)

#: Settings the pooler itself follows per client (ParameterStatus), so SET of them is safe.
_FOLLOWED = (
    rb"(?:time\s*zone|datestyle|intervalstyle|client_encoding|application_name"
    rb"|standard_conforming_strings|names)\b"
)

_RULES: tuple[tuple[str, re.Pattern[bytes]], ...] = tuple(
    (kind, re.compile(pattern, re.IGNORECASE | re.DOTALL))
    for kind, pattern in (
        ("SET ROLE", rb"(?:^|;)\s*(?:set\s+(?:session\s+)?role\b|set\s+session\s+authorization\b)"),
        (
            "SET",
            rb"(?:^|;)\s*(?:set|reset)\s+(?!local\b|transaction\b|constraints\b)"
            rb"(?:session\s+)?(?!" + _FOLLOWED + rb")\w",
        ),
        ("SET", rb"\bset_config\s*\([^)]*,\s*false\s*\)"),
        ("LISTEN", rb"(?:^|;)\s*listen\b"),
        ("advisory lock", rb"\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\("),
        ("PREPARE", rb"(?:^|;)\s*prepare\s+\w"),
        (
            "temporary table",
            rb"(?:^|;)\s*create\s+(?:(?:global|local)\s+)?temp(?:orary)?\s+"
            rb"(?:table|view|sequence)\b(?![^;]*\bon\s+commit\s+drop\b)",
        ),
        ("WITH HOLD cursor", rb"(?:^|;)\s*declare\b[^;]*\bwith\s+hold\b"),
    )
)


def stateful_kind(sql: bytes) -> str | None:
    """What kind of session state ``sql`` leaves behind, or None."""
    if _HINT.search(sql.lower()) is None:
        return None
    text = _BLANK.sub(b"''", sql)
    for kind, pattern in _RULES:
        if pattern.search(text):
            return kind
    return None


def classify(sql: bytes) -> tuple[str | None, bool]:
    """(:func:`stateful_kind`, whether ``sql`` may drop prepared statements), remembered for
    short texts so that a repeated statement costs one dict lookup."""
    verdict = _SEEN.get(sql)
    if verdict is None:
        if _ANY_HINT.search(sql.lower()) is None:
            verdict = _NOTHING
        else:
            verdict = (stateful_kind(sql), _DROPS_STATEMENTS.search(sql) is not None)
        if len(sql) <= _SEEN_MAX_TEXT:
            if len(_SEEN) >= _SEEN_LIMIT:
                _SEEN.clear()
            _SEEN[sql] = verdict
    return verdict


#: Verdicts by the raw body of a Query or a Parse (one dict per type: the same bytes mean
#: different SQL in each), so the usual repeated message costs one copy and one lookup.
SEEN_BODY: dict[int, dict[bytes, tuple[str | None, bool]]] = {0x51: {}, 0x50: {}}


def classify_message(
    view: bytes | memoryview, msg_type: int, start: int, end: int
) -> tuple[str | None, bool]:
    """:func:`classify` of the SQL of the whole Query or Parse whose body is
    ``view[start:end]``."""
    body = bytes(view[start:end])
    seen = SEEN_BODY[msg_type]
    verdict = seen.get(body)
    if verdict is None:
        verdict = classify(sql_text(memoryview(body), msg_type, 0, len(body)))
        if len(body) <= _SEEN_MAX_TEXT:
            if len(seen) >= _SEEN_LIMIT:
                seen.clear()
            seen[body] = verdict
    return verdict


def refusal_sql(kind: str) -> bytes:
    """A statement that makes the server itself refuse, so errors and transaction state
    behave exactly as for any failed statement (the error-policy response)."""
    message = (
        f"{kind} is not allowed in transaction pooling mode for this tenant: its session "
        "state would leak to other clients; use session mode (port 5432), SET LOCAL, "
        "transaction-level advisory locks or ON COMMIT DROP instead"
    )
    quoted = message.replace("'", "''")
    return (
        f"DO $greenvisor$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', "
        f"MESSAGE = '{quoted}'; END$greenvisor$"
    ).encode()


def sql_text(view: memoryview, msg_type: int, start: int, end: int) -> bytes:
    """The SQL of a whole Query or Parse whose body is ``view[start:end]`` (a Parse's
    statement name is skipped; the terminating NUL is dropped)."""
    body = bytes(view[start:end])
    if msg_type == 0x50:  # Parse: name NUL query NUL ...
        name_end = body.find(b"\0")
        sql_end = body.find(b"\0", name_end + 1)
        return body[name_end + 1 : sql_end if sql_end >= 0 else len(body)]
    return body[:-1] if body.endswith(b"\0") else body


def sql_messages(view: bytes | memoryview, n: int, start: int) -> list[tuple[int, int, int]]:
    """(type, sql start, end) of each whole Query or Parse in ``view[start:n]``; the SQL of
    a Parse starts after its statement name. Stops at the first incomplete message."""
    found = []
    pos = start
    while n - pos >= 5:
        msg_type = view[pos]
        end = pos + 1 + int.from_bytes(view[pos + 1 : pos + 5], "big")
        if end > n or end < pos + 5:
            break
        if msg_type == 0x51:  # Query
            found.append((msg_type, pos + 5, end - 1))
        elif msg_type == 0x50:  # Parse: name NUL query NUL ...
            name_end = bytes(view[pos + 5 : min(end, pos + 5 + 1024)]).find(b"\0")
            if name_end >= 0:
                sql_start = pos + 5 + name_end + 1
                sql_end = bytes(view[sql_start:end]).find(b"\0")
                if sql_end >= 0:
                    found.append((msg_type, sql_start, sql_start + sql_end))
        pos = end
    return found
