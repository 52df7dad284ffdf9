"""The soak as a smoke check: ~45 s of mixed load with every kind of fault, then the leak
verdict (bench/soak.py). It starts its own Postgres and pooler, so it shares nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.pg import find_bindir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_a_short_soak_passes(tmp_path: Path) -> None:
    if find_bindir() is None:
        pytest.skip("PostgreSQL server binaries are not installed")
    out = tmp_path / "soak.json"
    argv = [sys.executable, "-m", "bench.soak", "--minutes", "0.75", "--seed", "7", "--warmup",
            "8", "--fault-gap", "4", "--idle-clients", "30", "--out", str(out)]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "verdict: PASS" in done.stdout
    result = json.loads(out.read_text())
    assert all(count >= 1 for count in result["faults"].values()), result["faults"]
    assert result["ledger"]["committed"] > 0 and result["ledger"]["killed"] > 0
    assert result["end"]["fds"] == result["baseline"]["fds"]
