"""The scenario table and the pure half of the bench: pgbench output parsing, summaries, tables."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from typing import Any

DIRECT = "direct"
PGBOUNCER = "pgbouncer"
GREENVISOR = "greenvisor"
ALL_TARGETS = (DIRECT, PGBOUNCER, GREENVISOR)


@dataclass(frozen=True)
class Scenario:
    """One pgbench workload, run against each target with the same pool size.

    ``pgbench_args`` never holds -T or connection options: the harness adds those. Unless
    ``vacuum`` is False, the harness does pgbench's own pre-run cleanup (VACUUM the branches
    and tellers, TRUNCATE the history) directly on Postgres and passes ``-n``, so every target
    starts from the same state and no pooler has to relay the maintenance commands.
    """

    name: str
    description: str
    pgbench_args: tuple[str, ...]
    pool_size: int
    targets: tuple[str, ...] = ALL_TARGETS
    vacuum: bool = True


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="tpcb",
        description="TPC-B, extended protocol, 100 clients, pool 60 (Supavisor README run)",
        pgbench_args=("-M", "extended", "-c", "100", "-j", "10"),
        pool_size=60,
    ),
    Scenario(
        name="select",
        description="select-only, extended protocol, 100 clients, pool 20",
        pgbench_args=("-S", "-M", "extended", "-c", "100", "-j", "2"),
        pool_size=20,
    ),
)


def scenario_by_name(name: str) -> Scenario:
    for scenario in SCENARIOS:
        if scenario.name == name:
            return scenario
    known = ", ".join(s.name for s in SCENARIOS)
    raise KeyError(f"unknown scenario {name!r} (known: {known})")


@dataclass
class PgbenchResult:
    """The summary pgbench prints; None where pgbench did not print the line."""

    tps: float | None = None
    tps_label: str = ""  # e.g. "without initial connection time"
    transactions: int | None = None
    failed: int | None = None
    latency_avg_ms: float | None = None
    latency_stddev_ms: float | None = None
    connection_time_ms: float | None = None
    aborted: bool = False
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tps": self.tps,
            "tps_label": self.tps_label,
            "transactions": self.transactions,
            "failed": self.failed,
            "latency_avg_ms": self.latency_avg_ms,
            "latency_stddev_ms": self.latency_stddev_ms,
            "connection_time_ms": self.connection_time_ms,
            "aborted": self.aborted,
            "errors": self.errors,
        }


_NUMBER = r"([0-9]+(?:\.[0-9]+)?)"
_TPS = re.compile(rf"^tps = {_NUMBER} \(([^)]*)\)", re.M)
_PROCESSED = re.compile(r"^number of transactions actually processed: ([0-9]+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: ([0-9]+)", re.M)
_LAT_AVG = re.compile(rf"^latency average = {_NUMBER} ms", re.M)
_LAT_STDDEV = re.compile(rf"^latency stddev = {_NUMBER} ms", re.M)
_CONN_TIME = re.compile(rf"^initial connection time = {_NUMBER} ms", re.M)


def _first(pattern: re.Pattern[str], text: str) -> str | None:
    match = pattern.search(text)
    return match.group(1) if match else None


def _float(value: str | None) -> float | None:
    return None if value is None else float(value)


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)


def parse_pgbench(stdout: str, stderr: str) -> PgbenchResult:
    """Read pgbench 13-17 output: "excluding connections establishing" (<= 13) or
    "without initial connection time" (>= 14) both land in ``tps``."""
    result = PgbenchResult()
    tps = _TPS.search(stdout)
    if tps:
        # pgbench <= 13 prints two tps lines; the first "including" one is the wrong one.
        for match in _TPS.finditer(stdout):
            if "including connections" not in match.group(2):
                tps = match
                break
        result.tps = float(tps.group(1))
        result.tps_label = tps.group(2)
    result.transactions = _int(_first(_PROCESSED, stdout))
    result.failed = _int(_first(_FAILED, stdout))
    result.latency_avg_ms = _float(_first(_LAT_AVG, stdout))
    result.latency_stddev_ms = _float(_first(_LAT_STDDEV, stdout))
    result.connection_time_ms = _float(_first(_CONN_TIME, stdout))
    both = stdout + "\n" + stderr
    result.aborted = "Run was aborted" in both or " aborted in command " in both
    result.errors = [line for line in stderr.splitlines() if "error" in line.lower()][:5]
    return result


# --- summaries and tables -------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (scenario, target): medians over the reps, ratios, failures and pooler cost."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["scenario"], run["target"]), []).append(run)
    rows = []
    for (scenario, target), group in groups.items():
        ok = [r for r in group if r["tps"] is not None and not r["aborted"] and not r["returncode"]]
        cpu = {
            name: _median([r["cpu_s"][name] for r in ok if name in r["cpu_s"]])
            for name in ("postgres", PGBOUNCER, GREENVISOR, "pgbench")
        }
        pooler_us = _median(
            [1e6 * r["cpu_s"][target] / r["transactions"] for r in ok if r["transactions"]]
            if target in (PGBOUNCER, GREENVISOR)
            else []
        )
        rows.append(
            {
                "scenario": scenario,
                "target": target,
                "runs": len(group),
                "ok_runs": len(ok),
                "tps_median": _median([r["tps"] for r in ok]),
                "tps_all": [r["tps"] for r in group],
                "failed_total": sum(r["failed"] or 0 for r in group),
                "latency_avg_ms_median": _median([r["latency_avg_ms"] for r in ok]),
                "cpu_s_median": cpu,
                "pooler_cpu_us_per_txn": pooler_us,
            }
        )
    _add_ratios(rows)
    return rows


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    by_key = {(r["scenario"], r["target"]): r["tps_median"] for r in rows}
    for row in rows:
        for base in (PGBOUNCER, DIRECT):
            ref = by_key.get((row["scenario"], base))
            tps = row["tps_median"]
            row[f"vs_{base}"] = round(tps / ref, 3) if tps and ref else None


COLUMNS = (
    ("scenario", "scenario"),
    ("target", "target"),
    ("tps (median)", "tps"),
    ("x pgbouncer", "vs_pgbouncer"),
    ("x direct", "vs_direct"),
    ("failed", "failed"),
    ("lat ms", "lat"),
    ("CPU s postgres", "postgres"),
    ("CPU s pooler", "pooler"),
    ("CPU s pgbench", "pgbench"),
    ("pooler CPU us/txn", "us"),
)


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_cells(row: dict[str, Any]) -> list[str]:
    cpu = row["cpu_s_median"]
    pooler = cpu.get(row["target"]) if row["target"] in (PGBOUNCER, GREENVISOR) else None
    tps = row["tps_median"]
    cells = {
        "scenario": row["scenario"],
        "target": row["target"],
        "tps": _fmt(tps, 0) + ("" if row["ok_runs"] == row["runs"] else " (!)"),
        "vs_pgbouncer": _fmt(row["vs_pgbouncer"], 2),
        "vs_direct": _fmt(row["vs_direct"], 2),
        "failed": str(row["failed_total"]),
        "lat": _fmt(row["latency_avg_ms_median"], 2),
        "postgres": _fmt(cpu["postgres"], 1),
        "pooler": _fmt(pooler, 1),
        "pgbench": _fmt(cpu["pgbench"], 1),
        "us": _fmt(row["pooler_cpu_us_per_txn"], 1),
    }
    return [cells[key] for _, key in COLUMNS]


def text_table(rows: list[dict[str, Any]]) -> str:
    lines = [[title for title, _ in COLUMNS]] + [table_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    out = [_text_line(line, widths) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _text_line(cells: list[str], widths: list[int]) -> str:
    """Scenario and target left-aligned, figures right-aligned."""
    padded = [
        cell.ljust(width) if i < 2 else cell.rjust(width)
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
    ]
    return "  ".join(padded)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(title for title, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" if i < 2 else "---:" for i in range(len(COLUMNS))) + "|"
    body = ["| " + " | ".join(table_cells(r)) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def markdown_machine(machine: dict[str, Any]) -> str:
    return "\n".join(f"- {key}: {value}" for key, value in machine.items())
