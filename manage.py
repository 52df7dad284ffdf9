#!/usr/bin/env python
"""Django's command-line entry point; gevent-patches the process first, for `runpooler` only."""

import os
import sys


def _patch_for_gevent() -> None:
    """Monkey-patch the standard library before Django (or anything else) is imported."""
    from gevent import monkey

    monkey.patch_all()
    from pooler import hub

    hub.install()  # before anything makes the hub: its loop then runs with the GIL held
    try:
        import psycogreen.gevent  # optional: makes psycopg2 calls cooperative
    except ImportError:
        return  # without it psycopg2 blocks briefly; acceptable for the config poller
    psycogreen.gevent.patch_psycopg()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "runpooler":
        _patch_for_gevent()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
