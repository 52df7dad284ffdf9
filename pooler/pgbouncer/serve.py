"""`runpooler --pgbouncer-ini PATH`: run Greenvisor from a pgbouncer.ini.

Theory of operation
-------------------
The same process as the two-port tenant mode (metadata DB, config sync, HTTP port,
janitor, graceful SIGTERM), with these differences:

* the node's settings come from the ini (:func:`pooler.pgbouncer.dropin.node_settings`)
  and a :class:`~pooler.pgbouncer.dropin.DropIn` is attached to it, which adds the ini's
  databases as tenants and routes plain user names by database;
* one Postgres listener per ``listen_addr`` (``*`` = every IPv4 address) on
  ``listen_port``, instead of the transaction and session ports. Users named
  ``user.<tenant>`` of metadata-DB tenants log in there too, in transaction mode;
* ``logfile`` adds a log file, ``pidfile`` is written at start and removed at exit;
* SIGHUP re-reads pgbouncer.ini and the auth_file (like the console's RELOAD); a file that
  does not load is logged and the running configuration stays;
* the console's SHUTDOWN stops the process (WAIT_FOR_CLIENTS: stop accepting, then stop
  once the last client has gone).

Problems in the files stop start-up with exit code 2 and one line naming file, line and
key; warnings (keys not applied) are logged one per line.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any

import gevent

from pooler.config import MODE_TRANSACTION
from pooler.listener import (
    ListenError,
    defer_seconds,
    http_listener,
    protocol_listener,
    stop_all,
)
from pooler.login import handle_client
from pooler.node import Node, NodeSettings
from pooler.pgbouncer import upkeep
from pooler.pgbouncer.dropin import DropIn, DropInError, load_files

log = logging.getLogger("pooler")


def _fail(message: str) -> None:
    sys.stderr.write(f"greenvisor: {message}\n")
    sys.stderr.flush()
    raise SystemExit(2)


def _addresses(listen_addr: tuple[str, ...]) -> list[str]:
    hosts = []
    for item in listen_addr:
        for host in item.split(","):
            host = host.strip()
            if host:
                hosts.append("0.0.0.0" if host == "*" else host)
    if not hosts:
        log.warning(
            "pgbouncer.ini: listen_addr is empty (PgBouncer would listen on its Unix socket "
            "only); Greenvisor listens on 127.0.0.1"
        )
        hosts.append("127.0.0.1")
    return list(dict.fromkeys(hosts))


def serve(command: Any, opts: dict[str, Any], base: NodeSettings) -> None:
    """Run until SIGTERM/SIGINT or the console's SHUTDOWN."""
    from django.core.wsgi import get_wsgi_application

    from pooler.configsync import ConfigSync
    from pooler.management.commands.runpooler import _db_call, start_serving, stop_on_signals
    from tenants.services import build_snapshot, config_version

    if os.environ.get("GREENVISOR_REUSE_PORT") == "1" or opts.get("workers", 1) > 1:
        _fail(
            "--workers is not supported with --pgbouncer-ini (one process serves the file, "
            "as one PgBouncer does); start without --workers"
        )
    path = opts["pgbouncer_ini"]
    try:
        config, authfile = load_files(path)
    except DropInError as exc:
        _fail(str(exc))
    settings = config.settings
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # not fatal before the reload handler is set
    pidfile = Path(settings.pidfile) if settings.pidfile else None
    if pidfile is not None:
        try:
            pidfile.write_text(f"{os.getpid()}\n")
        except OSError as exc:
            _fail(f"{config.path}: pidfile: cannot write {pidfile}: {exc.strerror}")

    node = Node(base)
    dropin = DropIn(node, config, authfile)
    sync = ConfigSync(
        node, _db_call(config_version), _db_call(build_snapshot), opts["config_poll_interval"]
    )
    try:
        listeners = [
            protocol_listener(
                "pgbouncer",
                host,
                settings.listen_port,
                "listen_port in pgbouncer.ini",
                partial(handle_client, node=node, mode=MODE_TRANSACTION),
                defer_seconds=defer_seconds(settings.tcp_defer_accept),
            )
            for host in _addresses(settings.listen_addr)
        ]
        listeners.append(http_listener(opts["listen"], opts["http_port"], get_wsgi_application()))
    except ListenError as exc:
        if pidfile is not None:
            pidfile.unlink(missing_ok=True)
        sys.stderr.write(f"{exc}\n")
        sys.stderr.flush()
        os._exit(1)
    # After get_wsgi_application(): Django's logging setup would drop the file handler.
    if settings.logfile:
        try:
            handler = logging.FileHandler(settings.logfile)
        except OSError as exc:
            _fail(f"{config.path}: logfile: cannot open {settings.logfile}: {exc.strerror}")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        for name in ("", "greenvisor", "pooler", "tenants"):  # project/settings.py's loggers
            logging.getLogger(name).addHandler(handler)
    for warning in (*config.warnings, *authfile.warnings):
        log.warning("pgbouncer.ini: %s", warning)

    node.apply_snapshot(sync.load_now())

    stop = stop_on_signals()

    def on_hup() -> None:
        try:
            dropin.reload()
        except DropInError as exc:
            log.error("pgbouncer.ini: reload failed, the running configuration stays: %s", exc)

    def on_shutdown(wait_for_clients: bool) -> None:
        if not wait_for_clients:
            stop.set()
            return
        stop_all(listeners[:-1])
        log.info("greenvisor: SHUTDOWN WAIT_FOR_CLIENTS: waiting for %d clients", len(node.clients))

        def wait() -> None:
            while node.clients:
                gevent.sleep(0.1)
            stop.set()

        gevent.spawn(wait)

    dropin.shutdown_hook = on_shutdown
    dropin.listen_sockets = [listener.server.socket for listener in listeners[:-1]]
    gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(on_hup))
    start_serving(node, listeners)
    log.info(
        "greenvisor: serving pgbouncer.ini %s (%d databases) and %d metadata-DB tenants",
        config.path,
        len(dropin.ini_tenants),
        len(dropin.db_snapshot.tenants),
    )
    housekeeping = [gevent.spawn(node.janitor), gevent.spawn(sync.run)]
    housekeeping.append(gevent.spawn(upkeep.run, dropin))  # query_timeout, min_pool_size
    try:
        stop.wait()
        command._shut_down(node, listeners, housekeeping, opts["shutdown_timeout"])
    finally:
        if pidfile is not None:
            pidfile.unlink(missing_ok=True)
