"""`manage.py runpooler`: wire settings, config sync, listeners and housekeeping; no logic."""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import sys
import time
from functools import partial
from typing import Any

import gevent
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser
from gevent.event import Event

from pooler import client as client_module
from pooler import hotpath, hub, metrics, runtime
from pooler import pool as pool_module
from pooler.cluster.options import add_cluster_arguments, join_cluster
from pooler.config import MODE_SESSION, MODE_TRANSACTION
from pooler.configsync import ConfigSync
from pooler.listener import (
    DEFER_ACCEPT_SECONDS,
    ListenError,
    http_listener,
    protocol_listener,
    start_all,
    stop_all,
)
from pooler.login import handle_client
from pooler.node import SHUTDOWN_MESSAGE, Node, NodeSettings

log = logging.getLogger("pooler")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        sys.stderr.write(
            f"greenvisor: environment variable {name}={value!r} is not a port "
            "number; unset it or give a number\n"
        )
        raise SystemExit(2) from None


def _seconds(text: str) -> int:
    """A whole number of seconds, 0 or more (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a whole number of seconds, 0 for off (env TCP_DEFER_ACCEPT too)"
        )
    return value


def _db_call(func: Any) -> Any:
    """Run an ORM function from the config thread, recovering from a dropped connection."""
    from django.db import close_old_connections

    def call() -> Any:
        try:
            return func()
        except Exception:
            close_old_connections()
            raise

    return call


class Command(BaseCommand):
    help = "Run the Greenvisor pooler: Postgres listeners (transaction and session mode) and HTTP."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--listen",
            default=os.environ.get("LISTEN_ADDR", "0.0.0.0"),
            help="address to bind every listener to (env LISTEN_ADDR)",
        )
        parser.add_argument(
            "--proxy-port-transaction",
            type=int,
            default=_env_int("PROXY_PORT_TRANSACTION", 6543),
            help="transaction-mode port (env PROXY_PORT_TRANSACTION, 6543)",
        )
        parser.add_argument(
            "--proxy-port-session",
            type=int,
            default=_env_int("PROXY_PORT_SESSION", 5432),
            help="session-mode port (env PROXY_PORT_SESSION, 5432)",
        )
        parser.add_argument(
            "--http-port",
            type=int,
            default=_env_int("PORT", 4000),
            help="HTTP port: admin, API, metrics (env PORT, 4000)",
        )
        parser.add_argument(
            "--tcp-defer-accept",
            type=_seconds,
            # A string: argparse checks it with _seconds like a value given on the command line.
            default=os.environ.get("TCP_DEFER_ACCEPT") or str(DEFER_ACCEPT_SECONDS),
            metavar="SECONDS",
            help="TCP_DEFER_ACCEPT on the Postgres listeners: a connection is accepted once "
            "the client has sent something, or after this long (0 = off; env "
            f"TCP_DEFER_ACCEPT, {DEFER_ACCEPT_SECONDS} as PgBouncer's tcp_defer_accept)",
        )
        parser.add_argument(
            "--client-auth",
            choices=["scram-sha-256", "md5"],
            default=os.environ.get("CLIENT_AUTH", "scram-sha-256"),
            help="how clients authenticate to Greenvisor (env CLIENT_AUTH)",
        )
        parser.add_argument(
            "--client-login-timeout",
            type=float,
            default=15.0,
            help="seconds a client has to finish logging in",
        )
        parser.add_argument(
            "--server-connect-timeout",
            type=float,
            default=10.0,
            help="seconds to connect and log in to a tenant database",
        )
        parser.add_argument(
            "--server-reset-timeout",
            type=float,
            default=10.0,
            help="seconds a server has to answer its reset query (DISCARD ALL, ROLLBACK, "
            "server_reset_query) or check query before it is closed and its query cancelled",
        )
        parser.add_argument(
            "--server-lifetime",
            type=float,
            default=3600.0,
            help="close server connections older than this many seconds",
        )
        parser.add_argument(
            "--server-idle-timeout",
            type=float,
            default=600.0,
            help="close server connections idle longer than this",
        )
        parser.add_argument(
            "--max-prepared-statements",
            type=int,
            default=200,
            help="named prepared statements kept per server connection in transaction mode "
            "(0 turns protocol-level prepared statement support off)",
        )
        parser.add_argument(
            "--query-wait-timeout",
            type=float,
            default=30.0,
            help="longest a query waits for a server connection, e.g. while the tenant "
            "database restarts (caps each user's pool_checkout_timeout)",
        )
        parser.add_argument(
            "--idle-transaction-timeout",
            type=float,
            default=0.0,
            help="close clients idle inside a transaction this long (0 = off)",
        )
        parser.add_argument(
            "--shutdown-timeout",
            type=float,
            default=30.0,
            help="on SIGTERM, how long running transactions may take before clients are cut",
        )
        parser.add_argument(
            "--config-poll-interval",
            type=float,
            default=0.5,
            help="seconds between checks for tenant configuration changes",
        )
        parser.add_argument(
            "--tls-cert",
            default=os.environ.get("TLS_CERT") or None,
            help="PEM certificate (chain) for TLS to clients; with --tls-key, SSLRequest is "
            "answered 'S' (env TLS_CERT)",
        )
        parser.add_argument(
            "--tls-key",
            default=os.environ.get("TLS_KEY") or None,
            help="PEM private key of --tls-cert (env TLS_KEY)",
        )
        parser.add_argument(
            "--ban-failures",
            type=int,
            default=10,
            help="failed logins per (tenant, client IP) within --ban-window that ban the "
            "pair (0 = never ban)",
        )
        parser.add_argument(
            "--ban-window", type=float, default=60.0, help="seconds failed logins are counted"
        )
        parser.add_argument(
            "--ban-time", type=float, default=60.0, help="seconds a banned pair is refused"
        )
        parser.add_argument(
            "--auth-failure-delay",
            type=float,
            default=0.2,
            help="a failed login is answered no sooner than this many seconds after the "
            "password exchange began (same time whatever failed)",
        )
        parser.add_argument(
            "--pgbouncer-ini",
            default=None,
            help="run from a pgbouncer.ini (its listen_addr/listen_port replace the two "
            "proxy ports); see docs/PGBOUNCER.md",
        )
        parser.add_argument(
            "--no-migrate", action="store_true", help="do not apply metadata DB migrations at start"
        )
        add_cluster_arguments(parser)

    def handle(self, *args: Any, **opts: Any) -> None:
        if not logging.getLogger().handlers and not log.handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        from tenants.crypto import VaultKeyError, check_key, current_cipher

        try:
            current_cipher()  # a missing or malformed key stops us before anything runs
            if not opts["no_migrate"]:
                call_command("migrate", interactive=False, verbosity=0)
            check_key()  # ... and so does a key that does not decrypt the stored passwords
        except VaultKeyError as exc:
            sys.stderr.write(f"greenvisor: {exc}\n")
            sys.stderr.flush()
            raise SystemExit(2) from None

        server_tls = self._load_tls(opts["tls_cert"], opts["tls_key"])
        if opts["workers"] > 1:
            from pooler.cluster.workers import supervise

            raise SystemExit(supervise(opts["workers"], opts["internal_port"]))
        reuse_port = os.environ.get("GREENVISOR_REUSE_PORT") == "1"

        from django.core.wsgi import get_wsgi_application

        from tenants.services import build_snapshot, config_version

        settings = NodeSettings(
            client_auth=opts["client_auth"],
            client_login_timeout=opts["client_login_timeout"],
            server_connect_timeout=opts["server_connect_timeout"],
            server_reset_timeout=opts["server_reset_timeout"],
            server_lifetime=opts["server_lifetime"],
            server_idle_timeout=opts["server_idle_timeout"],
            max_prepared_statements=opts["max_prepared_statements"],
            query_wait_timeout=opts["query_wait_timeout"],
            idle_transaction_timeout=opts["idle_transaction_timeout"],
            tls=server_tls,
            ban_failures=opts["ban_failures"],
            ban_window=opts["ban_window"],
            ban_time=opts["ban_time"],
            auth_failure_delay=opts["auth_failure_delay"],
        )
        _raise_fd_limit()
        if opts["pgbouncer_ini"]:
            from pooler.pgbouncer.serve import serve

            serve(self, opts, settings)
            return
        node = Node(settings)
        sync = ConfigSync(
            node, _db_call(config_version), _db_call(build_snapshot), opts["config_poll_interval"]
        )

        host = opts["listen"]
        try:
            listeners = [
                protocol_listener(
                    MODE_TRANSACTION,
                    host,
                    opts["proxy_port_transaction"],
                    "--proxy-port-transaction",
                    partial(handle_client, node=node, mode=MODE_TRANSACTION),
                    reuse_port,
                    opts["tcp_defer_accept"],
                ),
                protocol_listener(
                    MODE_SESSION,
                    host,
                    opts["proxy_port_session"],
                    "--proxy-port-session",
                    partial(handle_client, node=node, mode=MODE_SESSION),
                    reuse_port,
                    opts["tcp_defer_accept"],
                ),
                http_listener(host, opts["http_port"], get_wsgi_application(), reuse_port),
            ]
        except ListenError as exc:
            sys.stderr.write(f"{exc}\n")
            sys.stderr.flush()
            os._exit(1)
        node.apply_snapshot(sync.load_now())
        internal = join_cluster(node, sync, opts)
        stop = stop_on_signals()
        start_serving(node, listeners)
        log.info(
            "greenvisor: serving %d tenants (configuration version %s)",
            len(node.registry.snapshot.tenants),
            node.registry.snapshot.version,
        )
        log.info(
            "greenvisor: hot path %s; event loop: %s; relay: %s; pool's checkout: %s",
            hotpath.status,
            hub.status,
            client_module.RELAY_STATUS,
            pool_module.POOL_STATUS,
        )
        housekeeping = [gevent.spawn(node.janitor), gevent.spawn(sync.run)]

        stop.wait()
        if internal is not None:
            internal.stop(timeout=0)
        self._shut_down(node, listeners, housekeeping, opts["shutdown_timeout"])
        if node.cluster is not None:
            node.cluster.close()  # locks go only now: every transaction has ended

    def _load_tls(self, cert: str | None, key: str | None) -> Any:
        """Our certificate for clients, or None; a bad pair stops the start."""
        if not cert and not key:
            return None
        from pooler.tls import ServerTLS, TLSError

        try:
            if not cert or not key:
                raise TLSError("give both --tls-cert and --tls-key (or TLS_CERT and TLS_KEY)")
            return ServerTLS.load(cert, key)
        except TLSError as exc:
            sys.stderr.write(f"greenvisor: {exc}\n")
            sys.stderr.flush()
            raise SystemExit(2) from None

    def _shut_down(
        self, node: Node, listeners: list[Any], housekeeping: list[Any], timeout: float
    ) -> None:
        """Stop accepting, let running transactions finish, then leave."""
        log.info(
            "greenvisor: stopping: no new connections; waiting up to %.0f s for %d "
            "clients in a transaction",
            timeout,
            node.busy_clients(),
        )
        stop_all(listeners)
        node.begin_shutdown()
        deadline = time.monotonic() + timeout
        while node.busy_clients() and time.monotonic() < deadline:
            gevent.sleep(0.05)
        for client in list(node.clients.values()):
            client.fatal("57P01", SHUTDOWN_MESSAGE)
        gevent.killall(housekeeping, timeout=1)
        log.info("greenvisor: stopped")


def stop_on_signals() -> Event:
    """An event set by the first SIGTERM or SIGINT (a graceful stop); a second one exits
    at once."""
    stop = Event()
    signals = [0]

    def on_signal() -> None:
        signals[0] += 1
        if signals[0] > 1:
            log.warning("greenvisor: second signal, exiting now")
            os._exit(1)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, on_signal)
    return stop


def start_serving(node: Node, listeners: list[Any]) -> None:
    """Publish the node to the HTTP side and metrics, then open the listeners."""
    runtime.current.node = node
    metrics.install(node)
    runtime.current.listeners = listeners
    start_all(listeners)


def _raise_fd_limit() -> None:
    """Half-open and idle clients each hold a socket: allow as many as the hard limit."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open-file limit: %s", exc)
