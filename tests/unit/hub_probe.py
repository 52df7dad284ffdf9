"""Run by test_hub.py in a fresh interpreter: runpooler's own set-up (manage.py's
_patch_for_gevent: gevent's monkey-patching, then pooler.hub.install()) and a workload that
touches each way the loop wakes. Prints one JSON line of what it saw."""

import manage

manage._patch_for_gevent()

from gevent import monkey  # noqa: E402  (after the patching, as runpooler)

from pooler import hub  # noqa: E402

installed = hub._SYSIO is not None  # install() succeeded in manage.py

import gc  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402
from gevent.exceptions import LoopExit  # noqa: E402

real_sleep = monkey.get_original("time", "sleep")
real_start_thread = monkey.get_original("_thread", "start_new_thread")
seen: dict[str, object] = {
    "installed": installed,
    "hub": type(gevent.get_hub()).__module__,
    "status": hub.status,
}

# Sockets: an echo greenlet, 2,000 round trips.
ours, theirs = socket.socketpair()


def echo() -> None:
    while data := theirs.recv(100):
        theirs.sendall(data)


server = gevent.spawn(echo)
for i in range(2000):
    ours.sendall(b"%d" % i)
    assert ours.recv(100) == b"%d" % i
ours.close()
server.join(2)
seen["echo"] = server.dead

# Timers and a timeout.
seen["timeout"] = gevent.with_timeout(0.05, gevent.sleep, 5, timeout_value="timed out")

# A callback that raises goes to the hub's error handler; the loop keeps running.
gevent.spawn(lambda: 1 / 0).join()
gevent.sleep(0.01)
seen["after_error"] = True

# An OS thread runs while the loop waits in its poll: the GIL is released there.
woke: list[float] = []


def in_thread() -> None:
    real_sleep(0.05)
    woke.append(time.monotonic())


started = time.monotonic()
real_start_thread(in_thread, ())
gevent.sleep(0.5)
seen["thread_ran_during_wait"] = bool(woke) and woke[0] - started < 0.4

# gevent's thread pool (its workers wake the loop through an async watcher) and DNS.
seen["threadpool"] = gevent.get_hub().threadpool.apply(sum, (range(10),))
seen["dns"] = socket.getaddrinfo("127.0.0.1", 5432)[0][4][0]

# A signal handled through the loop.
got: list[int] = []
gevent.signal_handler(signal.SIGUSR1, lambda: got.append(1))
signal.raise_signal(signal.SIGUSR1)
gevent.sleep(0.05)
seen["signal"] = got == [1]

# A Python-level handler (signal.signal, not gevent's watcher) for a signal that interrupts
# the poll while the hub has nothing else to do: it runs at the next loop turn (where
# gevent checks for signals before its callbacks), not when the 2-second sleep ends.
handled: list[float] = []
signal.signal(signal.SIGUSR2, lambda signum, frame: handled.append(time.monotonic()))
main_thread = monkey.get_original("_thread", "get_ident")()  # the OS thread


def poke() -> None:
    real_sleep(0.1)
    signal.pthread_kill(main_thread, signal.SIGUSR2)


raised_at = time.monotonic() + 0.1
real_start_thread(poke, ())
gevent.sleep(2.0)
seen["python_signal_delay"] = round(handled[0] - raised_at, 3) if handled else None
# Loop turns that found no gevent callback queued and skipped gevent's (compiled only).
sysio = hub._SYSIO
seen["idle_turns"] = sysio.idle_turns() if sysio is not None else None

# The relay's read watchers (pooler.loginio.read_watcher): pooler._sysio.Watcher when this hub
# runs.
from pooler.loginio import read_watcher  # noqa: E402

