"""The relay's hot path, compiled with mypyc when it has been built, else plain Python.

``python manage.py hotpath build`` (``make compile``) compiles :data:`MODULES`, the code every
relayed message runs through, with mypyc: the same type-checked Python source, turned into
C extension modules; and :data:`NATIVE`, the one hand-written C module (pooler/_sysio.c).
The result goes to ``build/compiled/`` beside the checkout, never next to the sources, with a
manifest of the sources' SHA-256.

At start-up (``pooler/__init__.py`` calls :func:`activate`), the compiled modules are used
only when every source still matches the manifest; otherwise Python imports the ``.py``
files as usual and :data:`status` says why. So an edit without a rebuild can never run old
code, and a checkout without a C compiler works as before, just with more CPU per
transaction. ``GREENVISOR_PURE_PYTHON=1`` forces the plain-Python path (the test suite runs
the unit tests both ways).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "compiled"
MANIFEST = BUILD / "manifest.json"

# Compiled together, as one group. Every subclass of a compiled class must be compiled too
# (an interpreted class cannot inherit from a compiled one): hence statement.py, internal.py
# and parked.py, whose classes extend Client and netio.Conn. The login (login.py, loginio.py,
# startup.py, parsers.py, builders.py, auth/scram.py) runs once per connection: what a
# connection storm spends its CPU on.
MODULES = (
    "pooler/protocol/framing.py",
    "pooler/protocol/prepared.py",
    "pooler/netio.py",
    "pooler/pool.py",
    "pooler/listdeque.py",
    "pooler/client.py",
    "pooler/server.py",
    "pooler/pgbouncer/statement.py",
    "pooler/cluster/internal.py",
    "pooler/cluster/parked.py",
    "pooler/login.py",
    "pooler/loginio.py",
    "pooler/protocol/startup.py",
    "pooler/protocol/parsers.py",
    "pooler/protocol/builders.py",
    "pooler/auth/scram.py",
    "pooler/node.py",
    "pooler/protocol/params.py",
    "pooler/bans.py",
)
# Hand-written C built with them (module name, source): read(2)/write(2) and gevent's loop
# without releasing the GIL, and read watchers libev calls straight into, see
# pooler/_sysio.c. netio falls back to os.read/os.write and pooler/hub.py to gevent's hub and
# watchers when it is not there.
NATIVE = (("pooler._sysio", "pooler/_sysio.c"),)
# The packages whose __path__ gets the compiled directory first (see their __init__.py).
PACKAGES = ("pooler", "pooler.protocol", "pooler.pgbouncer", "pooler.cluster", "pooler.auth")
PURE_ENV = "GREENVISOR_PURE_PYTHON"

status = "pure Python: not activated"  # for the start-up log and the tests
compiled = False


def digest() -> dict[str, str]:
    """SHA-256 of every module of the ``pooler`` package. All of them, not just
    :data:`MODULES`: mypyc may build facts from the others into the compiled code (a Final
    constant, a class's layout), so an edit anywhere means a rebuild before it is used. And
    the hand-written C of :data:`NATIVE` (``.c``)."""
    files = sorted([*ROOT.glob("pooler/**/*.py"), *ROOT.glob("pooler/**/*.c")])
    return {
        str(path.relative_to(ROOT)): hashlib.sha256(path.read_bytes()).hexdigest() for path in files
    }


def decide() -> tuple[bool, str]:
    """(use the compiled modules?, why) for this checkout and environment, now."""
    return _decide(MANIFEST, os.environ)


def _decide(manifest: Path, environ: Mapping[str, str]) -> tuple[bool, str]:
    if environ.get(PURE_ENV, "") not in ("", "0"):
        return False, f"pure Python ({PURE_ENV} is set)"
    try:
        built = json.loads(manifest.read_text())
    except FileNotFoundError:
        return False, (
            "pure Python (not compiled: `python manage.py hotpath build` cuts the "
            "instructions per transaction by about 40%)"
        )
    except (OSError, ValueError) as exc:
        return False, f"pure Python ({manifest} is unreadable: {exc}; build it again)"
    if built.get("python") != sys.implementation.cache_tag:
        return False, (
            f"pure Python (compiled for {built.get('python')}, this is "
            f"{sys.implementation.cache_tag}: run `python manage.py hotpath build` again)"
        )
    sources = built.get("sources", {})
    changed = [name for name, sha in digest().items() if sources.get(name) != sha]
    if changed:
        return False, (
            f"pure Python ({', '.join(changed)} changed since the hot path was compiled: "
            "run `python manage.py hotpath build` again)"
        )
    return True, f"compiled with mypyc ({len(MODULES)} modules in {manifest.parent})"


def activate() -> None:
    """Decide once, at ``import pooler``, which hot path this process runs."""
    global status, compiled
    compiled, status = decide()
    if compiled and str(BUILD) not in sys.path:
        sys.path.append(str(BUILD))  # mypyc's shared library is a top-level module


def package_path(path: list[str], package: str) -> list[str]:
    """``__path__`` for ``package``: the compiled directory first when it is active."""
    if not compiled:
        return path
    return [str(BUILD.joinpath(*package.split("."))), *path]


def build(progress: Callable[[str], object] = print) -> None:
    """Compile :data:`MODULES` and :data:`NATIVE` into ``build/compiled`` (about a minute on 2
    cores)."""
    from mypyc.build import include_dir, mypycify  # the build needs mypy and a C compiler
    from setuptools import Extension, setup

    started = time.monotonic()
    work = ROOT / "build" / "mypyc"
    progress(
        f"compiling {len(MODULES)} modules with mypyc and {len(NATIVE)} of C (about a minute) ..."
    )
    sources = digest()
    cwd = os.getcwd()
    os.chdir(ROOT)  # mypycify takes paths relative to the checkout
    try:
        clean()
        extensions = mypycify(list(MODULES), opt_level="3", target_dir=str(work / "c"))
        # The C relay (pooler/_sysio.c) reads and writes the compiled classes' fields: it is
        # compiled against the header mypyc just wrote for them, so the layouts agree.
        header = _native_header(work / "c")
        extensions += [
            Extension(
                name,
                [source],
                include_dirs=[include_dir(), str(work / "c")],
                define_macros=[("GV_MYPYC_HEADER", f'"{header}"')],
                extra_compile_args=["-O3"],
            )
            for name, source in NATIVE
        ]
        progress(f"  C sources written to {work / 'c'}; compiling them (gcc) ...")
        setup(
            name="greenvisor-hotpath",
            packages=[],
            py_modules=[],
            ext_modules=extensions,
            script_args=[
                "-q",
                "build_ext",
                "--build-lib",
                str(BUILD),
                "--build-temp",
                str(work / "temp"),
            ],
        )
    finally:
        os.chdir(cwd)
    MANIFEST.write_text(
        json.dumps({"python": sys.implementation.cache_tag, "sources": sources}, indent=1)
    )
    progress(f"  compiled in {time.monotonic() - started:.0f} s into {BUILD}")


def _native_header(directory: Path) -> str:
    """The name of the header mypyc wrote with the compiled classes' C structs."""
    found = sorted(
        p.name for p in directory.glob("__native_*.h") if not p.name.startswith("__native_internal")
    )
    if len(found) != 1:
        raise RuntimeError(
            f"expected one __native_*.h from mypyc in {directory}, found {found or 'none'}: "
            "run `python manage.py hotpath clean` and build again"
        )
    return found[0]


def clean() -> None:
    """Remove the compiled modules (the next start runs the plain-Python hot path)."""
    shutil.rmtree(BUILD, ignore_errors=True)
    shutil.rmtree(ROOT / "build" / "mypyc", ignore_errors=True)
