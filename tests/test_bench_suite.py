"""CPU-only tests of the GPU benchmark suite (bench/suite.py, bench/gpu_suite/, bench/workloads.py).

The statistics, the tables, the command line and the orchestration are tested
here; the orchestration with a fake worker (FAKE_WORKER below) that speaks the
workers' protocol ("ready", "go", one JSON line) and makes up numbers: a
hooked worker with a compute cap of C% runs at exactly C% of the native rate.
No torch, CuPy or GPU is needed.
"""
from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from unittest.mock import MagicMock

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from gpu_suite import (cli, environment, measurements, metadata, plan, processes, report,  # noqa: E402
                       window_stats)
import workloads  # noqa: E402

FAKE_WORKER = r'''
import json, os, sys, time

program, args = sys.argv[1], sys.argv[2:]
env = os.environ
hooked = "LD_PRELOAD" in env
cap = int(env.get("CUDA_DEVICE_SM_LIMIT", "0") or 0)

def option(name, default):
    return type(default)(args[args.index(name) + 1]) if name in args else default

def log(event):
    if env.get("FAKE_LOG"):
        with open(env["FAKE_LOG"], "a") as f:
            f.write(json.dumps(event) + "\n")

log({"program": program, "pid": os.getpid(), "hooked": hooked,
     "region": env.get("CUDA_DEVICE_MEMORY_SHARED_CACHE"), "arbiter": env.get("LIBVGPU_ARBITER_DIR"),
     "sm": env.get("CUDA_DEVICE_SM_LIMIT"), "policy": env.get("GPU_CORE_UTILIZATION_POLICY"),
     "charge": env.get("LIBVGPU_TURN_CHARGE")})
if env.get("FAKE_FAIL") == program:
    print("boom: " + program + " broke", file=sys.stderr)
    sys.exit(1)
if env.get("FAKE_HANG_READY") == program:
    time.sleep(3600)

limit = env.get("CUDA_DEVICE_MEMORY_LIMIT", "80g")
result = {"program": program, "mem_total": int(limit[:-1]) << 30,
          "libvgpu_loaded": hooked and not env.get("FAKE_NOT_LOADED")}
if program == "info":
    result.update(device="Fake GPU", torch="0.0", cupy="0.0")
elif program == "launch":
    result.update(ns_per_launch=3030.0 if hooked else 3000.0)
elif program == "tflops":
    result.update(tflops=779.0 if hooked else 780.0)
elif program == "init":
    result.update(init_ms=110.0 if hooked else 100.0)
else:
    if "--wait-go" in args:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            sys.exit(3)
    if env.get("FAKE_HANG_RUN") == program:
        time.sleep(3600)
    window = option("--window", 0.5)
    count = round(1000 * window * (cap / 100 if cap else 1))
    n = round(option("--seconds", 3.0) / window)
    result.update(t0=time.monotonic(), iteration="fake",
                  windows=[[i * window, (i + 1) * window, count] for i in range(n)])
print(json.dumps(result), flush=True)
'''


# --------------------------------------------------------------------------- statistics

WINDOWS = [(0.0, 0.5, 40), (0.5, 1.0, 50), (1.0, 1.5, 50), (1.5, 2.0, 60)]


def test_rate_counts_iterations_over_the_span_of_the_windows() -> None:
    assert window_stats.rate(WINDOWS) == pytest.approx(200 / 2.0)
    assert window_stats.rate(WINDOWS[1:]) == pytest.approx(160 / 1.5)
    assert window_stats.window_rates(WINDOWS) == pytest.approx([80, 100, 100, 120])
    with pytest.raises(ValueError):
        window_stats.rate([])


def test_uneven_windows_weigh_by_their_length() -> None:
    windows = [(0.0, 0.5, 50), (0.5, 1.5, 50)]  # the second lasted twice as long (a drain)
    assert window_stats.rate(windows) == pytest.approx(100 / 1.5)
    assert window_stats.window_rates(windows) == pytest.approx([100, 50])


def test_first_seconds_and_steady_select_windows() -> None:
    assert window_stats.first_seconds(WINDOWS, 1.0) == WINDOWS[:2]
    assert window_stats.first_seconds(WINDOWS, 10.0) == WINDOWS
    assert window_stats.steady(WINDOWS) == WINDOWS[1:]
    with pytest.raises(ValueError, match="at least 2 windows"):
        window_stats.steady(WINDOWS[:1])


