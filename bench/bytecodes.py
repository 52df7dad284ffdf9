"""Bytecodes per call of a microbenchmark case, per Python function: a figure that does not
drift with the machine.

This VM's CPU speed drifts 20-40% between runs, so a timed microbenchmark cannot show a
change of a few percent. The number of bytecodes the interpreter executes for one call of a
case can: it is the same on every run and every machine (for one Python version), and on
the relay it tracks the pooler's user-space CPU (the interpreter's evaluation loop is about
half of the pooler's instructions, and most of the rest is work that bytecodes ask for).
The count is taken with ``sys.settrace`` opcode events, so code in C (socket calls, struct,
gevent's libev loop) counts as the one bytecode that calls it.

    python -m bench.micro --bytecodes --filter relay
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from types import FrameType
from typing import Any

CALLS = 20  # counted calls per case (after warm-up calls that are not counted)


def count(fn: Callable[[], object], calls: int = CALLS) -> tuple[float, Counter[str]]:
    """(bytecodes per call, bytecodes per call by function) for ``calls`` calls of ``fn``."""
    for _ in range(5):  # caches and lazy state settle before counting
        fn()
    by_function: Counter[str] = Counter()

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            code = frame.f_code
            by_function[f"{_short(code.co_filename)}:{code.co_firstlineno}:{code.co_name}"] += 1
        return local

    def on_call(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return local

    sys.settrace(on_call)
    try:
        for _ in range(calls):
            fn()
    finally:
        sys.settrace(None)
    total = sum(by_function.values()) / calls
    return total, Counter({name: n // calls for name, n in by_function.items()})


def _short(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    return "/".join(parts[-2:])


def report(cases: dict[str, Callable[[], object]], top: int = 12) -> str:
    """Per case: bytecodes per call, then the functions that run the most of them."""
    lines = []
    for name, fn in cases.items():
        total, by_function = count(fn)
        lines.append(f"{name}: {total:.0f} bytecodes per call")
        for function, n in by_function.most_common(top):
            lines.append(f"  {n:>6}  {function}")
    return "\n".join(lines)
