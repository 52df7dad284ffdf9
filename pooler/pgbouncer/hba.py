"""``auth_type = hba``: PgBouncer's subset of pg_hba.conf (``auth_hba_file``), sans-IO.

Theory of operation
-------------------
:func:`parse` turns the text of an HBA file into :class:`HbaRule` objects, or raises
:class:`HbaError` naming ``file:line`` (start-up stops, a reload keeps the running rules).
:meth:`HbaFile.method` answers, for one login, the first rule that matches (connection
type, database, user, client address) -- PgBouncer's src/hba.c, like Postgres: first match
wins, no fall-through. The caller (:mod:`pooler.pgbouncer.dropin`) turns the method into an
``auth_type`` for :mod:`pooler.pgbouncer.clientauth`, or refuses the login.

What a line can say (PgBouncer's subset):

* type: ``local`` (parsed; Greenvisor listens on TCP only, so it never matches), ``host``,
  ``hostssl`` (TLS clients only), ``hostnossl`` (clear-text clients only).
* database and user: comma lists of names; ``all``; ``sameuser`` (database = user name);
  ``@file`` (names read from that file, relative to the HBA file; whitespace or commas);
  a quoted ``"all"`` is the name, not the keyword. ``replication`` never matches (no
  replication connections through a pooler). ``+group`` is refused (roles are not known).
* address (not for ``local``): ``all``, an IPv4/IPv6 CIDR (``127.0.0.1/32``) or an address
  followed by a mask column (``127.0.0.1 255.255.255.255``). Host names, ``samehost`` and
  ``samenet`` are refused.
* method: ``trust``, ``reject``, ``md5``, ``scram-sha-256``, ``password`` (= ``plain``),
  ``peer`` (``local`` only, so it never matches). ``cert`` and anything else are refused,
  as are options after the method.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CONN_TYPES = ("local", "host", "hostssl", "hostnossl")
#: HBA method -> the auth_type of pooler.pgbouncer.clientauth (None: reject).
METHODS: dict[str, str | None] = {
    "trust": "trust",
    "reject": None,
    "md5": "md5",
    "scram-sha-256": "scram-sha-256",
    "password": "plain",
    "peer": "trust",  # only valid on local lines, which never match
}
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Token = tuple[str, bool]  # (text, quoted)


class HbaError(ValueError):
    """The HBA file cannot be used: ``file:line: problem``."""

    def __init__(self, file: str, line: int, problem: str) -> None:
        super().__init__(f"{file}:{line}: {problem}" if line else f"{file}: {problem}")
        self.file = file
        self.line = line
        self.problem = problem


Fail = Callable[[str], HbaError]


@dataclass(frozen=True, slots=True)
class NameList:
    """A database or user column: ``all``, ``sameuser`` and names."""

    all: bool = False
    sameuser: bool = False
    names: frozenset[str] = frozenset()

    def matches(self, name: str, user: str) -> bool:
        return self.all or name in self.names or (self.sameuser and name == user)


@dataclass(frozen=True, slots=True)
class HbaRule:
    line: int
    conn_type: str
    databases: NameList
    users: NameList
    network: Network | None  # None: all addresses (or a local line)
    method: str

    def matches(self, database: str, user: str, address: str | None, tls: bool) -> bool:
        if self.conn_type == "local" or address is None:
            return self.conn_type == "local" and address is None
        if (self.conn_type == "hostssl" and not tls) or (self.conn_type == "hostnossl" and tls):
            return False
        if self.network is not None:
            try:
                ip = ipaddress.ip_address(address.split("%", 1)[0])
            except ValueError:
                return False
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped if self.network.version == 4 else ip
            if ip.version != self.network.version or ip not in self.network:
                return False
        return self.databases.matches(database, user) and self.users.matches(user, user)


@dataclass(frozen=True, slots=True)
class HbaFile:
    path: str
    rules: tuple[HbaRule, ...] = ()

    def find(self, database: str, user: str, address: str | None, tls: bool) -> HbaRule | None:
        """The first rule matching this login, or None."""
        for rule in self.rules:
            if rule.matches(database, user, address, tls):
                return rule
        return None


def refusal(rule: HbaRule | None, database: str, user: str, address: str | None, tls: bool) -> str:
    """Postgres's words for a login no rule allows (28000)."""
    host = f'host "{address}"' if address is not None else "local connection"
    encryption = "SSL encryption" if tls else "no encryption"
    what = f'{host}, user "{user}", database "{database}", {encryption}'
    if rule is None:
        return f"no pg_hba.conf entry for {what}"
    return f"pg_hba.conf rejects connection for {what}"


