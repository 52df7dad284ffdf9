"""gevent's hub with its libev loop run while holding the GIL (pooler/_sysio.c's run_loop).

gevent runs libev's ``ev_run`` with the GIL released, so each event's callback takes the
GIL and gives it back: about 400 instructions per event, a tenth of a relayed statement.
:class:`Hub` runs the same loop through ``pooler._sysio.run_loop``, which keeps the GIL and
releases it only while the loop waits in ``epoll_wait``, and runs gevent's queued callbacks
(``loop.run_callback``) only on the loop turns that have some: gevent's own prepare watcher
runs them on every turn, ~870 instructions a turn for an empty queue (signals are still
checked every turn, as gevent does). Everything else is gevent's hub.
:func:`pooler.loginio.read_watcher` gives the relay's connections and the logins
``pooler._sysio.Watcher`` read watchers, which libev calls straight into (no gevent callback
machinery per event) while this hub runs.

:func:`install` makes it the hub of every thread that has none yet; ``runpooler`` calls it
(manage.py) before anything makes a hub. Without the compiled hot path (``pooler._sysio``
missing) or with another gevent loop than libev's C one, nothing changes.
"""

from __future__ import annotations

import importlib
from typing import Any

import gevent
from gevent._hub_local import get_hub_if_exists, set_default_hub_class
from gevent.exceptions import LoopExit
from gevent.hub import Hub as GeventHub
from greenlet import getcurrent

#: What runs the event loop, for the start-up log (set by :func:`install`).
status = "gevent's hub (pooler.hub.install() was not called)"


def _native() -> tuple[Any, str]:
    """(pooler._sysio bound to gevent's libev module, "") or (None, why not)."""
    try:
        sysio = importlib.import_module("pooler._sysio")
    except ImportError:
        return None, "the hot path is not compiled"
    try:
        corecext = importlib.import_module("gevent.libev.corecext")
    except ImportError:
        return None, "gevent has no libev C module"
    if gevent.config.loop is not corecext.loop or not hasattr(corecext.loop, "ptr"):
        # libuv, or libev through CFFI: run_loop does not know them
        return None, f"gevent's loop is {gevent.config.loop.__module__}, not libev's C module"
    try:
        sysio.bind_libev(corecext.__file__)
    except ImportError as exc:  # a gevent whose module does not export libev's ev_run
        return None, f"libev's ev_run not found ({exc})"
    return sysio, ""


class Hub(GeventHub):  # type: ignore[misc]
    """gevent's Hub whose loop runs with the GIL held (see the module docstring)."""

    def run(self) -> None:
        # gevent's Hub.run, with loop.run() replaced by run_loop(loop).
        assert self is getcurrent(), "Do not call Hub.run() directly"
        self.start_periodic_monitoring_thread()
        while True:
            loop = self.loop
            loop.error_handler = self
            try:
                _SYSIO.run_loop(loop)
            finally:
                loop.error_handler = None
            debug = loop.debug() if hasattr(loop, "debug") else []
            loop = None
            self.parent.throw(LoopExit("This operation would block forever", self, debug))
            debug = None


_SYSIO: Any = None


def install() -> bool:
    """Make :class:`Hub` the default hub class. False (and nothing changed) when the native
    loop is not available or a hub already exists in this thread."""
    global _SYSIO, status
    if get_hub_if_exists() is not None:
        status = "gevent's hub (a hub existed before pooler.hub.install())"
        return False
    sysio, why = _native()
    if sysio is None:
        status = f"gevent's hub ({why})"
        return False
    _SYSIO = sysio
    sysio.set_error_handler(_callback_error)
    set_default_hub_class(Hub)
    status = "gevent's libev loop with the GIL held outside epoll_wait (pooler/hub.py)"
    return True


def _callback_error(watcher: Any, type_: Any, value: Any, tb: Any) -> None:
    """A Watcher callback raised: the hub's handle_error, as for gevent's own watchers (it
    prints the traceback; SystemExit and KeyboardInterrupt go to the main greenlet)."""
    gevent.get_hub().handle_error(watcher, type_, value, tb)
