"""`manage.py runpooler`: wire settings, config sync, listeners and housekeeping; no logic."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

import gevent
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser
from gevent.event import Event

from pooler import runtime
from pooler.config import MODE_SESSION, MODE_TRANSACTION
from pooler.configsync import ConfigSync
from pooler.listener import ListenError, http_listener, protocol_listener, start_all, stop_all
from pooler.login import handle_client
from pooler.node import Node, NodeSettings

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
            "--config-poll-interval",
            type=float,
            default=0.5,
            help="seconds between checks for tenant configuration changes",
        )
        parser.add_argument(
            "--no-migrate", action="store_true", help="do not apply metadata DB migrations at start"
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        if not logging.getLogger().handlers and not log.handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        if not opts["no_migrate"]:
            call_command("migrate", interactive=False, verbosity=0)

        from django.core.wsgi import get_wsgi_application

        from tenants.services import build_snapshot, config_version

        settings = NodeSettings(
            client_auth=opts["client_auth"],
            client_login_timeout=opts["client_login_timeout"],
            server_connect_timeout=opts["server_connect_timeout"],
            server_lifetime=opts["server_lifetime"],
            server_idle_timeout=opts["server_idle_timeout"],
            max_prepared_statements=opts["max_prepared_statements"],
        )
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
                    lambda s, a: handle_client(s, a, node, MODE_TRANSACTION),
                ),
                protocol_listener(
                    MODE_SESSION,
                    host,
                    opts["proxy_port_session"],
                    "--proxy-port-session",
                    lambda s, a: handle_client(s, a, node, MODE_SESSION),
                ),
                http_listener(host, opts["http_port"], get_wsgi_application()),
            ]
        except ListenError as exc:
            sys.stderr.write(f"{exc}\n")
            sys.stderr.flush()
            os._exit(1)
        node.apply_snapshot(sync.load_now())
        runtime.current.node = node
        runtime.current.listeners = listeners
        start_all(listeners)
        log.info(
            "greenvisor: serving %d tenants (configuration version %s)",
            len(node.registry.snapshot.tenants),
            node.registry.snapshot.version,
        )
        housekeeping = [gevent.spawn(node.janitor), gevent.spawn(sync.run)]

        stop = Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, stop.set)
        stop.wait()
        log.info("greenvisor: stopping")
        stop_all(listeners)
        gevent.killall(housekeeping, timeout=1)
        for client in list(node.clients.values()):
            client.fatal(
                "57P01",
                "terminating connection due to administrator command: "
                "Greenvisor is shutting down; reconnect",
            )
        log.info("greenvisor: stopped")