def load_hba(path: str | Path) -> HbaFile:
    """Read and parse an HBA file; HbaError (file:line) if unusable."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise HbaError(str(path), 0, f"cannot read: {exc.strerror}") from None
    return parse(text, str(path))


def parse(text: str, path: str = "pg_hba.conf") -> HbaFile:
    rules = []
    for number, raw in enumerate(text.splitlines(), 1):
        fields = tokenize(raw, path, number)
        if fields:
            rules.append(_rule(fields, path, number))
    return HbaFile(path, tuple(rules))


def tokenize(line: str, path: str, number: int) -> list[list[Token]]:
    """Columns of one line, each a list of comma-separated tokens; ``#`` starts a comment."""
    fields: list[list[Token]] = []
    current: list[Token] = []
    i, n = 0, len(line)
    pending_comma = False
    while i < n:
        ch = line[i]
        if ch == "#":
            break
        if ch.isspace():
            i += 1
            continue
        if ch == ",":  # "a ,b": the comma still joins the list
            if not current:
                raise HbaError(path, number, "a comma at the start of a column")
            pending_comma = True
            i += 1
            continue
        text, quoted = "", False
        while i < n and not line[i].isspace() and line[i] not in ",#":
            if line[i] == '"':
                end = line.find('"', i + 1)
                if end < 0:
                    raise HbaError(path, number, "unterminated quoted string")
                text += line[i + 1 : end]
                quoted = True
                i = end + 1
            else:
                text += line[i]
                i += 1
        if not pending_comma and current:
            fields.append(current)
            current = []
        current.append((text, quoted))
        pending_comma = i < n and line[i] == ","
        if pending_comma:
            i += 1
    if pending_comma:
        raise HbaError(path, number, "a comma at the end of a line: a list item is missing")
    if current:
        fields.append(current)
    return fields


def _rule(fields: list[list[Token]], path: str, number: int) -> HbaRule:
    def fail(problem: str) -> HbaError:
        return HbaError(path, number, problem)

    kind = _single(fields[0], "connection type", fail)
    if kind not in CONN_TYPES:
        raise fail(f"invalid connection type {kind!r}: use one of {', '.join(CONN_TYPES)}")
    need = 4 if kind == "local" else 5
    if len(fields) < need:
        raise fail(f"end of line before the {_COLUMNS[len(fields)]} column")
    databases = _names(fields[1], "database", path, number, fail)
    users = _names(fields[2], "user", path, number, fail)
    rest = fields[3:]
    network: Network | None = None
    if kind != "local":
        network, rest = _address(rest, fail)
        if not rest:
            raise fail("end of line before the method column")
    method = _single(rest[0], "method", fail)
    if method == "cert":
        raise fail("method cert is not supported by Greenvisor: use scram-sha-256 or md5")
    if method not in METHODS:
        raise fail(f"invalid or unsupported method {method!r}: use one of {', '.join(METHODS)}")
    if method == "peer" and kind != "local":
        raise fail("method peer is only for local lines")
    if len(rest) > 1:
        raise fail(f"options after the method are not supported: {rest[1][0][0]!r}")
    return HbaRule(number, kind, databases, users, network, method)


_COLUMNS = ("type", "database", "user", "address", "method")


def _single(tokens: list[Token], what: str, fail: Fail) -> str:
    if len(tokens) != 1:
        raise fail(f"the {what} column takes one value, not a list")
    return tokens[0][0]


def _names(tokens: list[Token], what: str, path: str, number: int, fail: Fail) -> NameList:
    everyone = sameuser = False
    names: set[str] = set()
    for text, quoted in tokens:
        if not text:
            raise fail(f"empty {what} name")
        if quoted:
            names.add(text)
        elif text == "all":
            everyone = True
        elif text == "sameuser" and what == "database":
            sameuser = True
        elif text in ("replication", "samerole", "samegroup") and what == "database":
            if text != "replication":
                raise fail(f"database keyword {text} is not supported")
        elif text.startswith("+"):
            raise fail(f"group membership ({text}) is not supported: list the user names")
        elif text.startswith("@"):
            names.update(_include(text[1:], path, number))
        else:
            names.add(text)
    return NameList(everyone, sameuser, frozenset(names))


def _include(name: str, path: str, number: int) -> set[str]:
    """The names of an ``@file``: whitespace or comma separated, ``#`` comments."""
    if not name:
        raise HbaError(path, number, "@ without a file name")
    file = Path(path).parent / name
    try:
        text = file.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise HbaError(path, number, f"cannot read @{name}: {exc.strerror}") from None
    names: set[str] = set()
    for inner, raw in enumerate(text.splitlines(), 1):
        for tokens in tokenize(raw, str(file), inner):
            for text_, _quoted in tokens:
                if text_.startswith("@"):
                    raise HbaError(str(file), inner, "nested @file is not supported")
                names.add(text_)
    return names


def _address(rest: list[list[Token]], fail: Fail) -> tuple[Network | None, list[list[Token]]]:
    text = _single(rest[0], "address", fail)
    if text == "all":
        return None, rest[1:]
    if text in ("samehost", "samenet"):
        raise fail(f"address {text} is not supported: give a CIDR")
    if "/" in text:
        try:
            return ipaddress.ip_network(text, strict=False), rest[1:]
        except ValueError:
            raise fail(f"invalid CIDR address {text!r}") from None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise fail(
            f"invalid IP address {text!r} (host names are not supported): use a CIDR"
        ) from None
    if len(rest) < 2:
        raise fail("end of line before the mask column")
    mask_text = _single(rest[1], "mask", fail)
    try:
        mask = ipaddress.ip_address(mask_text)
        network = ipaddress.ip_network(f"{ip}/{mask}", strict=False)
    except ValueError:
        raise fail(f"invalid IP mask {mask_text!r}") from None
    if mask.version != ip.version:
        raise fail("the IP address and mask do not match in family")
    return network, rest[2:]
