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

    ``pgbench_args`` never holds -T or connection options: the harness adds those, and always
    ``-n``, so no pooler has to relay pgbench's maintenance commands. Unless ``vacuum`` is
    False (select-only workloads, which change nothing), the harness does pgbench's own
    pre-run cleanup (VACUUM the branches and tellers, TRUNCATE the history, CHECKPOINT)
    directly on Postgres before each run, so every target starts from the same state.
    """

    name: str
    description: str
    pgbench_args: tuple[str, ...]
    pool_size: int
    targets: tuple[str, ...] = ALL_TARGETS
    vacuum: bool = True
    #: pgbench writes a per-transaction log (--log); the harness computes p50 and p99 from it.
    latency_log: bool = False
    #: Each pooler holds ``--idle-clients`` idle, SCRAM-authenticated clients during the runs;
    #: its RSS per idle client is measured (bench/idle.py opens them).
    idle_clients: bool = False
    #: Another scenario of the same run whose tps this one is compared with, target by target.
    baseline: str | None = None
    #: Measured runs per target when --reps is not given. Five for the two ratios whose
    #: targets sit within a few percent of 1.0 (TPC-B, storm): single reps of one target
    #: moved by up to 1.7x on the shared machine of session 11 (docs/BENCHMARKS.md).
    reps: int = 3
    #: pgbench -T seconds per measured run when --duration is not given (None: 7).
    duration: int | None = None


#: pgbench -T seconds per measured run of a scenario that sets no duration of its own.
DEFAULT_DURATION = 7

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="tpcb",
        description="TPC-B, extended protocol, 100 clients, pool 60 (Supavisor README run)",
        pgbench_args=("-M", "extended", "-c", "100", "-j", "10"),
        pool_size=60,
        reps=5,
    ),
    Scenario(
        name="select",
        description="select-only, extended protocol, 100 clients, pool 20",
        pgbench_args=("-S", "-M", "extended", "-c", "100", "-j", "2"),
        pool_size=20,
        vacuum=False,
    ),
    Scenario(
        name="prepared",
        description="select-only, named prepared statements (-M prepared), 100 clients, pool 20",
        pgbench_args=("-S", "-M", "prepared", "-c", "100", "-j", "2"),
        pool_size=20,
        targets=(DIRECT, GREENVISOR),  # PgBouncer 1.18 cannot: see NOT_APPLICABLE
        vacuum=False,
    ),
    Scenario(
        name="storm",
        description="connection storm: a new SCRAM login per transaction (-C), select-only",
        # -j 10: pgbench logs in synchronously per thread, so with -j 2 only two logins are
        # ever in flight and the figure is login latency, not how many logins/s a pooler takes.
        pgbench_args=("-C", "-S", "-M", "extended", "-c", "20", "-j", "10"),
        pool_size=20,
        targets=(PGBOUNCER, GREENVISOR),
        vacuum=False,
        reps=5,
    ),
    Scenario(
        name="latency",
        description="one client, select-only, extended protocol: p50 and p99 latency",
        pgbench_args=("-S", "-M", "extended", "-c", "1", "-j", "1"),
        pool_size=20,
        targets=(PGBOUNCER, GREENVISOR),  # --all-targets adds direct
        vacuum=False,
        latency_log=True,
        # Seven alternations of 3 s rather than three of 7 s (the same 21 s per target): on
        # the shared machine of session 20 the one-client p99 of both poolers moved between
        # states lasting ~7-20 s (0.7 ms against 2.6 ms), so three long reps often put one
        # pooler's in the slow state and the other's not. 3 s is still ~6,000 transactions
        # per rep at ~2,000 tps: a p99 from ~60 of them.
        reps=7,
        duration=3,
    ),
    Scenario(
        name="idle",
        description="select as above while each pooler holds many idle authenticated clients",
        pgbench_args=("-S", "-M", "extended", "-c", "100", "-j", "2"),
        pool_size=20,
        targets=(PGBOUNCER, GREENVISOR),
        vacuum=False,
        idle_clients=True,
        baseline="select",
    ),
)

#: (scenario, target) pairs a target cannot run, shown as n/a with the reason.
NOT_APPLICABLE: dict[tuple[str, str], str] = {
    ("prepared", PGBOUNCER): "PgBouncer 1.18: no named prepared statements in transaction mode",
}


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
                # [rep, tps] of the good reps: each compared with the other target's rep of
                # the same number, run next to it (see paired_ratio)
                "tps_by_rep": [[r["rep"], r["tps"]] for r in ok if r.get("rep") is not None],
                "failed_total": sum(r["failed"] or 0 for r in group),
                "latency_avg_ms_median": _median([r["latency_avg_ms"] for r in ok]),
                "latency_p50_ms_median": _median(_present(ok, "latency_p50_ms")),
                "latency_p99_ms_median": _median(_present(ok, "latency_p99_ms")),
                "idle_clients": max(_present(group, "idle_clients"), default=None),
                "idle_kb_per_client": _median(_present(group, "idle_kb_per_client")),
                "baseline": group[0].get("baseline"),
                "cpu_s_median": cpu,
                "pooler_cpu_us_per_txn": pooler_us,
            }
        )
    _add_not_applicable(rows)
    _add_ratios(rows)
    return rows


def _present(runs: list[dict[str, Any]], key: str) -> list[Any]:
    return [r[key] for r in runs if r.get(key) is not None]


def _add_not_applicable(rows: list[dict[str, Any]]) -> None:
    """A row saying why, for a target a scenario that ran cannot measure (PgBouncer -M prepared)."""
    present = {(r["scenario"], r["target"]) for r in rows}
    scenarios = {r["scenario"] for r in rows}
    for (scenario, target), reason in NOT_APPLICABLE.items():
        if scenario in scenarios and (scenario, target) not in present:
            rows.append(
                {
                    "scenario": scenario,
                    "target": target,
                    "runs": 0,
                    "ok_runs": 0,
                    "not_applicable": reason,
                    "tps_median": None,
                    "tps_all": [],
                    "failed_total": 0,
                    "cpu_s_median": {},
                    "pooler_cpu_us_per_txn": None,
                }
            )
    order = {s.name: i for i, s in enumerate(SCENARIOS)}
    rows.sort(key=lambda r: (order.get(r["scenario"], 99), ALL_TARGETS.index(r["target"])))


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    by_key = {(r["scenario"], r["target"]): r["tps_median"] for r in rows}
    for row in rows:
        tps = row["tps_median"]
        for base in (PGBOUNCER, DIRECT):
            ref = by_key.get((row["scenario"], base))
            row[f"vs_{base}"] = round(tps / ref, 3) if tps and ref else None
        ref = by_key.get((row.get("baseline") or "", row["target"]))
        row["vs_baseline"] = round(tps / ref, 3) if tps and ref else None


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
    ("notes", "notes"),
)


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _notes(row: dict[str, Any]) -> str:
    """Scenario-specific figures: percentiles, idle memory, connections/s, baseline ratio."""
    notes = []
    if row.get("not_applicable"):
        return str(row["not_applicable"])
    if row.get("latency_p50_ms_median") is not None:
        notes.append(
            f"p50 {_fmt(row['latency_p50_ms_median'], 3)} ms, "
            f"p99 {_fmt(row.get('latency_p99_ms_median'), 3)} ms"
        )
    if row.get("idle_kb_per_client") is not None:
        notes.append(
            f"{row['idle_clients']} idle: {_fmt(row['idle_kb_per_client'], 2)} KB RSS each"
        )
    if row.get("baseline"):
        notes.append(f"{_fmt(row.get('vs_baseline'), 2)}x of {row['baseline']}")
    if row["scenario"] == "storm" and row["tps_median"]:
        notes.append(f"{row['tps_median']:.0f} logins/s")
    return "; ".join(notes)


def table_cells(row: dict[str, Any]) -> list[str]:
    if row.get("not_applicable"):
        na = ["n/a"] + ["-"] * (len(COLUMNS) - 4) + [_notes(row)]
        return [row["scenario"], row["target"], *na]
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
        "notes": _notes(row),
    }
    return [cells[key] for _, key in COLUMNS]


# --- the targets --------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One goal of issue 4: a figure taken from the summary rows, compared with ``goal``."""

    number: str
    what: str
    goal: float
    higher_is_better: bool
    unit: str = "x"


