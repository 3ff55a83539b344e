"""bench/idle_reclaim_gpu.py over the fake driver: the GPU run's script itself works and checks what it claims."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "idle_reclaim_gpu.py"


def test_fake_run_reclaims_the_idle_kernel_and_spares_the_busy_ones(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--driver", "fake", "--idle-after", "4", "--grace", "2",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "idle_reclaim.json").read_text())
    assert len(result["checks"]) == 9 and all(result["checks"].values()), result["checks"]
    log = (tmp_path / "idle_reclaim.log").read_text()
    assert "PASS nvidia-smi: >= 20 GiB came back" in log and "FAIL" not in log
    # The samples are the record: both servers' reports and the driver's view each second.
    first = result["samples"][0]
    assert set(first) == {"time", "alice", "bob", "nvidia_smi"} and first["nvidia_smi"]["processes"]
