"""bench.micro's relay cases drive the real relay objects; they must keep doing what they
are named for (each run() checks its own hand-off), and the bytecode count must see them."""

from __future__ import annotations

import pytest

from bench import bytecodes, micro

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("name", "messages"),
    [
        ("relay.handoff", 11),
        ("relay.prepared_handoff", 9),
        ("relay.linked", 11),
        ("relay.idle_pool", 11),
    ],
)
def test_relay_case_runs_its_path(name: str, messages: int) -> None:
    fn, stream = micro.relay_cases()[name]
    for _ in range(3):
        fn()  # raises AssertionError if the server did not go where the case says
    assert micro.count_messages(stream) == messages


@pytest.mark.pure_python
def test_bytecode_count_sees_the_scanners() -> None:
    fn, _stream = micro.relay_cases()["relay.linked"]
    total, by_function = bytecodes.count(fn, calls=3)
    assert total > 100
    names = " ".join(by_function)
    assert "framing.py" in names and ":frontend" in names and ":backend" in names
    assert abs(sum(by_function.values()) - total) <= len(by_function)


def test_the_native_linked_case_exists_exactly_when_compiled() -> None:
    """relay.linked_native times pooler/_sysio.c's relay: the compiled build has it (and its
    replies go through C, relay_counts), plain Python has no such watcher."""
    from pooler import hotpath

    cases = micro.relay_cases()
    assert ("relay.linked_native" in cases) == hotpath.compiled
    if hotpath.compiled:
        import importlib

        sysio = importlib.import_module("pooler._sysio")
        fn, _stream = cases["relay.linked_native"]
        before = sysio.relay_counts()[0]
        for _ in range(3):
            fn()
        assert sysio.relay_counts()[0] - before == 3
