"""The experiment scripts' shared pieces (bench/experiments/common.sh, share_summary.py),
run end to end with a stand-in worker in place of bench/workloads.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parent.parent / "bench" / "experiments"

# Prints what workloads.py prints, at 1000 iterations/s times the cap, and
# echoes the slice it was given on stderr the way libvgpu's exit report does.
STAND_IN = r'''
import json, os, sys
cap = int(os.environ.get("CUDA_DEVICE_SM_LIMIT", "100"))
windows = [[i * 0.5, (i + 1) * 0.5, (1000 * cap // 100) // 2 + (5 if i == 0 else 0)] for i in range(5)]
print(json.dumps({"windows": windows, "iterations": sum(w[2] for w in windows), "t0": 0.0}))
if os.environ.get("LD_PRELOAD"):
    print(f"vgpu: compute share {cap}%: 9 turns, policy={os.environ['GPU_CORE_UTILIZATION_POLICY']} "
          f"period={os.environ.get('LIBVGPU_SHARE_PERIOD_MS')} charge={os.environ.get('LIBVGPU_TURN_CHARGE')} "
          f"region={os.environ['CUDA_DEVICE_MEMORY_SHARED_CACHE']}",
          file=sys.stderr)
'''


def write_run(path: Path, counts: list[int]) -> None:
    windows = [[i * 0.5, (i + 1) * 0.5, n] for i, n in enumerate(counts)]
    path.write_text("ready\n" + json.dumps({"windows": windows}) + "\n")


def summary(*args: str) -> str:
    done = subprocess.run([sys.executable, str(EXPERIMENTS / "share_summary.py"), *args],
                          capture_output=True, text=True, check=True)
    return done.stdout


def test_share_summary_leaves_out_the_first_window_and_reports_each(tmp_path: Path) -> None:
    write_run(tmp_path / "native.json", [1, 500, 500, 500])        # 1000 it/s once started
    write_run(tmp_path / "run.json", [400, 150, 100, 150, 999])    # first window: start-up burst
    line = summary(str(tmp_path / "native.json"), str(tmp_path / "run.json"), "x", "--windows", "--trim-last")
    # --trim-last: windows 2-4, 400 iterations in 1.5 s = 266.7 it/s = 26.7%; shares 30, 20, 30
    assert "266.7 it/s" in line and "share  26.7%" in line
    assert "windows 20.0..30.0%" in line and "[30.0 20.0 30.0]" in line
    # without it the last window counts: 1399 iterations in 2 s
    assert "share  70.0%" in summary(str(tmp_path / "native.json"), str(tmp_path / "run.json"), "x")


def test_share_vs_period_runs_each_cap_and_period_in_its_own_slice(tmp_path: Path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(STAND_IN)
    done = subprocess.run(["bash", str(EXPERIMENTS / "share_vs_period.sh"), str(tmp_path / "out"), "matmul", "3",
                           "30 70", "20 50"], capture_output=True, text=True, timeout=120,
                          env={"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
                               "WORKLOADS": f"{sys.executable} {worker}"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    shares = [line for line in lines if "it/s" in line]
    assert [line.split(":")[0].strip() for line in shares] == [
        f"matmul force {c}% period {p} ms" for c in (30, 70) for p in (20, 50)]
    assert all(f"share  {c}.0%" in line for c, line in zip((30, 30, 70, 70), shares))
    reports = [line for line in lines if line.startswith("turns")]
    assert [r.split("period=")[1].split()[0] for r in reports] == ["20", "50", "20", "50"]
    assert all("policy=force" in r for r in reports)
    regions = {r.split("region=")[1] for r in reports}
    assert len(regions) == 4  # a fresh slice for every run


def test_setting_ab_runs_each_value_of_a_setting_on_each_shape(tmp_path: Path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(STAND_IN)
    done = subprocess.run(["bash", str(EXPERIMENTS / "setting_ab.sh"), str(tmp_path / "out"), "3",
                           "LIBVGPU_TURN_CHARGE", "host gpu", "small:4194304:10 sync:4096:30"],
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
                               "WORKLOADS": f"{sys.executable} {worker}"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    shares = [line.split(":")[0].strip() for line in lines if "it/s" in line]
    assert shares == ["small 4194304 10% LIBVGPU_TURN_CHARGE=host", "small 4194304 10% LIBVGPU_TURN_CHARGE=gpu",
                      "sync 4096 30% LIBVGPU_TURN_CHARGE=host", "sync 4096 30% LIBVGPU_TURN_CHARGE=gpu"]
    reports = [line for line in lines if line.startswith("turns")]
    assert [r.split("charge=")[1].split()[0] for r in reports] == ["host", "gpu", "host", "gpu"]
    assert len({r.split("region=")[1] for r in reports}) == 4
    # one native run per shape, shared by both values
    assert sorted(p.name for p in (tmp_path / "out").glob("*.native.json")) == [
        "small.4194304.native.json", "sync.4096.native.json"]


def _fake_run(out: Path, name: str, rate: float, watts: float, clock: float, err: str = "") -> None:
    """A worker's JSON (10 windows of 0.5 s from t0=100) and NVML samples every 10 ms at constant power."""
    windows = [[i * 0.5, (i + 1) * 0.5, rate * 0.5] for i in range(10)]
    (out / f"{name}.json").write_text("ready\n" + json.dumps({"windows": windows, "t0": 100.0}) + "\n")
    rows = [f"{99 + i / 100:.6f},{watts * i * 10:.0f},{clock:.0f},{watts * 1000:.0f}" for i in range(800)]
    (out / f"{name}.nvml.csv").write_text("\n".join(rows) + "\n")
    (out / f"{name}.err").write_text(err)


