"""`manage.py hotpath build|clean|status`: the relay's hot path compiled with mypyc, or not.

See pooler/hotpath.py: ``build`` compiles the hot modules into build/compiled/ (about a
minute; needs a C compiler and the Python headers), ``clean`` removes them (the pooler then
runs the same code as plain Python), ``status`` says which one a pooler started now would run.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pooler import hotpath


class Command(BaseCommand):
    help = "Compile the relay's hot path with mypyc (build), remove it (clean), or show status."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=("build", "clean", "status"))
        parser.add_argument(
            "--force", action="store_true", help="build even if the current build is up to date"
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        action = opts["action"]
        if action == "status":
            compiled, status = hotpath.decide()
            self.stdout.write(status)
            return
        if action == "clean":
            hotpath.clean()
            self.stdout.write(f"removed {hotpath.BUILD}: the plain-Python hot path will run")
            return
        compiled, status = hotpath.decide()
        if compiled and not opts["force"]:
            self.stdout.write(f"hot path already {status} and up to date (--force rebuilds)")
            return
        try:
            hotpath.build(progress=self.stdout.write)
        except (SystemExit, Exception) as exc:
            raise CommandError(
                f"compiling the hot path failed ({exc}). It needs a C compiler and the Python "
                "headers (Debian: apt-get install gcc libc6-dev python3-dev); the output above "
                "says which step failed. The pooler still runs without it, in plain Python."
            ) from exc
        compiled, status = hotpath.decide()
        if not compiled:
            raise CommandError(f"built, but it would not be used: {status}")
        self.stdout.write(f"hot path {status}")