def test_cv_excludes_the_first_window() -> None:
    rates = [100, 100, 120]
    mean = sum(rates) / 3
    stdev = (sum((r - mean) ** 2 for r in rates) / 2) ** 0.5
    assert window_stats.window_cv(WINDOWS) == pytest.approx(stdev / mean)
    assert window_stats.coefficient_of_variation([5.0, 5.0]) == 0.0
    with pytest.raises(ValueError):
        window_stats.coefficient_of_variation([1.0])


def test_native_rate_leaves_out_the_first_window() -> None:
    assert window_stats.native_rate(WINDOWS) == pytest.approx(160 / 1.5)


def steady_windows(per_window: float, n: int = 20, window: float = 0.5) -> list:
    return [(i * window, (i + 1) * window, per_window) for i in range(n)]


def test_share_stats_passes_within_two_points_and_fails_outside() -> None:
    native = 1000.0
    ok = window_stats.share_stats(steady_windows(0.319 * 500), native, 30, 2.0, 10.0)
    assert ok["share"] == pytest.approx(31.9) and ok["share_first"] == pytest.approx(31.9)
    assert ok["cv"] == pytest.approx(0.0) and ok["failed"] == []
    high = window_stats.share_stats(steady_windows(0.321 * 500), native, 30, 2.0, 10.0)
    assert high["failed"] == ["share", "first 10 s"]


def test_share_stats_flags_a_burst_at_the_start_and_an_unsteady_run() -> None:
    native = 1000.0
    windows = [(i * 0.5, (i + 1) * 0.5, 250 if i < 4 else 150) for i in range(60)]  # 50% for 2 s, then 30%
    stats = window_stats.share_stats(windows, native, 30, 2.0, 10.0)
    assert stats["share_first"] == pytest.approx(100 * (4 * 250 + 16 * 150) / 10 / native)
    assert "first 10 s" in stats["failed"] and "CV" in stats["failed"]
    assert stats["cv"] > measurements.CV_GOAL


def test_share_stats_without_first_and_cv_goals_judges_the_share_only() -> None:
    windows = [(0.0, 0.5, 100), (0.5, 1.0, 200), (1.0, 1.5, 150)]  # unsteady, mean 30% of 1000/s
    stats = window_stats.share_stats(windows, 1000.0, 30, 3.0, 10.0, first_matters=False)
    assert stats["share"] == pytest.approx(30.0) and stats["failed"] == []


def test_common_interval_and_windows_within_line_up_concurrent_runs() -> None:
    a = {"t0": 100.0, "windows": [[0.0, 0.5, 10], [0.5, 1.0, 10], [1.0, 1.5, 10]]}
    b = {"t0": 100.2, "windows": [[0.0, 0.5, 10], [0.5, 1.0, 10], [1.0, 1.5, 10]]}
    lo, hi = window_stats.common_interval([a, b])
    assert (lo, hi) == pytest.approx((100.2, 101.5))
    assert window_stats.windows_within(a, lo, hi) == [(0.5, 1.0, 10), (1.0, 1.5, 10)]
    assert window_stats.windows_within(b, lo, hi) == [(0.0, 0.5, 10), (0.5, 1.0, 10)]
    with pytest.raises(ValueError, match="do not overlap"):
        window_stats.common_interval([a, {"t0": 200.0, "windows": [[0.0, 0.5, 1]]}])


def test_concurrent_shares_use_the_common_interval() -> None:
    runs = [{"t0": 10.0, "windows": [[i * 0.5, (i + 1) * 0.5, c] for i in range(6)]}
            for c in (150, 350)]
    runs[1]["t0"] = 10.01
    tenants, overlap = window_stats.concurrent_shares(runs, ["A", "B"], [30, 70], 1000.0, 10.0)
    assert [t["stats"]["share"] for t in tenants] == pytest.approx([30.0, 70.0])
    assert overlap == pytest.approx(2.99)
    assert all(t["stats"]["failed"] == [] for t in tenants)


# --------------------------------------------------------------------------- tables

def test_markdown_table_pads_and_aligns_columns() -> None:
    table = report.markdown_table(("name", "value"), [["a", "1.0"], ["longer", "22.5"]], "lr")
    assert table.splitlines() == [
        "| name   | value |",
        "|--------|------:|",
        "| a      |   1.0 |",
        "| longer |  22.5 |",
    ]
    with pytest.raises(ValueError):
        report.markdown_table(("a", "b"), [["only one"]], "ll")


