"""The compiled hot path (pooler/hotpath.py): when it is used, and that it is the one running."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import pytest

import pooler.protocol.framing as framing
import pooler.protocol.prepared as prepared
from pooler import hotpath

pytestmark = pytest.mark.unit


def _manifest(tmp_path: Path, **changes: object) -> Path:
    built = {"python": sys.implementation.cache_tag, "sources": hotpath.digest()}
    built.update(changes)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(built))
    return path


def test_a_current_build_is_used(tmp_path: Path) -> None:
    compiled, why = hotpath._decide(_manifest(tmp_path), {})
    assert compiled, why
    assert why.startswith("compiled with mypyc")


def test_no_build_runs_pure_python_and_says_how_to_compile(tmp_path: Path) -> None:
    compiled, why = hotpath._decide(tmp_path / "manifest.json", {})
    assert not compiled
    assert "python manage.py hotpath build" in why


def test_an_edited_source_is_never_run_from_an_old_build(tmp_path: Path) -> None:
    sources = hotpath.digest()
    assert "pooler/protocol/framing.py" in sources and "pooler/node.py" in sources
    sources["pooler/node.py"] = "0" * 64  # not compiled itself, but compiled code uses it
    compiled, why = hotpath._decide(_manifest(tmp_path, sources=sources), {})
    assert not compiled
    assert "pooler/node.py changed" in why and "hotpath build" in why


def test_a_build_for_another_python_is_not_used(tmp_path: Path) -> None:
    compiled, why = hotpath._decide(_manifest(tmp_path, python="cpython-39"), {})
    assert not compiled and "cpython-39" in why


def test_the_environment_can_force_pure_python(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    assert not hotpath._decide(manifest, {hotpath.PURE_ENV: "1"})[0]
    assert hotpath._decide(manifest, {hotpath.PURE_ENV: "0"})[0]


def test_an_unreadable_manifest_runs_pure_python(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text("{not json")
    compiled, why = hotpath._decide(path, {})
    assert not compiled and "unreadable" in why


def test_the_decision_is_the_code_that_runs() -> None:
    """What `hotpath.compiled` says is what was imported: C extensions from build/compiled,
    or the .py sources. `make test` sets GREENVISOR_EXPECT_COMPILED=1 for its compiled run,
    so a build that silently fell back to Python fails there."""
    for source in hotpath.MODULES:  # every one of them, the login's included
        module = importlib.import_module(source.removesuffix(".py").replace("/", "."))
        origin = Path(module.__file__ or "")
        if hotpath.compiled:
            assert origin.suffix == ".so" and hotpath.BUILD in origin.parents, origin
        else:
            assert origin.suffix == ".py", origin
    for package in hotpath.PACKAGES:
        first = Path(sys.modules[package].__path__[0])
        assert (hotpath.BUILD in first.parents) == hotpath.compiled, (package, first)
    if os.environ.get("GREENVISOR_EXPECT_COMPILED") == "1":
        assert hotpath.compiled, hotpath.status
    if os.environ.get(hotpath.PURE_ENV) == "1":
        assert not hotpath.compiled


def test_message_type_constants_are_the_letters() -> None:
    """The hot modules spell message types as int literals (Final, so the compiled build
    inlines them); each must still be its letter."""
    letters = {
        framing: {
            "F_QUERY": "Q", "F_SYNC": "S", "F_FUNCTION_CALL": "F", "F_PARSE": "P",
            "F_BIND": "B", "F_DESCRIBE": "D", "F_EXECUTE": "E", "F_CLOSE": "C",
            "F_FLUSH": "H", "F_TERMINATE": "X", "F_COPY_DATA": "d", "F_COPY_DONE": "c",
            "F_COPY_FAIL": "f", "B_READY_FOR_QUERY": "Z", "B_PARAMETER_STATUS": "S",
            "B_ERROR_RESPONSE": "E", "B_DATA_ROW": "D", "B_COPY_DATA": "d", "TX_IDLE": "I",
            "TX_IN_BLOCK": "T", "TX_FAILED": "E",
        },
        prepared: {
            "_P": "P", "_B": "B", "_D": "D", "_C": "C", "_E": "E", "_S": "S", "_Q": "Q",
            "_F": "F", "_H": "H", "_X": "X", "_COPY_DATA": "d", "_COPY_DONE": "c",
            "_COPY_FAIL": "f", "_PARSE_COMPLETE": "1", "_BIND_COMPLETE": "2",
            "_CLOSE_COMPLETE": "3", "_NO_DATA": "n", "_ROW_DESCRIPTION": "T",
            "_PARAM_DESCRIPTION": "t", "_COMMAND_COMPLETE": "C", "_EMPTY_QUERY": "I",
            "_PORTAL_SUSPENDED": "s", "_ERROR": "E", "_READY": "Z", "_DATA_ROW": "D",
            "_COPY_IN": "G", "_COPY_BOTH": "W", "_PARAMETER_STATUS": "S", "_S_KIND": "S",
            "_P_KIND": "P",
        },
    }  # fmt: skip
    for module, names in letters.items():
        for name, letter in names.items():
            assert getattr(module, name) == ord(letter), (module.__name__, name)


def test_requests_hash_by_identity_in_either_build() -> None:
    """mypyc ignores ``__hash__ = object.__hash__`` in a class body: a compiled Request was
    unhashable until __hash__ became a method."""
    a, b = prepared.Request(ord("P")), prepared.Request(ord("P"))
    assert a == ord("P") and a != b
    assert len({a, b, a}) == 2


def test_compiled_functions_bind_each_except_name_to_one_type() -> None:
    """mypyc gives a local one type, from its first binding: ``except LoginFailed as exc``
    then ``except ProtocolError as exc`` in one compiled function raised TypeError
    ("LoginFailed object expected") instead of refusing the client. So in the compiled
    modules each ``except ... as name`` of a function names one exception type."""
    import ast

    clashes = []
    for source in hotpath.MODULES:
        tree = ast.parse((hotpath.ROOT / source).read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            bound: dict[str, set[str]] = {}
            for node in ast.walk(function):
                if isinstance(node, ast.ExceptHandler) and node.name and node.type:
                    bound.setdefault(node.name, set()).add(ast.unparse(node.type))
            clashes += [
                f"{source}:{function.lineno} {function.name}: {name} = {sorted(types)}"
                for name, types in bound.items()
                if len(types) > 1
            ]
    assert not clashes, clashes
