"""The login's fast paths (issue 4 target 6, cheaper logins) agree with the general code
they skip: whole-message reads, startup parameters, SASLInitialResponse, SCRAM messages,
backend keys and the cached greeting. Each case that does not fit a fast path must still
get the general path's answer, errors included."""

from __future__ import annotations

import base64
import struct
from typing import Any

import pytest

from pooler import login, netio
from pooler.auth.scram import ScramClient, ScramServer, make_secret
from pooler.config import TenantConfig, UserConfig
from pooler.loginio import READ_SIZE, LoginSocket
from pooler.node import Node, NodeSettings
from pooler.protocol import parsers
from pooler.protocol.errors import AuthError, ProtocolError
from pooler.protocol.params import settings_id
from pooler.protocol.startup import StartupMessage, parse_startup_packet

pytestmark = pytest.mark.unit


class ChunkSocket:
    """recv() hands out the given chunks one per call, then EOF."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.asked: list[int] = []

    def recv(self, size: int) -> bytes:
        self.asked.append(size)
        return self.chunks.pop(0)[:size] if self.chunks else b""


def packet(params: bytes, version: int = 196608) -> bytes:
    body = struct.pack("!i", version) + params
    return struct.pack("!i", len(body) + 4) + body


# -- LoginSocket.message ---------------------------------------------------------------------


def test_message_takes_a_whole_message_in_one_read_and_keeps_the_rest() -> None:
    first, second = packet(b"user\0a.t\0\0"), b"p\0\0\0\x08abcd"
    sock = LoginSocket(ChunkSocket(first + second))
    assert sock.message(0, 8, 10000) == first
    assert sock.buffered == len(second)
    assert netio.read_message(sock, 8192) == (ord("p"), b"abcd")
    assert sock.buffered == 0


@pytest.mark.parametrize(
    "data",
    [
        b"p\0\0",  # header cut short
        b"p\0\0\0\x09abc",  # body to come
        b"p\0\0\0\x03",  # length below 4
        b"p\0\0\x40\x00" + b"x" * 20,  # length above the limit
    ],
)
def test_message_declines_without_consuming(data: bytes) -> None:
    sock = LoginSocket(ChunkSocket(data))
    assert sock.message(1, 4, 100) is None
    assert sock.take() == data


def test_read_message_errors_are_the_general_paths() -> None:
    with pytest.raises(ProtocolError, match="invalid message length 3"):
        netio.read_message(LoginSocket(ChunkSocket(b"p\0\0\0\x03")), 8192)
    with pytest.raises(ProtocolError, match="invalid message length 20"):
        netio.read_message(LoginSocket(ChunkSocket(b"p\0\0\0\x14" + b"x" * 16)), 8)
    with pytest.raises(netio.ConnectionClosed):
        netio.read_message(LoginSocket(ChunkSocket()), 8192)


def test_a_message_in_pieces_is_still_read_whole() -> None:
    raw = ChunkSocket(b"p\0\0", b"\0\x08ab", b"cd")
    assert netio.read_message(LoginSocket(raw), 8192) == (ord("p"), b"abcd")
    assert raw.asked == [READ_SIZE, READ_SIZE, READ_SIZE]


# -- startup parameters ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (b"user\0a.t\0database\0db\0\0", {"user": "a.t", "database": "db"}),
        ("user\0\u00e9l\u00e8ve.t\0x\0\u2603\0\0".encode(), {"user": "élève.t", "x": "☃"}),
        (b"user\0a.t\0options\0\0\0", {"user": "a.t", "options": ""}),
    ],
)
def test_startup_parameters(params: bytes, expected: dict[str, str]) -> None:
    startup = parse_startup_packet(packet(params))
    assert isinstance(startup, StartupMessage) and startup.params == expected
    assert list(startup.params) == list(expected)


@pytest.mark.parametrize(
    ("params", "error"),
    [
        (b"user\0a.t\0user\0b.t\0\0", 'parameter "user" given twice'),
        (b"user\0a.t\0\0x\0\0", "empty parameter name"),
        (b"user\0a.t\0x\0\0", "has no value"),
        (b"user\0a.t\0x\xff\0y\0\0", "parameter name is not valid UTF-8"),
        (b"user\0a.t\0x\0\xc3\0\0", "parameter value is not valid UTF-8"),
    ],
)
def test_bad_startup_parameters_keep_their_messages(params: bytes, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        parse_startup_packet(packet(params))


def test_oversized_startup_packet_is_still_refused() -> None:
    big = packet(b"user\0a.t\0x\0" + b"y" * 10000 + b"\0\0")
    with pytest.raises(ProtocolError, match="must be 8 to 10000 bytes"):
        parse_startup_packet(big)


def test_protocol_options_and_settings() -> None:
    plain = StartupMessage(3, 0, {"user": "a.t", "application_name": "x"})
    assert plain.protocol_options == {}
    assert plain.settings() == {"application_name": "x"}
    pq = StartupMessage(3, 0, {"user": "a.t", "_pq_.x": "1", "a_pq": "2"})
    assert pq.protocol_options == {"_pq_.x": "1"}
    opts = StartupMessage(3, 0, {"user": "a.t", "options": "-c search_path=s", "TimeZone": "UTC"})
    assert opts.settings() == {"search_path": "s", "TimeZone": "UTC"}


# -- SASLInitialResponse ---------------------------------------------------------------------


def sasl_initial(mechanism: bytes, length: int, data: bytes) -> bytes:
    return mechanism + b"\0" + struct.pack("!i", length) + data


def test_sasl_initial_response() -> None:
    assert parsers.parse_sasl_initial_response(sasl_initial(b"SCRAM-SHA-256", 3, b"n,,")) == (
        "SCRAM-SHA-256",
        b"n,,",
    )
    assert parsers.parse_sasl_initial_response(sasl_initial(b"SCRAM-SHA-256", -1, b"")) == (
        "SCRAM-SHA-256",
        b"",
    )
    with pytest.raises(ProtocolError, match="data length 9 but 3"):
        parsers.parse_sasl_initial_response(sasl_initial(b"SCRAM-SHA-256", 9, b"n,,"))
    with pytest.raises(ProtocolError, match="unexpected bytes after the data"):
        parsers.parse_sasl_initial_response(sasl_initial(b"SCRAM-SHA-256", 1, b"n,,"))


# -- SCRAM -----------------------------------------------------------------------------------

SECRET = make_secret("correct horse", iterations=64)


def started(first: bytes = b"n,,n=,r=clientnonce") -> tuple[ScramServer, str]:
    server = ScramServer(SECRET)
    server_first = server.client_first(first).decode()
    return server, server_first.split(",")[0][2:]


def test_plain_and_general_client_first_agree() -> None:
    salt = base64.b64encode(SECRET.salt).decode()
    for first in (b"n,,n=,r=abc", b"n,,n=someone,r=abc", b"y,,n=,r=abc", b"n,,n=,r=abc,x=ext"):
        server = ScramServer(SECRET, nonce="SERVER")
        assert server.client_first(first) == f"r=abcSERVER,s={salt},i=64".encode(), first


@pytest.mark.parametrize(
    "first",
    [b"n,,n=,r=a,b", b"n,,n=,r=", b"n,,r=abc", b"n,a=x,n=,r=abc", b"m=x,n=,r=abc", b"n,,m=1"],
)
def test_malformed_client_first_is_refused(first: bytes) -> None:
    with pytest.raises(AuthError):
        ScramServer(SECRET).client_first(first)


def test_the_right_proof_passes_and_a_wrong_one_fails() -> None:
    for password, ok in (("correct horse", True), ("wrong", False)):
        client, server = ScramClient(password), ScramServer(SECRET)
        final = client.server_first(server.client_first(client.client_first()))
        if ok:
            client.server_final(server.client_final(final))
            assert client.done and server.done and server.client_key is not None
        else:
            with pytest.raises(AuthError, match="proof does not match"):
                server.client_final(final)


@pytest.mark.parametrize(
    ("mangle", "error"),
    [
        (lambda f: f.replace("c=biws", "c=eSws"), "channel binding data does not match"),
        (lambda f: f.replace(",r=", ",r=x"), "nonce does not match"),
        # an extension is allowed, but the client's proof did not cover it
        (lambda f: f.replace(",p=", ",x=ext,p="), "proof does not match"),
        (lambda f: f.replace(",p=", ",1=bad,p="), "invalid attribute"),
        (lambda f: f + ",z=1", "not valid base64"),
        (lambda f: f.split(",p=")[0], "has no proof"),
        (lambda f: f[:-2] + "!=", "not valid base64"),
        (lambda f: f.split(",p=")[0] + ",p=AAAA", "proof is 3 bytes"),
    ],
)
def test_client_final_off_the_fast_path_gets_the_general_checks(mangle: Any, error: str) -> None:
    client, server = ScramClient("correct horse"), ScramServer(SECRET)
    final = client.server_first(server.client_first(client.client_first())).decode()
    with pytest.raises(AuthError, match=error):
        server.client_final(mangle(final).encode())
    assert not server.done


def test_generated_server_nonces_differ_and_given_ones_are_checked() -> None:
    assert started()[1] != started()[1]
    with pytest.raises(ValueError):
        ScramServer(SECRET, nonce="a,b")


# -- backend keys and the greeting -----------------------------------------------------------


def test_backend_keys_are_in_range_and_unique() -> None:
    node = Node(NodeSettings())
    seen = set()
    for _ in range(2000):
        pid, key = node.new_backend_key()
        assert 1 <= pid <= 0x7FFFFFFE and len(key) == 4
        seen.add(pid)
    assert len(seen) > 1990
    node.pid_prefix = 5 << 21
    pid, key = node.new_backend_key()
    assert pid >> 21 == 5 and pid & 0x1FFFFF and len(key) == 4


def test_cached_greeting_matches_welcome_and_settings_are_a_copy() -> None:
    server_params = {"client_encoding": "UTF8", "TimeZone": "UTC", "server_version": "15"}
    requested = {"application_name": "app"}
    params = (("user", "a.t"), ("application_name", "app"))
    expected = login.expected_settings(requested, server_params)
    for _ in range(2):
        settings, greeting, sid = login.greeting_for(params, requested, server_params)
        assert settings == expected
        assert sid == settings_id(expected)
        assert greeting + b"K" in login.welcome(server_params, expected, 7, b"1234")
        settings["TimeZone"] = "changed by the client"
    # Another pool (its own copy of its first server's parameters): its own entry.
    other = dict(server_params, TimeZone="Europe/Paris")
    settings, _, sid = login.greeting_for(params, requested, other)
    assert settings["TimeZone"] == "Europe/Paris" and sid == settings_id(settings)
    settings, _, _ = login.greeting_for(params, requested, server_params)
    assert settings["TimeZone"] == "UTC"


def test_greeting_cache_is_by_pool_dict_and_survives_its_id_being_reused() -> None:
    """Keyed by the identity of the pool's parameters: a dict freed and another made at the
    same address must not get the first one's greeting."""
    params = (("user", "a.t"),)
    first = {"client_encoding": "UTF8", "TimeZone": "UTC"}
    settings, _, _ = login.greeting_for(params, {}, first)
    assert settings["TimeZone"] == "UTC"
    login._WELCOMES.clear()  # the entry (and its reference) gone: first may be freed
    stale_key = (params, id(first))
    del first
    for _ in range(100):  # a new dict often lands at the freed address
        second = {"client_encoding": "UTF8", "TimeZone": "Asia/Tokyo"}
        login._WELCOMES[stale_key] = ({"TimeZone": "UTC"}, b"stale", 1, None)  # as if stale
        settings, greeting, _ = login.greeting_for(params, {}, second)
        assert settings["TimeZone"] == "Asia/Tokyo" and greeting != b"stale"