def test_power_charge_summary_compares_the_model_with_what_the_gpu_gave(tmp_path: Path) -> None:
    # An H100-like GPU: native 1000 it/s at its 700 W limit; alone at 30% the turns run
    # 14% faster (342 it/s) at 372 W on average; one spinning thread draws 130 W.
    _fake_run(tmp_path, "rest", 0, 75, 345)
    _fake_run(tmp_path, "spin", 2000, 130, 1980)
    _fake_run(tmp_path, "native", 1000, 700, 1755)
    _fake_run(tmp_path, "force30_unaware", 342, 372, 1980)
    _fake_run(tmp_path, "force30_aware", 300, 350, 1980,
              "vgpu: compute share 30%: 9 turns, charge scale 1.109\n"
              "vgpu: power: 75 W at rest, 145 W taken between turns, limit 700 W; last window 350 W at 27.0% duty\n")
    done = subprocess.run([sys.executable, str(EXPERIMENTS / "power_charge_summary.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "at rest 75 W; native 1000.0 it/s at 700 W, SM clock 1755 MHz"
    assert lines[1] == "one thread spinning: 130 W at 1980 MHz (the gap's power, measured)"
    # Speed-up 1.140; the model: ((372-145)/0.3/(700-145))^(1/3) = 1.109 with libvgpu's gap,
    # 1.123 with the spinning thread's; a gap of 110 W would make it exact.
    assert lines[3] == "30 | 1.140 | 372 | 1980 | 1.109 (gap 145 W) | 1.123 | 110 W | 30.0% (1.109)"


def test_the_summarys_power_model_is_libvgpus(tmp_path: Path) -> None:
    # power_charge_summary.py writes power.h's formula again in Python to judge it;
    # it must be the same formula as libvgpu's, or the experiment judges something else.
    import ctypes
    import shutil

    if shutil.which("cc") is None:
        raise AssertionError("a C compiler is needed (CI installs one for csrc/)")
    root = EXPERIMENTS.parent.parent
    lib = tmp_path / "power.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", f"-I{root / 'csrc/src'}", f"-I{root / 'csrc/include'}",
                    str(root / "csrc/src/power.c"), "-o", str(lib)], check=True)
    scale = ctypes.CDLL(str(lib)).vgpu_power_scale
    scale.argtypes, scale.restype = [ctypes.c_double] * 4, ctypes.c_uint32
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        import power_charge_summary as summary
    finally:
        sys.path.remove(str(EXPERIMENTS))
    for watts in (150, 200, 372, 500, 660, 690):
        for duty in (0.1, 0.3, 0.5, 0.7, 0.9):
            for gap in (75, 120, 145):
                c = scale(watts, duty, gap, 700) / 1024
                assert abs(summary.model_speedup(watts, duty, gap, 700) - c) < 2e-3, (watts, duty, gap, c)