loop = gevent.get_hub().loop
a, b = socket.socketpair()
a.setblocking(False)
watcher = read_watcher(loop, a.fileno())
seen["reader"] = f"{type(watcher).__module__}.{type(watcher).__name__}"
calls: list[tuple[str, bytes]] = []
watcher.start(lambda: calls.append(("first", a.recv(10))))
b.send(b"x")
gevent.sleep(0.02)
watcher.stop()
b.send(b"y")
gevent.sleep(0.02)  # stopped: not called
seen["reader_active_after_stop"] = watcher.active
watcher.start(lambda: calls.append(("second", a.recv(10))))  # "y" is still there
gevent.sleep(0.02)
# An exception in the callback goes to the hub's handle_error, as from gevent's watchers.
errors: list[tuple[bool, str]] = []
the_hub = gevent.get_hub()
the_hub.handle_error = lambda ctx, t, v, tb: errors.append((ctx is watcher, t.__name__))


def boom() -> None:
    a.recv(10)
    raise ValueError("boom")


watcher.start(boom)
b.send(b"z")
gevent.sleep(0.02)
del the_hub.handle_error
watcher.start(lambda: calls.append(("after_error", a.recv(10))))
b.send(b"w")
gevent.sleep(0.02)
watcher.stop()
seen["reader_errors"] = errors
# Started, a watcher keeps itself alive (as gevent's do): one no one else refers to is
# still called, and stops itself here.
c, d = socket.socketpair()
c.setblocking(False)


def unreferenced() -> None:
    kept = read_watcher(loop, c.fileno())

    def callback() -> None:
        calls.append(("kept", c.recv(10)))
        kept.stop()

    kept.start(callback)


unreferenced()
gc.collect()
d.send(b"q")
gevent.sleep(0.02)
# A compiled method as the callback (the relay's case): netio.Conn.close_socket.
from pooler import netio  # noqa: E402
from pooler.loginio import PlainSocket  # noqa: E402

e, f = socket.socketpair()
conn = netio.Conn(PlainSocket(e.family, e.type, e.proto, e.detach()))
conn.start_reading(conn.close_socket)
f.send(b"bye")
gevent.sleep(0.02)
seen["compiled_callback_ran"] = conn.closed
seen["reader_calls"] = [[name, data.decode()] for name, data in calls]
for sock in (a, b, c, d, f):
    sock.close()

# A login's reads (loginio.LoginSocket over a plain socket): a Watcher whose callback
# switches straight back to the waiting greenlet. A kill while it waits stops the watcher
# on the way out (the login timer's throw takes the same way); the next read waits again.
from pooler.loginio import LoginSocket  # noqa: E402

g, h = socket.socketpair()
login = LoginSocket(PlainSocket(g.family, g.type, g.proto, g.detach()))
login.sock.setblocking(False)
gevent.spawn_later(0.02, h.sendall, b"p\0\0\0\x08abcd")
first = netio.read_message(login, 8192)
# gevent's hub (pure Python): gevent's io watcher, kept as LoginSocket.watcher.
used = login.reader if login.reader is not None else login.watcher
reader_type = f"{type(used).__module__}.{type(used).__name__}"
waiting = gevent.spawn(netio.read_message, login, 8192)
gevent.sleep(0.02)
active_while_waiting = used.active
waiting.kill()
active_after_kill = used.active
gevent.spawn_later(0.02, h.sendall, b"p\0\0\0\x06xy")
second = netio.read_message(login, 8192)
seen["login_reads"] = {
    "reader": reader_type,
    "messages": [[kind, body.decode()] for kind, body in (first, second)],
    "active_while_waiting": active_while_waiting,
    "killed": type(waiting.value).__name__,
    "active_after_kill": active_after_kill,
    "active_after": used.active,
}
login.close()
h.close()

# With nothing left to wait for, the loop returns and the hub raises LoopExit in the
# waiter, as gevent's does; the hub then serves again.
try:
    Event().wait()
    seen["loop_exit"] = False
except LoopExit:
    seen["loop_exit"] = True
gevent.sleep(0.01)
seen["after_loop_exit"] = gevent.with_timeout(0.02, gevent.sleep, 5, timeout_value="again")

print(json.dumps(seen))
sys.stdout.flush()