def _row(rows: list[dict[str, Any]], scenario: str, target: str) -> dict[str, Any]:
    for row in rows:
        if row["scenario"] == scenario and row["target"] == target:
            return row
    return {}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _status(value: float, goal: float, higher_is_better: bool) -> str:
    if higher_is_better:
        return "PASS" if value >= goal else "MISS"
    return "PASS" if value <= goal else "MISS"


def target_checks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 4's seven targets against this run's medians: value, goal, PASS/MISS (or n/a)."""
    g = {
        s: _row(rows, s, GREENVISOR)
        for s in ("tpcb", "select", "prepared", "storm", "latency", "idle")
    }
    b = {s: _row(rows, s, PGBOUNCER) for s in ("tpcb", "select", "storm", "latency", "idle")}
    direct = _row(rows, "prepared", DIRECT)
    checks: list[tuple[Target, float | None, str]] = [
        (
            Target("1", "TPC-B tps vs PgBouncer", 1.0, True),
            g["tpcb"].get("vs_pgbouncer"),
            _paired_note(g["tpcb"], b["tpcb"]),
        ),
        (
            Target("2", "select tps vs PgBouncer", 0.9, True),
            g["select"].get("vs_pgbouncer"),
            _paired_note(g["select"], b["select"]),
        ),
        (
            Target("3", "prepared (-M prepared) tps vs direct", 0.55, True),
            g["prepared"].get("vs_direct"),
            "; ".join(filter(None, ["PgBouncer 1.18: n/a", _paired_note(g["prepared"], direct)])),
        ),
        (
            Target("4", "pooler CPU us/txn on select vs PgBouncer", 1.3, False),
            _ratio(
                g["select"].get("pooler_cpu_us_per_txn"), b["select"].get("pooler_cpu_us_per_txn")
            ),
            _us_note(g["select"], b["select"]),
        ),
        (
            Target("5a", "pooler RSS per idle client", 2.0, False, " KB"),
            g["idle"].get("idle_kb_per_client"),
            f"PgBouncer {_fmt(b['idle'].get('idle_kb_per_client'), 2)} KB",
        ),
        (
            Target("5b", "select tps while idle clients vs without", 0.9, True),
            g["idle"].get("vs_baseline"),
            f"PgBouncer {_fmt(b['idle'].get('vs_baseline'), 2)}x",
        ),
        (
            Target("6", "connection storm logins/s vs PgBouncer", 1.0, True),
            g["storm"].get("vs_pgbouncer"),
            _paired_note(g["storm"], b["storm"]),
        ),
        (
            Target("7a", "one-client p50 latency vs PgBouncer", 1.2, False),
            _ratio(
                g["latency"].get("latency_p50_ms_median"), b["latency"].get("latency_p50_ms_median")
            ),
            _ms_note(g["latency"], b["latency"], "latency_p50_ms_median"),
        ),
        (
            Target("7b", "one-client p99 latency vs PgBouncer", 1.2, False),
            _ratio(
                g["latency"].get("latency_p99_ms_median"), b["latency"].get("latency_p99_ms_median")
            ),
            _ms_note(g["latency"], b["latency"], "latency_p99_ms_median"),
        ),
    ]
    out = []
    for target, value, note in checks:
        if value is None:
            status, note = "n/a", ""
        else:
            status = _status(value, target.goal, target.higher_is_better)
        out.append(
            {
                "target": target.number,
                "what": target.what,
                "value": None if value is None else round(value, 3),
                "goal": f"{'>=' if target.higher_is_better else '<='} {target.goal:g}{target.unit}",
                "goal_value": target.goal,
                "higher_is_better": target.higher_is_better,
                "unit": target.unit,
                "status": status,
                "note": note,
            }
        )
    return out


def paired_ratio(row: dict[str, Any], base: dict[str, Any]) -> float | None:
    """Median over the reps of ``row``'s tps / ``base``'s tps in the rep of the same number.

    Reps of the targets alternate (run_scenario), so a rep and its namesake ran seconds
    apart. When the machine changes speed during a run (seen in the storm: both poolers at
    ~285 or ~450 logins/s by the rep), the ratio of medians depends on which reps landed
    where; the ratio rep for rep does not. Shown beside the target, which stays defined on
    the medians."""
    base_tps = {rep: tps for rep, tps in base.get("tps_by_rep", []) if tps}
    ratios = [tps / base_tps[rep] for rep, tps in row.get("tps_by_rep", []) if rep in base_tps]
    return statistics.median(ratios) if ratios else None


def _paired_note(g: dict[str, Any], b: dict[str, Any]) -> str:
    ratio = paired_ratio(g, b)
    return "" if ratio is None else f"rep for rep {ratio:.2f}x"


def _us_note(g: dict[str, Any], b: dict[str, Any]) -> str:
    gv, pb = g.get("pooler_cpu_us_per_txn"), b.get("pooler_cpu_us_per_txn")
    return f"Greenvisor {_fmt(gv, 1)} us, PgBouncer {_fmt(pb, 1)} us"


def _ms_note(g: dict[str, Any], b: dict[str, Any], key: str) -> str:
    return f"Greenvisor {_fmt(g.get(key), 3)} ms, PgBouncer {_fmt(b.get(key), 3)} ms"


TARGET_COLUMNS = ("#", "target", "Greenvisor", "goal", "result", "for comparison")


def target_cells(check: dict[str, Any]) -> list[str]:
    value = check["value"]
    goal = check.get("goal_value")
    # A third digit where two would print the goal itself: 0.996x is a MISS of ">= 1x",
    # which "1.00x MISS" did not explain.
    digits = 3 if value is not None and goal is not None and f"{value:.2f}" == f"{goal:.2f}" else 2
    shown = "-" if value is None else f"{value:.{digits}f}{check['unit']}"
    return [check["target"], check["what"], shown, check["goal"], check["status"], check["note"]]


def targets_text(checks: list[dict[str, Any]]) -> str:
    lines = [list(TARGET_COLUMNS)] + [target_cells(c) for c in checks]
    widths = [max(len(line[i]) for line in lines) for i in range(len(TARGET_COLUMNS))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in out)


def targets_markdown(checks: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(TARGET_COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in TARGET_COLUMNS) + "|"
    body = ["| " + " | ".join(target_cells(c)) + " |" for c in checks]
    return "\n".join([head, rule, *body])


def text_table(rows: list[dict[str, Any]]) -> str:
    lines = [[title for title, _ in COLUMNS]] + [table_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    out = [_text_line(line, widths) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _text_line(cells: list[str], widths: list[int]) -> str:
    """Scenario, target and notes left-aligned, figures right-aligned."""
    last = len(cells) - 1
    padded = [
        cell.ljust(width) if i < 2 or i == last else cell.rjust(width)
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
    ]
    return "  ".join(padded).rstrip()


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(title for title, _ in COLUMNS) + " |"
    rule = "|" + "|".join(
        "---:" if 1 < i < len(COLUMNS) - 1 else "---" for i in range(len(COLUMNS))
    )
    rule += "|"
    body = ["| " + " | ".join(table_cells(r)) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def markdown_machine(machine: dict[str, Any]) -> str:
    return "\n".join(f"- {key}: {value}" for key, value in machine.items())


# --- several runs: issue 4's verdict ----------------------------------------------------------

#: Issue 4 defines each target on the medians of at least this many runs of the bench.
RUNS_FOR_VERDICT = 3


def _verdict(value: float, check: dict[str, Any]) -> str:
    return _status(value, check["goal_value"], check["higher_is_better"])


def combine_checks(per_run: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each target's median over the runs (``per_run``: one run's :func:`target_checks` each,
    in order): the verdict issue 4 asks for ("medians of >= 3 runs"). A run without a value
    for a target (the scenario did not run, or failed) does not count for it.

    Each check gets ``values`` (per run, None where it had none), ``runs`` (how many
    counted) and ``passed`` (how many of those were on the right side of the goal alone);
    ``status`` is the median's."""
    order: list[str] = []
    first: dict[str, dict[str, Any]] = {}
    for checks in per_run:
        for check in checks:
            if check["target"] not in first:
                order.append(check["target"])
                first[check["target"]] = check
    out = []
    for number in order:
        template = first[number]
        values: list[float | None] = []
        for checks in per_run:
            found = next((c for c in checks if c["target"] == number), None)
            values.append(None if found is None else found["value"])
        present = [v for v in values if v is not None]
        # Rounded as shown: the median of 1.3x and 1.1x is 1.2x, which meets "<= 1.2x".
        median = round(statistics.median(present), 3) if present else None
        combined = {key: template[key] for key in ("target", "what", "goal", "goal_value", "unit")}
        combined.update(
            value=median,
            values=values,
            runs=len(present),
            passed=sum(1 for v in present if _verdict(v, template) == "PASS"),
            status="n/a" if median is None else _verdict(median, template),
        )
        combined["note"] = (
            f"{combined['passed']} of {combined['runs']} runs pass alone" if present else ""
        )
        out.append(combined)
    return out


