"""bench/usage_endpoint.py runs and reports what it promises (a smoke run; nothing is timed)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "usage_endpoint.py"


def test_quick_json_run() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--json"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["driver"], result["kernels"], result["requests"], result["goal_p99_ms"]) == ("fake", 2, 20, 5.0)
    assert 0 < result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert 0 < result["api_status_p50_ms"] <= result["api_status_p99_ms"]
    assert result["report_bytes"] > 500  # two kernels' entries, not an empty report


def test_bad_arguments() -> None:
    bad = subprocess.run([sys.executable, str(BENCH), "--kernels", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "at least 1" in bad.stderr
