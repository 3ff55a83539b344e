"""bench/spawner_form.py runs and reports what it promises (a smoke run; nothing is timed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import hami_spawner

BENCH = Path(__file__).resolve().parent.parent / "bench" / "spawner_form.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(  # the hami_spawner these tests import
        [str(Path(hami_spawner.__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_quick_json_run() -> None:
    done = run("--quick", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["profiles"] == 10 and result["goal_ms"] == 20.0
    assert result["offered_to_user"] == 12  # 5 public + 5 of group "everyone" + custom + CPU
    assert set(result["results"]) == {"form (new spawner)", "form (same spawner)", "manifest"}
    for row in result["results"].values():
        assert row["samples"] == 5 and 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"]
    assert {"python", "jupyterhub", "kubespawner", "date"} <= set(result["environment"])


def test_table_output_and_bad_arguments() -> None:
    done = run("--profiles", "3", "--samples", "2")
    assert done.returncode == 0, done.stderr
    assert "| operation | median ms |" in done.stdout and "| manifest |" in done.stdout
    assert "3 profiles configured" in done.stdout
    bad = run("--samples", "0")
    assert bad.returncode == 2 and "at least 1" in bad.stderr