def test_fmt_and_verdict() -> None:
    assert report.fmt(None) == "—"
    assert report.fmt(1.23456, 3) == "1.235"
    assert report.verdict(None) == "—"
    assert report.verdict([]) == "ok"
    assert report.verdict(["share", "CV"]) == "FAIL: share, CV"


def canned_records() -> list:
    share = window_stats.share_stats(steady_windows(0.3 * 500), 1000.0, 30, 2.0, 10.0)
    return [
        {"measurement": "launch", "launches": 200000, "repeats": 5, "native_runs": [1, 2, 3], "hooked_runs": [1, 2, 3],
         "native": 3000.0, "hooked": 3060.0, "ratio": 1.02},
        {"measurement": "matmul", "size": 8192, "native_runs": [1] * 5, "hooked_runs": [1] * 5,
         "native": 780.0, "hooked": 775.0, "ratio": 775 / 780},
        {"measurement": "baseline", "shape": "matmul", "rate": 1000.0, "windows": steady_windows(500),
         "iteration": "bf16 matmul"},
        {"measurement": "share", "shape": "matmul", "cap": 30, "policy": "force", "stats": share},
        {"measurement": "init_sequential", "native_init_ms": [1.0] * 10, "native": 300.0, "hooked": 330.0,
         "native_wall": 1000.0, "hooked_wall": 1040.0},
    ]


def cells(line: str) -> list:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_render_report_shows_values_goals_and_verdicts() -> None:
    markdown = report.render_report(canned_records(), [{"label": "init batch", "error": "worker x exited\nmore"}])
    assert "### Overhead: native vs libvgpu" in markdown
    assert "| launch: ns per empty kernel launch (median of 3 processes, each the median of 5 x 200000)" in markdown
    matmul_line = next(line for line in markdown.splitlines() if line.startswith("| matmul"))
    assert "0.9936" in matmul_line and "≥ 0.995" in matmul_line and "FAIL: ratio" in matmul_line
    share_line = next(line for line in markdown.splitlines() if line.startswith("| matmul alone"))
    assert cells(share_line) == ["matmul alone", "force", "30", "30.0", "30.0", "0.0", "30 ± 2, CV ≤ 5%", "ok"]
    assert "+30.0 ms" in markdown and "FAIL: extra" in markdown
    assert "### Native baselines" in markdown
    assert "- **init batch**: worker x exited" in markdown
    assert "**1 of 3 checks met their goal; 1 step(s) failed to run.**" in markdown


@pytest.mark.parametrize("dirty, source", [
    ([], "- **Source:** abc123; libvgpu sha256 0123456789abcdef"),
    ([".whl/", "csrc/src/pacer.c"], "- **Source:** abc123 + uncommitted changes (.whl/, csrc/src/pacer.c); "
                                   "libvgpu sha256 0123456789abcdef"),
    (True, "- **Source:** abc123 + uncommitted changes; libvgpu sha256 0123456789abcdef"),  # saved by older runs
])
def test_source_line_names_the_uncommitted_paths(dirty: object, source: str) -> None:
    meta = {"git_commit": "abc123", "git_dirty": dirty, "library_sha256": "0123456789abcdef" * 4}
    assert source in report.render_header(meta, [])


def test_metadata_lists_what_git_reports_as_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "tracked.txt").write_text("x")
    (tmp_path / "edited.txt").write_text("x")
    subprocess.run(["git", "-C", str(tmp_path), "add", "tracked.txt", "edited.txt"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "-m", "x", "edited.txt"], check=True)
    (tmp_path / "edited.txt").write_text("changed")  # git says " M edited.txt": a leading space
    (tmp_path / "stray.txt").write_text("y")
    monkeypatch.setattr(metadata, "REPO_ROOT", tmp_path)
    library = tmp_path / "tracked.txt"
    meta = metadata.metadata(cli.parse_args(["--dry-run"]), str(library), measurements.Durations.make())
    assert sorted(meta["git_dirty"]) == ["edited.txt", "stray.txt", "tracked.txt"]


# --------------------------------------------------------------------------- command line and plan

