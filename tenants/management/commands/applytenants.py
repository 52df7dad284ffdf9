"""`manage.py applytenants FILE [--prune] [--dry-run]`: apply a JSON/YAML tenants document."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any

import yaml
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from tenants.services import ApplyResult, TenantConfigError, apply_tenants, config_version

SUFFIXES = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _reject_duplicate_json_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_document(text: str, name: str, fmt: str | None) -> object:
    """Parse JSON or YAML (``fmt`` None: sniffed); errors name the file, line and column."""
    if fmt is None:
        fmt = "json" if text.lstrip()[:1] in ("{", "[") else "yaml"
    if fmt == "json":
        try:
            return json.loads(text, object_pairs_hook=_reject_duplicate_json_keys)
        except json.JSONDecodeError as exc:
            raise CommandError(
                f"{name}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None
        except ValueError as exc:
            raise CommandError(f"{name}: invalid JSON: {exc}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 -- a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "cannot parse"
        raise CommandError(f"{name}: invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise CommandError(f"{name}: invalid YAML: {exc}") from None


def read_document(path: str, stdin: IO[str]) -> object:
    """The document in ``path`` (.json, .yaml, .yml) or on stdin for ``-``."""
    if path == "-":
        return parse_document(stdin.read(), "<stdin>", None)
    fmt = SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise CommandError(f"{path}: expected a .json, .yaml or .yml file (or - for stdin)")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CommandError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_document(text, path, fmt)


class Command(BaseCommand):
    help = (
        "Create, update (and with --prune delete) tenants and their users from a JSON or "
        "YAML file, in one transaction. Fields left out take their defaults."
    )
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="a .json, .yaml or .yml file, or - to read stdin")
        parser.add_argument(
            "--prune", action="store_true", help="delete tenants that are not in the file"
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="validate and report, write nothing"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["file"]
        doc = read_document(name, options.get("stdin") or sys.stdin)
        try:
            with transaction.atomic():
                result = apply_tenants(doc, prune=options["prune"])
                if options["dry_run"]:
                    transaction.set_rollback(True)
        except TenantConfigError as exc:
            label = "<stdin>" if name == "-" else name
            raise CommandError(f"{label}: nothing applied:\n{exc}") from None
        self._report(result, dry_run=options["dry_run"])

    def _report(self, result: ApplyResult, dry_run: bool) -> None:
        for status in ("created", "updated", "unchanged", "deleted"):
            for external_id in getattr(result, status):
                self.stdout.write(f"{status:<9} {external_id}")
        counts = ", ".join(
            f"{len(getattr(result, status))} {status}"
            for status in ("created", "updated", "unchanged", "deleted")
        )
        if dry_run:
            self.stdout.write(f"{counts} (dry run: nothing written)")
        else:
            self.stdout.write(f"{counts}; config version {config_version()}")
