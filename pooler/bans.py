"""Who may try to log in: per-tenant allow lists, bans after repeated failures, a delay floor.

Theory of operation
-------------------
Three defences run at login, after the startup packet names the tenant and before any
password is checked:

* **Allow list.** A tenant's ``allow_list`` is a list of CIDRs; an empty list, or one
  holding ``0.0.0.0/0`` and ``::/0``, admits every address. A client outside it is refused
  with 28000 and a message like Postgres's ``no pg_hba.conf entry``: being explicit helps
  the tenant's own users, and only says that the tenant exists (tenant ids are not secret:
  they are part of every user name). Parsed networks are cached per list.
* **Bans.** :class:`BanList` counts failed logins per (tenant id, client IP) within a
  sliding window (``ban_failures`` within ``ban_window`` seconds); once the count is
  reached, the pair is refused for ``ban_time`` seconds without looking at any password,
  so guessing stops. Unknown tenants are counted too (no difference an attacker could
  probe). The table is an LRU bounded to ``max_entries`` pairs: a flood of new addresses
  can evict old entries, never exhaust memory.
* **Delay floor.** :func:`pad` sleeps (a gevent sleep: other greenlets run meanwhile) until
  a fixed time after the authentication started, so a wrong password, an unknown user and
  an unknown tenant take the same time and get the same message.

Nothing here touches sockets; the login greenlet calls it.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import gevent

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=1024)
def _networks(allow_list: tuple[str, ...]) -> tuple[Network, ...]:
    """Parsed CIDRs; an entry that does not parse admits nobody (fail closed)."""
    networks: list[Network] = []
    for entry in allow_list:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            continue
    return tuple(networks)


@functools.lru_cache(maxsize=4096)
def address_allowed(allow_list: tuple[str, ...], address: str) -> bool:
    """True when ``address`` (an IP string, maybe IPv4-mapped IPv6) is in ``allow_list``.

    Cached: a pure function of its arguments, and parsing the address and every network
    on each login showed in login profiles (clients mostly come back from the same hosts)."""
    if not allow_list:
        return True
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in _networks(allow_list))


def not_allowed_message(address: str, user: str, tenant: str) -> str:
    return (
        f'no allow_list entry for host "{address}", user "{user}", tenant "{tenant}": '
        "ask the tenant's administrator to add this address to the tenant's allow_list"
    )


@dataclass(slots=True)
class _Entry:
    failures: list[float]  # monotonic times of the failures within the window
    banned_until: float = 0.0


class BanList:
    """Failed-login counters per (tenant, address), bounded in size (LRU eviction)."""

    def __init__(
        self, failures: int, window: float, ban_time: float, max_entries: int = 100_000
    ) -> None:
        self.failures = failures  # 0 turns banning off
        self.window = window
        self.ban_time = ban_time
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def banned_for(self, key: tuple[str, str], now: float | None = None) -> float:
        """Seconds the pair stays banned (0.0 when it may try)."""
        entry = self._entries.get(key)
        if entry is None or not entry.banned_until:
            return 0.0
        now = time.monotonic() if now is None else now
        left = entry.banned_until - now
        if left <= 0:
            entry.banned_until = 0.0
            entry.failures.clear()
            return 0.0
        return left

    def failed(self, key: tuple[str, str], now: float | None = None) -> bool:
        """Count one failure; True when it starts a ban."""
        if self.failures <= 0:
            return False
        now = time.monotonic() if now is None else now
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry([])
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        horizon = now - self.window
        entry.failures = [t for t in entry.failures if t > horizon][-self.failures :]
        entry.failures.append(now)
        if len(entry.failures) >= self.failures and not entry.banned_until:
            entry.banned_until = now + self.ban_time
            return True
        return False


def ban_message(tenant: str, address: str, seconds: float) -> str:
    return (
        f'too many failed logins for tenant "{tenant}" from host "{address}": '
        f"try again in {max(1, round(seconds))} s with the right credentials"
    )


def pad(started: float, floor: float) -> None:
    """Sleep (cooperatively) until ``floor`` seconds after ``started`` (monotonic)."""
    left = started + floor - time.monotonic()
    if left > 0:
        gevent.sleep(left)


def client_ip(addr: object) -> str:
    """The IP of a listener's peer address ((host, port, ...) tuple), else its text."""
    if isinstance(addr, tuple) and addr:
        return str(addr[0])
    return str(addr)
