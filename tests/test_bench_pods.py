"""bench/pods.py without a GPU: how shares are taken over the common interval, and
how tenants are started and released together (stand-in workers)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import pods  # noqa: E402
from cbuild import build_tests  # noqa: E402


def test_shares_are_taken_over_the_interval_all_tenants_ran() -> None:
    # Two tenants that started 0.2 s apart: only windows inside [100.7, 102.0] count.
    a = {"t0": 100.0, "windows": [[0, 0.5, 10], [0.5, 1.0, 12], [1.0, 1.5, 14], [1.5, 2.0, 10]]}
    b = {"t0": 100.2, "windows": [[0, 0.5, 5], [0.5, 1.0, 6], [1.0, 1.5, 7], [1.5, 2.0, 5]]}
    assert pods.shares_of([a, b], 20.0) == [120.0, 65.0]
    with pytest.raises(pods.NoCommonWindow, match="no window"):
        pods.common_rate(a, 200.0, 201.0)


STANDIN = ("import json, os, sys; print('ready', flush=True); sys.stdin.readline(); "
           "print(json.dumps({k: os.environ.get(k) for k in ('LD_PRELOAD', 'CUDA_DEVICE_SM_LIMIT', "
           "'GPU_CORE_UTILIZATION_POLICY', 'LIBVGPU_ARBITER_SOCKET')}))")


def test_tenants_get_their_slice_and_start_together(tmp_path: Path) -> None:
    node = pods.Node("/nonexistent/libvgpu.so", pods=False)
    capped, native = pods.together([node.start(["-c", STANDIN], 30, "force"), node.start(["-c", STANDIN], None)])
    assert capped == {"LD_PRELOAD": "/nonexistent/libvgpu.so", "CUDA_DEVICE_SM_LIMIT": "30",
                      "GPU_CORE_UTILIZATION_POLICY": "force", "LIBVGPU_ARBITER_SOCKET": node.socket}
    assert native == dict.fromkeys(capped)  # no libvgpu at all
    shutil.rmtree(node.base)


def test_a_worker_that_fails_stops_the_run_with_its_output() -> None:
    node = pods.Node("/nonexistent/libvgpu.so", pods=False)
    with pytest.raises(pods.WorkerFailed, match="did not get ready"):
        pods.together([node.start(["-c", "import sys; print('no GPU here'); sys.exit(1)"], None)])
    shutil.rmtree(node.base)


HANGS_AFTER_GO = ("import sys, threading, time; print('ready', flush=True); sys.stdin.readline(); "
                  "threading.Thread(target=time.sleep, args=(600,), name='sleeper', daemon=True).start(); "
                  "time.sleep(600)")


def test_a_worker_stuck_after_go_is_reported_and_killed() -> None:
    node = pods.Node("/nonexistent/libvgpu.so", pods=False)
    fine = node.start(["-c", STANDIN], None)
    hung = node.start(["-c", HANGS_AFTER_GO], None)
    with pytest.raises(pods.Stuck, match="did not finish 2 s after go") as stuck:
        pods.together([fine, hung], timeout=2)
    report = stuck.value.report
    # The kernel's account: each of its two threads and where it sleeps.
    assert f"pid {hung.pid}" in report and "State:" in report and report.count("waits in") >= 2
    # Python's own, from faulthandler (PYTHONFAULTHANDLER=1, then SIGABRT): both threads' tracebacks.
    assert "Fatal Python error: Aborted" in report
    assert "Current thread" in report and 'File "<string>", line 1 in <module>' in report and "threading.py" in report
    assert hung.poll() is not None  # killed, not left running
    assert f"worker {fine.pid}: exited 0" in report
    shutil.rmtree(node.base)


def test_a_worker_that_never_gets_ready_is_reported() -> None:
    node = pods.Node("/nonexistent/libvgpu.so", pods=False)
    silent = node.start(["-c", "import time; time.sleep(600)"], None)
    with pytest.raises(pods.Stuck, match="did not get ready in 1 s") as stuck:
        pods.together([silent], ready_timeout=1)
    assert f"pid {silent.pid}" in stuck.value.report and silent.poll() is not None
    shutil.rmtree(node.base)


def test_a_worker_writing_much_to_stderr_does_not_block_the_others() -> None:
    # 1 MiB on stderr, far over a pipe's buffer, while the first worker is waited for.
    loud = ("import json, sys; print('ready', flush=True); sys.stdin.readline(); "
            "sys.stderr.write('x' * (1 << 20)); sys.stderr.flush(); print(json.dumps({'loud': True}))")
    node = pods.Node("/nonexistent/libvgpu.so", pods=False)
    first = ("import json, sys, time; print('ready', flush=True); sys.stdin.readline(); time.sleep(1); "
             "print(json.dumps({'first': True}))")
    assert pods.together([node.start(["-c", first], None), node.start(["-c", loud], None)], timeout=60) == [
        {"first": True}, {"loud": True}]
    shutil.rmtree(node.base)


def test_the_pods_copy_of_the_bench_scripts_runs_without_the_checkout() -> None:
    # Pods see only the node's directory, not the source tree: what is copied there must be whole.
    node = pods.Node("/nonexistent/libvgpu.so", pods=False)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONDONTWRITEBYTECODE": "1"}
    for name in pods.WORKER_SCRIPTS:
        done = subprocess.run([sys.executable, name, "--help"], cwd=node.base, env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0 and "usage:" in done.stdout, (name, done.stderr)
    shutil.rmtree(node.base)


POD_VIEW = ("import json, os, sys; print('ready', flush=True); sys.stdin.readline(); "
            "s = open('/etc/hami-jupyter/slice').read() if os.path.exists('/etc/hami-jupyter/slice') else None; "
            "print(json.dumps({'uid': os.getuid(), 'slice': s, 'tmp': sorted(os.listdir('/tmp')), "
            "'env_cap': os.environ.get('CUDA_DEVICE_SM_LIMIT')}))")


@pytest.mark.skipif(not pods.can_make_pods(), reason="pods need root, unshare, setpriv and overlay mounts (CI has them)")
def test_pods_get_their_slice_file_a_private_tmp_and_their_own_uid(tmp_path: Path) -> None:
    # What bench/pods.py's GPU tenants rely on, without a GPU: each pod's slice comes from a
    # root-owned file in its own /etc (not its environment), /tmp is its own, and so is its uid.
    node = pods.Node("/nonexistent/libvgpu.so", pods=True)
    node.as_root = not pods.another_uid_can_run("import json")  # a Python under /root: the pods keep root's uid
    marker = Path("/tmp") / f"hami-pods-host-{os.getpid()}"
    marker.write_text("the host's /tmp")
    try:
        a, b, bare = pods.together([node.start(["-c", POD_VIEW], 30, "force"), node.start(["-c", POD_VIEW], 70),
                                    node.start(["-c", POD_VIEW], None)], timeout=60)
    finally:
        marker.unlink()
        shutil.rmtree(node.base, ignore_errors=True)
    assert a["slice"] == ("CUDA_DEVICE_MEMORY_LIMIT=16g\nCUDA_DEVICE_SM_LIMIT=30\nGPU_CORE_UTILIZATION_POLICY=force\n"
                          f"LIBVGPU_ARBITER_SOCKET={node.socket}\n")
    assert "CUDA_DEVICE_SM_LIMIT=70\n" in b["slice"] and "GPU_CORE_UTILIZATION_POLICY=default\n" in b["slice"]
    assert bare["slice"] is None  # no libvgpu, no slice
    assert a["env_cap"] is None and b["env_cap"] is None  # the cap is the file's, not the environment's
    assert all(marker.name not in r["tmp"] for r in (a, b, bare))  # a private /tmp each
    if not node.as_root:
        assert len({a["uid"], b["uid"], bare["uid"]}) == 3 and 0 not in {a["uid"], b["uid"]}


@pytest.mark.skipif(not pods.can_make_pods(), reason="pods need root, unshare, setpriv and overlay mounts (CI has them)")
def test_the_whole_pods_run_on_the_fake_driver(tmp_path: Path) -> None:
    # bench/pods.py end to end, as on the GPU machine, with the real workers, daemon, pods
    # and libvgpu; only torch is a stand-in (tests/fake_torch) launching on the fake driver.
    # Shares and latencies depend on the loaded host here; the GPU machine's are in RESULTS.md.
    fake_torch = Path(tempfile.mkdtemp(prefix="hami-fake-torch-", dir="/var/tmp"))  # pods cannot see /tmp
    fake_torch.chmod(0o755)
    shutil.copytree(Path(__file__).parent / "fake_torch" / "torch", fake_torch / "torch")
    env = {**os.environ, "PYTHONPATH": str(fake_torch), "LD_LIBRARY_PATH": str(build_tests("plain") / "fakedrv"),
           "FAKE_CUDA_STATE": "/tmp/fake.state", "FAKE_CUDA_LAUNCH_NS": "200000"}
    try:
        done = subprocess.run([sys.executable, str(pods.BENCH_DIR / "pods.py"), "--out", str(tmp_path), "--quick"],
                              env=env, capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(fake_torch, ignore_errors=True)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "pods.json").read_text())
    assert not [k for k in results if k.startswith("stuck_")], done.stdout
    assert results["pods"] and results["alone"]["libvgpu_loaded"] is False
    for policy in ("default", "force"):
        shares = results[f"pair_{policy}"]["shares"]
        assert shares[0] < shares[1] and 50 <= sum(shares) <= 105, (policy, shares)
        assert all(r["libvgpu_loaded"] for r in results[f"pair_{policy}"]["runs"])
    assert len(results["four"]["shares"]) == 4 and sum(results["four"]["shares"]) <= 105
    notebook = results["notebook"]
    assert notebook["beside_busy_libvgpu"]["libvgpu_loaded"] and not notebook["beside_busy_native"]["libvgpu_loaded"]
    assert 0 < notebook["busy_keeps"] <= 105  # the busy tenant's rate while the notebook ran, not over 1 ms
    assert results["force"]["bursts"] == 200 and results["force"]["max_ms"] >= results["force"]["p50_ms"] > 0
    table = (tmp_path / "pods.md").read_text()
    for row in ("| busy 30/70 `default` as pods |", "| busy 30/70 `force` as pods |", "| four at 25% |",
                "| notebook 30% beside busy 70%, libvgpu `default` |", "| notebook alone, `force` 30%, 200 bursts |"):
        assert row in table, table
    assert "joins" in results["arbiter_log"]  # the daemon's log is kept