def test_backend_key_draws_outside_the_range_are_drawn_again(monkeypatch: Any) -> None:
    draws = [b"\xff\xff\xff\xffkey1", b"\x80\x00\x00\x00key2", b"\x00\x00\x00\x07key3"]
    monkeypatch.setattr("pooler.node.os.urandom", lambda n: draws.pop(0))
    assert Node(NodeSettings()).new_backend_key() == (7, b"key3")
    assert draws == []


# -- SSLRequest answered 'N' (no certificate) ------------------------------------------------


class NoTLSSocket(ChunkSocket):
    """A client socket after an SSLRequest: what was sent back, and whether anything
    peeked at the kernel (the peek would find bytes there, as if more were on the way)."""

    def __init__(self, *chunks: bytes) -> None:
        super().__init__(*chunks)
        self.sent = b""
        self.peeked = False

    def recv(self, size: int, flags: int = 0) -> bytes:
        if flags:
            self.peeked = True
            return b"x"
        return super().recv(size)

    def sendall(self, data: bytes) -> None:
        self.sent += data


SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def test_ssl_request_answered_n_reads_the_next_packet_without_a_kernel_peek() -> None:
    startup = packet(b"user\0a.t\0database\0app\0\0")
    raw = NoTLSSocket(SSL_REQUEST, startup)  # the startup packet comes after our answer
    got, sock = login._read_startup(LoginSocket(raw), Node(NodeSettings()))
    assert raw.sent == b"N"
    assert isinstance(got, StartupMessage) and got.params["database"] == "app"
    assert not raw.peeked  # plaintext either way: as Postgres, only read-ahead counts


