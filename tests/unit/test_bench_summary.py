"""bench.scenarios' summary: the ratio of medians decides a target; the ratio rep for rep
(each rep against the other target's rep of the same number) is shown beside it."""

from __future__ import annotations

import json
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


def _bench_result(storm: float, p99: float | None, commit: str = "abc1234") -> dict[str, Any]:
    """A saved result whose storm ratio is ``storm`` and one-client p99 ratio ``p99`` (no
    latency scenario when None)."""
    runs = [_run("storm", "pgbouncer", 1, 300.0), _run("storm", "greenvisor", 1, 300.0 * storm)]
    if p99 is not None:
        for target, ms in (("pgbouncer", 1.0), ("greenvisor", p99)):
            run = _run("latency", target, 1, 3000.0)
            run["latency_p99_ms"] = ms
            runs.append(run)
    return {
        "started": "2026-11-29T07:00:00+00:00",
        "machine": {"greenvisor commit": commit, "greenvisor hot path": "compiled with mypyc"},
        "runs": runs,
    }


def _checks_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    return scenarios.target_checks(scenarios.summarize(result["runs"]))


def test_the_verdict_of_several_runs_is_each_targets_median() -> None:
    """Issue 4: "medians of >= 3 runs". The storm that passed alone in one run of three
    misses on the median; a p99 (lower is better) that missed in one run passes."""
    results = [_bench_result(0.84, 1.01), _bench_result(1.12, 0.99), _bench_result(0.95, 1.41)]
    combined = scenarios.combine_checks([_checks_of(r) for r in results])
    storm, p99 = _check(combined, "6"), _check(combined, "7b")
    assert storm["values"] == pytest.approx([0.84, 1.12, 0.95])
    assert storm["value"] == pytest.approx(0.95)
    assert (storm["status"], storm["passed"], storm["runs"]) == ("MISS", 1, 3)
    assert p99["value"] == pytest.approx(1.01)
    assert (p99["status"], p99["passed"], p99["runs"]) == ("PASS", 2, 3)
    # A target no run measured is n/a, not a pass.
    select = _check(combined, "2")
    assert (select["status"], select["runs"], select["values"]) == ("n/a", 0, [None] * 3)
    text = scenarios.combined_text(combined, ["run 1", "run 2", "run 3"])
    storm_line = next(line for line in text.splitlines() if line.startswith("6 "))
    assert storm_line.split()[-7:] == ["0.95x", ">=", "1x", "MISS", "1", "of", "3"]


def test_a_run_without_the_scenario_does_not_count_for_its_target() -> None:
    results = [_bench_result(1.1, 1.3), _bench_result(0.9, None), _bench_result(1.05, 1.1)]
    p99 = _check(scenarios.combine_checks([_checks_of(r) for r in results]), "7b")
    assert p99["values"][1] is None
    assert p99["value"] == pytest.approx(1.2)  # the median of 1.3 and 1.1 only
    assert (p99["runs"], p99["passed"], p99["status"]) == (2, 1, "PASS")
    markdown = scenarios.combined_markdown([p99], ["run 1", "run 2", "run 3"])
    assert "| 7b | one-client p99 latency vs PgBouncer | 1.30x | - | 1.10x | 1.200x |" in markdown


def test_report_of_several_saved_runs_says_what_makes_them_incomparable(
    tmp_path: Any, capsys: Any
) -> None:
    from bench.run import main

    stale = _bench_result(0.9, 1.0, commit="def5678")
    stale["machine"]["greenvisor hot path"] = "pure Python (pooler/client.py changed ...)"
    names = []
    for i, result in enumerate([_bench_result(1.1, 1.0), stale]):
        path = tmp_path / f"run{i}.json"
        path.write_text(json.dumps(result))
        names.append(str(path))
    assert main(["--report", *names]) == 0
    out = capsys.readouterr().out
    assert "measured 2 commits (abc1234, def5678)" in out
    assert "WARNING: Greenvisor ran pure Python" in out
    assert "median of >= 3 runs; run `make bench` 1 more time(s)" in out
    storm_line = next(line for line in out.splitlines() if line.startswith("6 "))
    assert "1.10x" in storm_line and "0.90x" in storm_line and "1.000x" in storm_line


def test_runs_of_different_commits_with_the_same_pooler_sources_say_so(
    tmp_path: Any, capsys: Any
) -> None:
    from bench.run import _pooler_sources, main

    def saved(commit: str, sources: str) -> str:
        result = _bench_result(1.0, 1.0, commit=commit)
        result["machine"]["greenvisor sources"] = sources
        path = tmp_path / f"{commit}-{sources}.json"
        path.write_text(json.dumps(result))
        return str(path)

    assert main(["--report", saved("aaa1111", "s1"), saved("bbb2222", "s1")]) == 0
    out = capsys.readouterr().out
    assert "2 commits (aaa1111, bbb2222) with the same pooler sources" in out
    assert "mix whatever changed" not in out
    assert main(["--report", saved("aaa1111", "s1"), saved("ccc3333", "s2")]) == 0
    assert "their medians mix whatever changed" in capsys.readouterr().out
    # The checkout's own: the same as long as nothing under pooler/ changes.
    assert _pooler_sources() == _pooler_sources() and len(_pooler_sources()) == 12