COMBINED_TAIL = ("median", "goal", "result", "runs passing alone")


def _combined_lines(combined: list[dict[str, Any]], labels: list[str]) -> list[list[str]]:
    lines = [["#", "target", *labels, *COMBINED_TAIL]]
    for check in combined:
        unit = check["unit"]
        per_run = ["-" if v is None else f"{v:.2f}{unit}" for v in check["values"]]
        median = target_cells(check)[2]  # a third digit where two would print the goal
        passing = f"{check['passed']} of {check['runs']}" if check["runs"] else "-"
        lines.append(
            [check["target"], check["what"], *per_run, median, check["goal"], check["status"]]
            + [passing]
        )
    return lines


def combined_text(combined: list[dict[str, Any]], labels: list[str]) -> str:
    """The targets, one column per run, then the median across them and its verdict."""
    lines = _combined_lines(combined, labels)
    size = len(lines[0])
    widths = [max(len(line[i]) for line in lines) for i in range(size)]
    out = [
        "  ".join(
            cell.ljust(w) if i < 2 or i >= size - 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def combined_markdown(combined: list[dict[str, Any]], labels: list[str]) -> str:
    lines = _combined_lines(combined, labels)
    head, body = lines[0], lines[1:]
    rule = "|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|"
    return "\n".join(
        ["| " + " | ".join(line) + " |" for line in [head]]
        + [rule]
        + ["| " + " | ".join(line) + " |" for line in body]
    )