def test_bytes_read_with_an_ssl_request_are_refused_before_n() -> None:
    startup = packet(b"user\0a.t\0database\0app\0\0")
    raw = NoTLSSocket(SSL_REQUEST + startup)  # in the same packet (CVE-2021-3935)
    with pytest.raises(ProtocolError, match="unencrypted data after SSL request"):
        login._read_startup(LoginSocket(raw), Node(NodeSettings()))
    assert raw.sent == b""  # refused before any answer


# -- the tenant's user, looked up in compiled code -----------------------------------------


def test_user_of_agrees_with_find_user() -> None:
    def user(alias: str, db_user: str, mode: str) -> UserConfig:
        return UserConfig(db_user_alias=alias, db_user=db_user, db_password="pw", mode_type=mode)

    users = (
        user("app", "app_tx", "transaction"),
        user("app", "app_session", "session"),
        user("app", "app_tx_2", "transaction"),  # a second row: the first one wins
        user("admin", "admin", "transaction"),  # one mode only: supplies the other's too
        user("stmt", "stmt", "statement"),
    )
    tenant = TenantConfig(external_id="t", db_host="h", users=users)
    for alias in ("app", "admin", "stmt", "nobody"):
        for mode in ("transaction", "session", "statement"):
            assert login._user_of(tenant, alias, mode) is tenant.find_user(alias, mode)
    assert login._user_of(tenant, "app", "session") is users[1]
    assert login._user_of(tenant, "admin", "session") is users[3]
    assert login._user_of(tenant, "nobody", "session") is None
