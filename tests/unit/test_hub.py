"""pooler/hub.py: gevent's hub with its loop run while holding the GIL (pooler/_sysio.c).

runpooler installs it after gevent's monkey-patching (manage.py); hub_probe.py runs that
same set-up in a fresh interpreter and puts the loop through sockets, timers, an error in a
greenlet, an OS thread, gevent's thread pool, DNS, a signal and a LoopExit.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pooler import hotpath

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def probe() -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("hub_probe.py"))],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return seen


def test_the_loop_serves_every_kind_of_event() -> None:
    seen = probe()
    # With the compiled hot path the hub is ours; without it (pure Python) gevent's.
    assert seen["installed"] is hotpath.compiled
    assert seen["hub"] == ("pooler.hub" if hotpath.compiled else "gevent.hub")
    # What runpooler logs at start-up says which one, and why not ours.
    if hotpath.compiled:
        assert str(seen["status"]).startswith("gevent's libev loop with the GIL held")
    else:
        assert seen["status"] == "gevent's hub (the hot path is not compiled)"
    if os.environ.get("GREENVISOR_EXPECT_COMPILED") == "1":
        assert seen["installed"] is True
    assert seen["echo"] is True
    assert seen["timeout"] == "timed out"
    assert seen["after_error"] is True
    # The GIL is released while the loop waits: an OS thread ran during a gevent.sleep.
    assert seen["thread_ran_during_wait"] is True
    assert seen["threadpool"] == 45
    assert seen["dns"] == "127.0.0.1"
    assert seen["signal"] is True
    # A Python signal handler runs while the loop idles (~1 ms; 1.9 s late, when the 2 s
    # sleep ends, if the loop turn does not check for signals; slack for a loaded machine).
    assert seen["python_signal_delay"] is not None
    assert seen["python_signal_delay"] < 1.0
    # Our hub skips gevent's callback run on turns with nothing queued (pooler/_sysio.c).
    if hotpath.compiled:
        assert isinstance(seen["idle_turns"], int) and seen["idle_turns"] > 100
    else:
        assert seen["idle_turns"] is None
    assert seen["reader"] == (
        "pooler._sysio.Watcher" if hotpath.compiled else "gevent.libev.corecext.io"
    )
    assert seen["reader_calls"] == [
        ["first", "x"],
        ["second", "y"],
        ["after_error", "w"],
        ["kept", "q"],
    ]
    assert seen["reader_active_after_stop"] is False
    assert seen["reader_errors"] == [[True, "ValueError"]]
    assert seen["compiled_callback_ran"] is True
    assert seen["login_reads"] == {
        "reader": "pooler._sysio.Watcher" if hotpath.compiled else "gevent.libev.corecext.io",
        "messages": [[ord("p"), "abcd"], [ord("p"), "xy"]],
        "active_while_waiting": True,
        "killed": "GreenletExit",
        "active_after_kill": False,
        "active_after": False,
    }
    assert seen["loop_exit"] is True
    assert seen["after_loop_exit"] == "again"


def test_install_declines_once_a_hub_exists() -> None:
    """install() after a hub was made changes nothing: that hub keeps gevent's loop run."""
    code = (
        "import gevent; gevent.get_hub()\n"
        "from pooler import hub\n"
        "print(hub.install(), type(gevent.get_hub()).__module__)\n"
        "print(hub.status)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0].split() == ["False", "gevent.hub"]
    assert out[1] == "gevent's hub (a hub existed before pooler.hub.install())"


def test_the_native_loop_refuses_what_it_cannot_run() -> None:
    """bind_libev wants gevent's loaded libev module; run_loop a live loop. A gevent that
    does not export libev's API makes install() keep gevent's hub (ImportError here).
    In plain Python there is no pooler._sysio at all, and gevent's hub runs."""
    import gevent.libev.corecext as corecext

    if not hotpath.compiled:
        with pytest.raises(ImportError):
            importlib.import_module("pooler._sysio")
        return
    sysio = importlib.import_module("pooler._sysio")
    with pytest.raises(ImportError, match="not loaded"):
        sysio.bind_libev(str(ROOT / "no-such-module.so"))
    sysio.bind_libev(corecext.__file__)

    class DestroyedLoop:  # gevent's loop after destroy(): its ptr reads 0
        ptr = 0

    with pytest.raises(ValueError, match="destroyed"):
        sysio.run_loop(DestroyedLoop())
    with pytest.raises(AttributeError):
        sysio.run_loop(object())  # not a loop

    with pytest.raises(ValueError, match="destroyed"):
        sysio.Watcher(DestroyedLoop(), 0)
    with pytest.raises(ValueError, match="negative"):
        sysio.Watcher(DestroyedLoop(), -1)
    with pytest.raises(AttributeError):
        sysio.Watcher(object(), 0)  # not a loop
