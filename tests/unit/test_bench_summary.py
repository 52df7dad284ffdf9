"""bench.scenarios' summary: the ratio of medians decides a target; the ratio rep for rep
(each rep against the other target's rep of the same number) is shown beside it."""

from __future__ import annotations

from typing import Any

import pytest

from bench import scenarios

pytestmark = pytest.mark.unit


def _run(scenario: str, target: str, rep: int, tps: float) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "target": target,
        "rep": rep,
        "tps": tps,
        "transactions": int(tps * 7),
        "failed": 0,
        "aborted": False,
        "returncode": 0,
        "latency_avg_ms": 1.0,
        "cpu_s": {"postgres": 1.0, target: 0.5, "pgbench": 1.0},
    }


def _check(checks: list[dict[str, Any]], number: str) -> dict[str, Any]:
    return next(c for c in checks if c["target"] == number)


def test_a_machine_that_slows_down_mid_run_moves_the_median_not_the_pairs() -> None:
    """Storm-like reps: the machine is fast for reps 1-3 and slow for 4-5. Greenvisor is
    3% behind PgBouncer in every rep, but the order of reps makes the medians' ratio ~0.7."""
    pgbouncer = [450, 440, 410, 295, 300]
    greenvisor = [436, 427, 290, 286, 291]  # rep 3 ran after the machine slowed
    runs = [_run("storm", "pgbouncer", i + 1, t) for i, t in enumerate(pgbouncer)]
    runs += [_run("storm", "greenvisor", i + 1, t) for i, t in enumerate(greenvisor)]
    rows = scenarios.summarize(runs)
    check = _check(scenarios.target_checks(rows), "6")
    assert check["value"] == pytest.approx(291 / 410, abs=1e-3)
    assert check["status"] == "MISS"  # the target stays defined on the medians
    pairs = sorted(g / b for g, b in zip(greenvisor, pgbouncer, strict=True))
    assert check["note"] == f"rep for rep {pairs[2]:.2f}x"
    assert pairs[2] == pytest.approx(0.969, abs=1e-3)


def test_only_reps_run_by_both_are_paired() -> None:
    runs = [
        _run("tpcb", "pgbouncer", 1, 1000),
        _run("tpcb", "pgbouncer", 2, 2000),
        _run("tpcb", "greenvisor", 2, 1800),
        _run("tpcb", "greenvisor", 3, 5000),  # no PgBouncer rep 3
        _run("prepared", "direct", 1, 40000),
        _run("prepared", "greenvisor", 1, 24000),
    ]
    rows = scenarios.summarize(runs)
    g = next(r for r in rows if r["scenario"] == "tpcb" and r["target"] == "greenvisor")
    b = next(r for r in rows if r["scenario"] == "tpcb" and r["target"] == "pgbouncer")
    assert scenarios.paired_ratio(g, b) == pytest.approx(0.9)
    checks = scenarios.target_checks(rows)
    assert _check(checks, "1")["note"] == "rep for rep 0.90x"
    assert _check(checks, "3")["note"] == "PgBouncer 1.18: n/a; rep for rep 0.60x"
    assert _check(checks, "2")["note"] == ""  # select did not run


def test_a_failed_rep_is_not_paired() -> None:
    bad = _run("tpcb", "greenvisor", 1, 10)
    bad["aborted"] = True
    runs = [_run("tpcb", "pgbouncer", 1, 1000), bad]
    rows = scenarios.summarize(runs)
    g = next(r for r in rows if r["target"] == "greenvisor")
    b = next(r for r in rows if r["target"] == "pgbouncer")
    assert scenarios.paired_ratio(g, b) is None


def test_a_run_of_the_plain_python_relay_is_flagged() -> None:
    from bench.run import hot_path_warning
    from pooler import hotpath

    stale = {"greenvisor hot path": "pure Python (pooler/client.py changed since the hot ..."}
    warning = hot_path_warning(stale)
    assert warning is not None and "hotpath build" in warning and "pure Python" in warning
    assert hot_path_warning({"greenvisor hot path": "compiled with mypyc (19 modules)"}) is None
    assert hot_path_warning({}) is None  # a result saved before the field existed
    # The phrase it looks for is the one hotpath.decide() writes for every fallback.
    use, why = hotpath.decide()
    assert use or why.startswith("pure Python")


def test_latency_runs_seven_short_reps_unless_told_otherwise() -> None:
    from bench.run import BenchError, estimate_minutes, parse_args, settings_from

    def settings(*argv: str) -> Any:
        return settings_from(parse_args(list(argv)), list(argv))

    latency = scenarios.scenario_by_name("latency")
    tpcb = scenarios.scenario_by_name("tpcb")
    default = settings()
    assert (default.reps_of(latency), default.duration_of(latency)) == (7, 3)
    assert (default.reps_of(tpcb), default.duration_of(tpcb)) == (5, 7)
    # A number given on the command line applies to every scenario.
    told = settings("--duration", "10", "--reps", "2")
    assert told.duration_of(latency) == told.duration_of(tpcb) == 10
    assert told.reps_of(latency) == told.reps_of(tpcb) == 2
    quick = settings("--quick")
    assert quick.duration_of(latency) == quick.duration_of(tpcb) == 4
    # The estimate follows each scenario's own reps x duration: latency's 7 x 3 s per target.
    only_latency = settings("--scenarios", "latency", "--warmup", "0")
    longer = settings("--scenarios", "latency", "--warmup", "0", "--duration", "7")
    assert estimate_minutes(longer) - estimate_minutes(only_latency) == pytest.approx(
        2 * 7 * (7 - 3) / 60
    )
    with pytest.raises(BenchError, match="--duration must be >= 1"):
        settings("--duration", "0")


def test_a_ratio_that_rounds_to_its_goal_shows_a_third_digit() -> None:
    def shown(value: float, goal: float) -> str:
        check = {
            "target": "1",
            "what": "w",
            "value": value,
            "goal": f">= {goal:g}x",
            "goal_value": goal,
            "unit": "x",
            "status": "",
            "note": "",
        }
        return scenarios.target_cells(check)[2]

    assert shown(0.996, 1.0) == "0.996x"  # printed "1.00x" beside MISS before
    assert shown(1.004, 1.0) == "1.004x"
    assert shown(0.97, 1.0) == "0.97x"
    assert shown(1.2, 1.2) == "1.200x"
    assert shown(0.66, 0.55) == "0.66x"
