"""gevent's hub with its libev loop run while holding the GIL (pooler/_sysio.c's run_loop).

gevent runs libev's ``ev_run`` with the GIL released, so each event's callback takes the
GIL and gives it back: about 400 instructions per event, a tenth of a relayed statement.
:class:`Hub` runs the same loop through ``pooler._sysio.run_loop``, which keeps the GIL and
releases it only while the loop waits in ``epoll_wait``. Everything else is gevent's hub.

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


def _native() -> Any:
    """pooler._sysio bound to gevent's libev module, or None when either is missing."""
    try:
        sysio = importlib.import_module("pooler._sysio")
        corecext = importlib.import_module("gevent.libev.corecext")
    except ImportError:
        return None
    if gevent.config.loop is not corecext.loop or not hasattr(corecext.loop, "ptr"):
        return None  # libuv, or libev through CFFI: run_loop does not know them
    try:
        sysio.bind_libev(corecext.__file__)
    except ImportError:  # a gevent whose module does not export libev's ev_run
        return None
    return sysio


class Hub(GeventHub):  # type: ignore[misc]
    """gevent's Hub whose loop runs with the GIL held (see the module docstring)."""

    def run(self) -> None:
        # gevent's Hub.run, with loop.run() replaced by run_loop(loop.ptr).
        assert self is getcurrent(), "Do not call Hub.run() directly"
        self.start_periodic_monitoring_thread()
        while True:
            loop = self.loop
            loop.error_handler = self
            try:
                _SYSIO.run_loop(loop.ptr)
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
    global _SYSIO
    if get_hub_if_exists() is not None:
        return False
    sysio = _native()
    if sysio is None:
        return False
    _SYSIO = sysio
    set_default_hub_class(Hub)
    return True
