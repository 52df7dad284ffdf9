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