def test_parse_args_defaults_and_options() -> None:
    args = cli.parse_args([])
    assert args.only == measurements.MEASUREMENTS and not args.quick and args.out is None
    assert args.long_seconds is None and args.caps == measurements.SHARE_CAPS
    args = cli.parse_args(["--quick", "--only", "share,init", "--out", "r.json", "--long-seconds", "200",
                             "--shapes", "matmul", "--caps", "30,45"])
    assert args.quick and args.only == ("share", "init") and args.out == Path("r.json")
    assert args.long_seconds == 200.0 and args.shapes == ("matmul",) and args.caps == (30, 45)


@pytest.mark.parametrize("argv", [["--only", "nope"], ["--only", ""], ["--caps", "0"], ["--caps", "x"],
                                  ["--shapes", "graph"], ["--long-seconds", "1"]])
def test_parse_args_rejects_bad_values(argv: list, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(argv)
    assert exc.value.code == 2


def test_durations_quick_is_about_ten_times_shorter_and_long_sets_share_only() -> None:
    full, quick = measurements.Durations.make(), measurements.Durations.make(quick=True)
    assert (full.share_s, full.tenants_s, full.launches) == (30.0, 30.0, 200_000)
    assert quick.share_s == full.share_s / 10 and quick.launches == full.launches / 10
    long = measurements.Durations.make(long_seconds=200)
    assert long.share_s == 200.0 and long.tenants_s == 30.0 and long.baseline_s == full.baseline_s


def test_plan_puts_each_baseline_once_before_its_first_use() -> None:
    steps = plan.plan(plan.Selection(), measurements.Durations.make())
    labels = [s.label for s in steps]
    assert labels[0].startswith("preflight")
    baselines = [label for label in labels if label.startswith("native baseline")]
    assert [b.split()[2] for b in baselines] == ["matmul", "small", "sync", "graph", "coop"]
    assert labels.index("native baseline: matmul alone for 10 s") < labels.index("share: force 10% matmul for 30 s")
    assert labels.index("native baseline: coop alone for 10 s") < next(
        i for i, label in enumerate(labels) if "coop alone at force" in label)
    assert sum(1 for label in labels if label.startswith("share:")) == 12
    total = sum(s.estimate_s for s in steps)
    assert 10 * 60 < total < 25 * 60  # the default suite stays within ~25 minutes


def test_plan_for_only_tenants_measures_its_own_baselines() -> None:
    steps = plan.plan(plan.Selection(names=("tenants",)), measurements.Durations.make())
    assert [s.label.split(":")[0] for s in steps] == ["preflight"] + ["native baseline"] * 3 + ["tenants"] * 7


def test_plan_for_a_long_run_of_one_shape_and_cap() -> None:
    d = measurements.Durations.make(long_seconds=200)
    steps = plan.plan(plan.Selection(names=("share",), shapes=("matmul",), caps=(30,)), d)
    assert [s.label for s in steps][1:] == ["native baseline: matmul alone for 10 s",
                                            "share: force 30% matmul for 200 s"]


def test_dry_run_prints_the_plan_and_starts_nothing(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["--dry-run", "--worker-cmd", "/nonexistent/worker"]) == 0
    err = capsys.readouterr().err
    assert "plan: 30 steps, estimated" in err and "[30/30] fourtenants" in err


# --------------------------------------------------------------------------- environments

def test_clean_env_drops_the_preload_and_every_slice_variable() -> None:
    base = {"PATH": "/bin", "LD_LIBRARY_PATH": "/usr/lib", "LD_PRELOAD": "/x.so",
            "CUDA_DEVICE_SM_LIMIT": "30", "CUDA_DEVICE_SM_LIMIT_0": "20", "CUDA_DEVICE_MEMORY_LIMIT_1": "1g",
            "GPU_CORE_UTILIZATION_POLICY": "force", "CUDA_DEVICE_MEMORY_SHARED_CACHE": "/r",
            "LIBCUDA_LOG_LEVEL": "4", "LIBVGPU_ARBITER_DIR": "/a", "CUDA_VISIBLE_DEVICES": "0"}
    env = environment.clean_env(base)
    assert env == {"PATH": "/bin", "LD_LIBRARY_PATH": "/usr/lib", "CUDA_VISIBLE_DEVICES": "0",
                   "PYTHONUNBUFFERED": "1"}


def test_worker_env_native_and_hooked() -> None:
    base = {"PATH": "/bin", "CUDA_DEVICE_SM_LIMIT": "99"}
    assert "CUDA_DEVICE_SM_LIMIT" not in environment.worker_env(base, "/lib.so", None)
    capped = environment.Slice(region="/t/a.region", arbiter_dir="/t/arbiter", sm_limit=30, policy="force")
    env = environment.worker_env(base, "/lib.so", capped)
    assert env["LD_PRELOAD"] == "/lib.so" and env["CUDA_DEVICE_SM_LIMIT"] == "30"
    assert env["GPU_CORE_UTILIZATION_POLICY"] == "force" and env["CUDA_DEVICE_MEMORY_LIMIT"] == "16g"
    assert env["CUDA_DEVICE_MEMORY_SHARED_CACHE"] == "/t/a.region" and env["LIBVGPU_ARBITER_DIR"] == "/t/arbiter"
    uncapped = environment.worker_env(base, "/lib.so", environment.Slice(region="/r", arbiter_dir="/a"))
    assert "CUDA_DEVICE_SM_LIMIT" not in uncapped and "GPU_CORE_UTILIZATION_POLICY" not in uncapped


def test_slice_env_reaches_every_hooked_worker_and_no_native_one(fake: dict,
                                                                 capsys: pytest.CaptureFixture) -> None:
    rc, data = run_suite(fake, "--quick", "--only", "share", "--shapes", "sync", "--caps", "30",
                         "--slice-env", "LIBVGPU_TURN_CHARGE=gpu")
    assert rc == 0
    events = worker_log(fake)
    assert {e["charge"] for e in events if e["hooked"]} == {"gpu"}
    assert {e["charge"] for e in events if not e["hooked"]} == {None}
    assert data["suite"]["slice_env"] == {"LIBVGPU_TURN_CHARGE": "gpu"}
    assert "- **libvgpu settings:** LIBVGPU_TURN_CHARGE=gpu" in capsys.readouterr().out


@pytest.mark.parametrize("setting, message", [
    ("LIBVGPU_TURN_CHARGE", "expected NAME=VALUE"),
    ("PATH=/bin", "expected NAME=VALUE for a LIBVGPU_* or LIBCUDA_* setting"),
    ("LIBVGPU_ARBITER_DIR=/x", "is set by each measurement's slice"),
])
def test_slice_env_refuses_what_is_not_a_library_setting(setting: str, message: str,
                                                          capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.parse_args(["--slice-env", setting])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_parse_size() -> None:
    assert environment.parse_size("16g") == 16 << 30
    assert environment.parse_size("4096m") == 4 << 30
    assert environment.parse_size("1024") == 1024


# --------------------------------------------------------------------------- workloads (pure parts)

class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_run_windows_counts_each_iteration_in_the_window_it_ran_in() -> None:
    clock = FakeClock()
    syncs = []

    def step() -> None:
        clock.now += 0.1

    def synchronize() -> None:
        clock.now += 0.05  # draining the queue takes time too
        syncs.append(clock.now)

    t0, windows = workloads.run_windows(step, synchronize, seconds=1.0, window=0.5, clock=clock)
    assert t0 == pytest.approx(50.05)
    assert [w[2] for w in windows] == [5, 5]
    assert windows[0][0] == 0.0 and windows[0][1] == pytest.approx(0.55)
    assert windows[1][0] == pytest.approx(windows[0][1])  # contiguous
    assert windows[1][1] == pytest.approx(1.1)
    assert len(syncs) == 3  # before the start and at each window's end


def test_run_windows_ends_after_one_slow_iteration() -> None:
    clock = FakeClock()

    def step() -> None:
        clock.now += 5.0

    _, windows = workloads.run_windows(step, lambda: None, seconds=1.0, window=0.5, clock=clock)
    assert windows == [(0.0, 5.0, 1)]


def test_wait_for_go_says_ready_then_waits() -> None:
    out = io.StringIO()
    workloads.wait_for_go(io.StringIO("go\n"), out)
    assert out.getvalue() == "ready\n"
    with pytest.raises(SystemExit) as exc:
        workloads.wait_for_go(io.StringIO(""), io.StringIO())
    assert exc.value.code == 3


def test_workloads_command_line() -> None:
    args = workloads.parse_args(["matmul", "--seconds", "3", "--wait-go", "--json"])
    assert (args.program, args.seconds, args.window, args.wait_go, args.json) == ("matmul", 3.0, 0.5, True, True)
    args = workloads.parse_args(["launch", "--launches", "10"])
    assert args.launches == 10 and args.warmup_launches == 10_000 and not args.json
    assert set(workloads.PROGRAMS) == {"info", "launch", "tflops", "init", "matmul", "small", "sync",
                                       "graph", "coop", "spin"}


def test_emit_prints_one_json_line() -> None:
    out = io.StringIO()
    workloads.emit({"b": 1, "a": [1, 2]}, True, out)
    assert out.getvalue() == '{"a": [1, 2], "b": 1}\n'


def test_importing_workloads_needs_no_gpu_library() -> None:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import workloads; "
            "bad = {'torch', 'cupy', 'numpy'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code, str(BENCH)], check=True)


@pytest.fixture
def gpu_stubs(monkeypatch: pytest.MonkeyPatch) -> dict:
    """torch, cupy and numpy as MagicMocks, with the few values the programs compute with."""
    torch, cupy, numpy = MagicMock(name="torch"), MagicMock(name="cupy"), MagicMock(name="numpy")
    torch.__version__, torch.version.cuda = "2.11.0", "13.0"
    torch.cuda.mem_get_info.return_value = (1 << 30, 16 << 30)
    torch.cuda.Event.return_value.elapsed_time.return_value = 100.0
    props = torch.cuda.get_device_properties.return_value
    props.name, props.multi_processor_count = "Stub GPU", 132
    cupy.__version__ = "14.2.0"
    cupy.cuda.runtime.memGetInfo.return_value = (1 << 30, 16 << 30)
    cupy.cuda.runtime.getDeviceCount.return_value = 1
    cupy.cuda.runtime.driverGetVersion.return_value = 13000
    cupy.cuda.Device.return_value.attributes = {"MultiProcessorCount": 132}
    cupy.zeros.return_value.min.return_value = 1000.0
    cupy.zeros.return_value.max.return_value = 1000.0
    for name, module in (("torch", torch), ("cupy", cupy), ("numpy", numpy)):
        monkeypatch.setitem(sys.modules, name, module)
    return {"torch": torch, "cupy": cupy}


def run_program(argv: list, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> dict:
    monkeypatch.setattr(sys, "stdin", io.StringIO("go\n"))
    assert workloads.main([*argv, "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:-1] == (["ready"] if "--wait-go" in argv else [])
    return json.loads(lines[-1])


@pytest.mark.parametrize("shape", sorted(workloads.SHAPES))
def test_every_window_shape_runs_against_stubs(shape: str, gpu_stubs: dict, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    # 0.3 s of 0.01 s windows: two windows even if one stubbed step stalls for 0.25 s
    # (a busy CI machine); 0.05 s once gave a single window there.
    result = run_program([shape, "--seconds", "0.3", "--window", "0.01", "--warmup-seconds", "0.01",
                          "--wait-go"], monkeypatch, capsys)
    assert result["program"] == shape and result["mem_total"] == 16 << 30
    assert result["libvgpu_loaded"] is False and len(result["windows"]) >= 2
    assert result["iterations"] == sum(w[2] for w in result["windows"]) > 0
    assert isinstance(result["t0"], float) and result["iteration"]


def test_coop_rejects_a_kernel_that_did_not_finish(gpu_stubs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu_stubs["cupy"].zeros.return_value.min.return_value = 0.0
    with pytest.raises(RuntimeError, match="did not run to completion"):
        workloads.main(["coop", "--seconds", "0.02", "--window", "0.01", "--warmup-seconds", "0.01"])


def test_coop_falls_back_when_the_relocatable_build_fails(gpu_stubs: dict, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    cupy = gpu_stubs["cupy"]
    cupy.RawKernel.return_value.compile.side_effect = RuntimeError("cudadevrt is not found")
    result = run_program(["coop", "--seconds", "0.02", "--window", "0.01", "--warmup-seconds", "0.01"],
                         monkeypatch, capsys)
    assert "without -rdc" in result["build"]
    function = cupy.RawKernel.return_value.kernel
    assert function.call_args.kwargs == {"enable_cooperative_groups": True}


@pytest.mark.parametrize("argv, key, value", [
    (["launch", "--launches", "100", "--warmup-launches", "10"], "launches", 100),
    (["tflops", "--size", "64", "--products", "10", "--warmup-seconds", "0.01"], "tflops", 2 * 64 ** 3 * 10 / 0.1 / 1e12),
    (["init"], "devices", 1),
    (["info"], "device", "Stub GPU"),
])
def test_other_programs_run_against_stubs(argv: list, key: str, value: object, gpu_stubs: dict,
                                          monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    result = run_program(argv, monkeypatch, capsys)
    # (no pytest.approx here: it trips over the stubbed numpy)
    assert math.isclose(result[key], value) if isinstance(value, float) else result[key] == value
    assert result["mem_total"] == 16 << 30


# --------------------------------------------------------------------------- orchestration with a fake worker

@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    worker = tmp_path / "fake_worker.py"
    worker.write_text(FAKE_WORKER)
    library = tmp_path / "libvgpu.so"
    library.write_text("not really a library")
    log = tmp_path / "workers.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    for name in ("FAKE_FAIL", "FAKE_HANG_READY", "FAKE_HANG_RUN", "FAKE_NOT_LOADED"):
        monkeypatch.delenv(name, raising=False)
    return {"argv": ["--worker-cmd", f"{sys.executable} {worker}", "--library", str(library)],
            "out": tmp_path / "results.json", "log": log}


FAST = replace(measurements.Durations.make(quick=True), rounds=2, init_sequential=2, init_batch=6)
SHORT_TIMEOUTS = processes.Timeouts(ready_s=2.0, margin_s=5.0, factor=1.0, kill_grace_s=1.0)


def run_suite(fake: dict, *extra: str, timeouts: processes.Timeouts = SHORT_TIMEOUTS) -> tuple:
    rc = cli.main([*fake["argv"], "--out", str(fake["out"]), *extra], timeouts=timeouts, durations=FAST)
    return rc, json.loads(fake["out"].read_text())


def worker_log(fake: dict) -> list:
    return [json.loads(line) for line in fake["log"].read_text().splitlines()]


def test_whole_suite_with_a_fake_worker(fake: dict, capsys: pytest.CaptureFixture) -> None:
    rc, data = run_suite(fake, "--quick")
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert data["errors"] == []
    kinds = [r["measurement"] for r in data["records"]]
    assert kinds.count("share") == 12 and kinds.count("baseline") == 5 and kinds.count("held") == 2
    for record in data["records"]:
        if record["measurement"] in ("share", "held"):
            assert record["stats"]["share"] == pytest.approx(record["cap"], abs=0.01)
            assert record["stats"]["failed"] == []
    tenants = next(r for r in data["records"] if r["measurement"] == "tenants")
    assert [t["stats"]["share"] for t in tenants["tenants"]] == pytest.approx([30.0, 70.0])
    four = next(r for r in data["records"] if r["measurement"] == "fourtenants")
    assert four["aggregate"] == pytest.approx(1.0)
    assert data["suite"]["library_sha256"] and data["suite"]["durations"]["init_batch"] == 6
    assert "[1/30] preflight" in err and "elapsed" in err and "[30/30] fourtenants" in err
    rows = [cells(line) for line in out.splitlines() if line.startswith("| ")]
    assert ["matmul alone", "force", "10", "10.0", "10.0", "0.0", "10 ± 2, CV ≤ 5%", "ok"] in rows
    assert ["4 x 25% matmul: T3-25%", "default", "25", "25.0", "25.0", "0.0", "25 ± 3", "ok"] in rows
    # Every check passes, except perhaps the init batch's, whose fake processes only time process start-up.
    assert not [row for row in rows if row[-1].startswith("FAIL") and not row[0].startswith("init:")]


def test_every_tenant_gets_a_fresh_region_except_the_init_batch(fake: dict) -> None:
    rc, _ = run_suite(fake, "--quick", "--only", "tenants,init,fourtenants")
    assert rc == 0
    events = worker_log(fake)
    native = [e for e in events if not e["hooked"]]
    assert native and all(e["region"] is None and e["sm"] is None for e in native)
    hooked = [e for e in events if e["hooked"]]
    batch_regions = {e["region"] for e in hooked if e["region"].endswith("init-batch.region")}
    assert len(batch_regions) == 1
    others = [e["region"] for e in hooked if not e["region"].endswith("init-batch.region")]
    assert len(others) == len(set(others))  # each hooked process has its own region
    capped = [e for e in hooked if e["program"] == "matmul"]
    # 30/70 together, four at 25, and a 70% neighbour for each of graph and coop
    assert sorted(e["sm"] for e in capped) == ["25"] * 4 + ["30"] + ["70"] * 3
    assert all(e["policy"] == "default" for e in capped)
    # each of graph and coop: a 30/70 pair of its own, 30 beside a matmul, and 30 alone under force
    held = [e for e in hooked if e["program"] in ("graph", "coop")]
    assert sorted((e["program"], e["policy"], e["sm"]) for e in held) == [
        ("coop", "default", "30"), ("coop", "default", "30"), ("coop", "default", "70"), ("coop", "force", "30"),
        ("graph", "default", "30"), ("graph", "default", "30"), ("graph", "default", "70"),
        ("graph", "force", "30")]
    uncapped = [e for e in hooked if e["program"] == "init"]
    assert all(e["sm"] is None and e["policy"] is None for e in uncapped)


def test_a_failing_worker_fails_its_step_loudly_and_the_suite_goes_on(
        fake: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("FAKE_FAIL", "tflops")
    rc, data = run_suite(fake, "--quick", "--only", "launch,matmul")
    out, err = capsys.readouterr()
    assert rc == 1
    assert [e["label"].split(":")[0] for e in data["errors"]] == ["matmul"]
    message = data["errors"][0]["error"]
    assert "exited with status 1" in message and "boom: tflops broke" in message
    assert "command:" in message and "slice env: (native)" in message
    assert "boom: tflops broke" in err and "FAILED" in err
    assert [r["measurement"] for r in data["records"]] == ["info", "launch"]
    assert "### Errors" in out


def test_a_failing_preflight_stops_the_suite(fake: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FAIL", "info")
    rc, data = run_suite(fake, "--quick")
    assert rc == 1 and data["records"] == [] and len(data["errors"]) == 1


def test_a_baseline_failure_fails_its_dependents_quickly(fake: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FAIL", "sync")
    rc, data = run_suite(fake, "--quick", "--only", "share")
    assert rc == 1
    failed = [e["label"] for e in data["errors"]]
    assert failed[0] == "native baseline: sync alone for 1.5 s" and len(failed) == 5
    assert "no native baseline for shape 'sync'" in data["errors"][1]["error"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def pids_of(fake: dict, program: str) -> list:
    return [e["pid"] for e in worker_log(fake) if e["program"] == program]


def test_a_worker_that_never_gets_ready_is_killed(fake: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_HANG_READY", "small")
    started = time.monotonic()
    rc, data = run_suite(fake, "--quick", "--only", "share", "--shapes", "small", "--caps", "30")
    assert rc == 1 and time.monotonic() - started < 30
    assert "was not ready after 2 s; killed" in data["errors"][0]["error"]
    assert all(not alive(pid) for pid in pids_of(fake, "small"))


def test_a_worker_that_runs_too_long_is_killed(fake: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_HANG_RUN", "graph")
    timeouts = replace(SHORT_TIMEOUTS, margin_s=1.0, factor=0.0)
    rc, data = run_suite(fake, "--quick", "--only", "tenants", timeouts=timeouts)
    assert rc == 1
    errors = {e["label"].split(" for ")[0]: e["error"] for e in data["errors"]}
    assert "timed out; killed" in errors["native baseline: graph alone"]
    assert all(not alive(pid) for pid in pids_of(fake, "graph"))


def test_a_hooked_worker_without_the_library_loaded_is_an_error(
        fake: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NOT_LOADED", "1")
    rc, data = run_suite(fake, "--quick", "--only", "launch")
    assert rc == 1
    assert "libvgpu is not loaded" in data["errors"][0]["error"]  # already in the preflight


def test_render_reprints_saved_results(fake: dict, capsys: pytest.CaptureFixture) -> None:
    rc, _ = run_suite(fake, "--quick", "--only", "launch,init")
    assert rc == 0
    first = capsys.readouterr().out
    assert cli.main(["--render", str(fake["out"])]) == 0
    assert capsys.readouterr().out == first


def test_sigterm_to_the_suite_ends_its_workers_and_keeps_partial_results(
        fake: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_HANG_RUN", "matmul")
    suite_cmd = [sys.executable, str(BENCH / "suite.py"), *fake["argv"], "--quick", "--only", "launch,share",
                 "--out", str(fake["out"])]
    proc = subprocess.Popen(suite_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (fake["log"].exists() and pids_of(fake, "matmul")):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.5)  # let it get past "ready" into its (endless) run
    proc.terminate()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "launch: ns per empty kernel launch" in out
    data = json.loads(fake["out"].read_text())
    assert data["suite"]["interrupted"] is True
    assert [r["measurement"] for r in data["records"]] == ["info", "launch"]
    assert all(not alive(pid) for pid in pids_of(fake, "matmul"))
