"""The idle policy's decisions on a simulated clock: no server, no kernels, no waiting.

The real server and kernels are in tests/test_idle_reclaim.py; here every
step of the state machine is driven directly, with a kernel manager that
records what it is asked.
"""
from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from traitlets import TraitError

from hami_idle.fleet import ServerUsage, fleet_view
from hami_idle.hub import RunningServer
from hami_kernel.region import ProcessDeviceUsage, ProcessUsage, RegionSnapshot
from hami_kernel.serverext.idle import KernelIdle, Rule, idle_memory_by_device, kernel_idleness
from hami_kernel.serverext.reclaim import IdlePolicy
from hami_kernel.serverext.usage import LaunchClock

GiB = 1 << 30
GPU0, GPU1 = "GPU-0", "GPU-1"


def kernel(kid: str = "k1", memory: int = 2 * GiB, exec_idle: float | None = 100.0,
           gpu_idle: float | None = 100.0, state: str | None = "idle") -> KernelIdle:
    return KernelIdle(kernel_id=kid, path=f"{kid}.ipynb", execution_state=state, memory=memory,
                      by_device={GPU0: memory}, exec_idle=exec_idle, gpu_idle=gpu_idle)


class FakeKernels:
    def __init__(self) -> None:
        self.state = "idle"
        self.shut: list[str] = []

    def get_kernel(self, kid: str) -> Any:
        if kid in self.shut:
            raise KeyError(kid)
        return SimpleNamespace(execution_state=self.state)

    async def shutdown_kernel(self, kid: str) -> None:
        self.shut.append(kid)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy(**traits: Any) -> tuple[IdlePolicy, FakeKernels, Clock]:
    kernels, clock = FakeKernels(), Clock()

    async def no_report() -> dict[str, Any]:
        return {"kernels": []}

    p = IdlePolicy(report=no_report, kernel_manager=kernels, clock=clock, **traits)
    return p, kernels, clock


def step(p: IdlePolicy, k: KernelIdle, rule: Rule = Rule(60, GiB), action: str = "shutdown", grace: float = 30,
         source: str = "server") -> dict[str, Any]:
    return asyncio.run(p.consider(k, rule, action, grace, source))


def test_idle_is_the_shorter_of_the_two_quiet_times_and_needs_a_settled_kernel() -> None:
    assert kernel(exec_idle=500, gpu_idle=70).idle_seconds == 70
    assert kernel(exec_idle=None).idle_seconds is None and not kernel(exec_idle=None).is_idle(0)
    assert kernel(gpu_idle=None).idle_seconds is None
    assert kernel(exec_idle=60, gpu_idle=60).is_idle(60) and not kernel(exec_idle=59.9).is_idle(60)
    for state in ("busy", "starting", "restarting", None):
        assert not kernel(state=state).is_idle(0)
    rule = Rule(60, GiB)
    assert kernel(memory=GiB).reclaimable(rule) and not kernel(memory=GiB - 1).reclaimable(rule)
    assert not kernel(memory=0).reclaimable(Rule(0, 0))  # nothing held: nothing to give back


def test_a_kernels_processes_add_up_and_its_busiest_one_counts() -> None:
    def entry(pid: int, mem: int, quiet: float | None, uuid: str = GPU0) -> dict[str, Any]:
        return {"kernel_id": "k1", "pid": pid, "path": "a.ipynb", "execution_state": "idle", "idle_seconds": 300.0,
                "gpu_quiet_seconds": quiet, "launches": 3, "devices": [{"uuid": uuid, "memory_used_bytes": mem}]}
    report = {"kernels": [entry(1, GiB, 200.0), entry(2, 2 * GiB, 90.0, GPU1),
                          {**entry(3, 5 * GiB, 1.0), "kernel_id": None}]}  # no kernel of ours: left out
    (k,) = kernel_idleness(report).values()
    assert (k.memory, dict(k.by_device), k.gpu_idle, k.idle_seconds, k.launches) == \
        (3 * GiB, {GPU0: GiB, GPU1: 2 * GiB}, 90.0, 90.0, 6)
    assert idle_memory_by_device([k], 90) == {GPU0: GiB, GPU1: 2 * GiB} and idle_memory_by_device([k], 91) == {}
    report["kernels"][1]["gpu_quiet_seconds"] = None  # one process's GPU time unknown: the kernel's is too
    assert kernel_idleness(report)["k1"].idle_seconds is None


def test_announced_then_shut_down_at_the_deadline() -> None:
    p, kernels, clock = policy()
    k = kernel()
    assert step(p, k) == {"state": "warned", "deadline": 1030.0}
    (warning,) = p.notices
    assert warning["kind"] == "warning" and warning["deadline"] == 1030.0 and "in 30 s" in warning["message"]
    clock.now = 1029.0
    assert step(p, k) == {"state": "pending", "deadline": 1030.0} and kernels.shut == []
    report = p.annotate({"kernels": [{"kernel_id": "k1", "pid": 5, "path": "k1.ipynb", "execution_state": "idle",
                                      "idle_seconds": 100.0, "gpu_quiet_seconds": 100.0, "launches": 0,
                                      "devices": [{"uuid": GPU0, "memory_used_bytes": 2 * GiB}]}]})
    assert report["kernels"][0]["reclaim_at"] == 1030.0 and report["kernels"][0]["idle"] is False  # 100 s < 3600 s
    clock.now = 1030.0
    assert step(p, k) == {"state": "shut_down", "freed_bytes": 2 * GiB, "remaining_bytes": 0}
    assert kernels.shut == ["k1"]
    assert p.notices[-1]["kind"] == "shutdown" and p.notices[-1]["freed_bytes"] == 2 * GiB
    assert "2 GiB of GPU memory came back" in p.notices[-1]["message"]


def test_activity_calls_it_off_and_an_executing_kernel_is_never_shut_down() -> None:
    p, kernels, clock = policy()
    step(p, kernel())
    clock.now += 10
    assert step(p, kernel(exec_idle=2)) == {"state": "not_idle"}  # a cell ran
    assert p.notices[-1]["kind"] == "kept"
    clock.now += 100
    assert step(p, kernel())["state"] == "warned"  # a new idle spell, a new warning
    clock.now += 30
    # Due, but the kernel manager says it is executing at the last look: kept.
    kernels.state = "busy"
    assert step(p, kernel()) == {"state": "kept"} and kernels.shut == []
    # The report says executing: not idle at all, whatever the times.
    assert step(p, kernel(state="busy", exec_idle=1e6, gpu_idle=1e6)) == {"state": "not_idle"}
    assert kernels.shut == []


def test_warn_once_per_idle_spell() -> None:
    p, kernels, clock = policy()
    assert step(p, kernel(), action="warn") == {"state": "warned"}
    clock.now += 1000
    assert step(p, kernel(), action="warn") == {"state": "warned"}
    assert [n["kind"] for n in p.notices] == ["idle"] and kernels.shut == []
    step(p, kernel(gpu_idle=1), action="warn")  # it launched GPU work
    step(p, kernel(), action="warn")
    assert [n["kind"] for n in p.notices] == ["idle", "idle"]


def test_the_hubs_announcement_is_not_called_off_by_the_servers_own_rule() -> None:
    p, kernels, clock = policy()
    step(p, kernel(), Rule(60, GiB), source="hub")
    # The server's stricter rule (2 h idle) does not find it idle; the hub's shutdown stays.
    assert step(p, kernel(), Rule(7200, GiB), source="server") == {"state": "not_idle"}
    clock.now += 30
    assert step(p, kernel(), source="hub")["state"] == "shut_down"
    assert [n["source"] for n in p.notices] == ["hub", "hub"]


def test_bad_policy_settings_are_refused() -> None:
    with pytest.raises(TraitError, match="min_memory"):
        policy(min_memory="lots")
    with pytest.raises(TraitError, match="idle_after must be 0 or more"):
        policy(idle_after=-1)
    assert policy(min_memory="0")[0].rule == Rule(3600.0, 0)


def test_quiet_since_bounds_the_gpu_idle_time() -> None:
    def snap(launches: int) -> RegionSnapshot:
        proc = ProcessUsage(slot=0, pid=7, identity="k1", claimed_at=500.0, updated_at=None,
                            devices=(ProcessDeviceUsage(uuid=GPU0, memory_used=GiB, memory_limit=None,
                                                        launches=launches, sm_share=0.0, sm_limit=None),))
        return RegionSnapshot(path="/r", version=2, created_at=0.0, devices=(), processes=(proc,))
    clock = LaunchClock()
    assert clock.quiet_since("k1", 7, 500.0, 0, now=900.0) == 500.0  # never launched: since it attached
    clock.observe(snap(4), now=600.0)
    assert clock.quiet_since("k1", 7, 500.0, 4, now=900.0) == 600.0  # launched before we looked: since then
    clock.observe(snap(6), now=700.0)
    assert clock.quiet_since("k1", 7, 500.0, 6, now=900.0) == 700.0  # the count moved: since then
    assert LaunchClock().quiet_since("k1", 7, 500.0, 3, now=900.0) == 900.0  # never seen: not quiet at all


def test_the_fleet_view_by_user_and_by_gpu() -> None:
    def report(kid: str, memory: int, idle: float, uuid: str, limit: int) -> dict[str, Any]:
        return {"status": "ok", "message": "", "devices": [
            {"uuid": uuid, "name": "H200", "memory_used_bytes": memory, "memory_limit_bytes": limit,
             "compute_cap_ratio": 0.5}],
            "kernels": [{"kernel_id": kid, "pid": 1, "path": f"{kid}.ipynb", "execution_state": "idle",
                         "idle_seconds": idle, "gpu_quiet_seconds": idle, "launches": 1, "reclaim_at": None,
                         "devices": [{"uuid": uuid, "memory_used_bytes": memory}]}]}
    view = fleet_view([
        ServerUsage(RunningServer("bob", "", "/user/bob/"), report("kb", 4 * GiB, 10, GPU0, 40 * GiB)),
        ServerUsage(RunningServer("alice", "big", "/user/alice/big/"), report("ka", 20 * GiB, 7200, GPU0, 40 * GiB)),
        ServerUsage(RunningServer("carl", "", "/user/carl/"), None, "the server cannot be reached: refused"),
    ], Rule(3600, GiB), now=5.0)
    assert [(s["user"], s["idle_memory_bytes"]) for s in view["servers"]] == \
        [("alice", 20 * GiB), ("bob", 0), ("carl", 0)]
    assert view["servers"][2]["status"] == "unreadable" and "refused" in view["servers"][2]["message"]
    assert view["servers"][0]["kernels"][0]["reclaimable"] is True
    (gpu,) = view["gpus"]
    assert [(s["user"], s["server"], s["idle_memory_bytes"]) for s in gpu["slices"]] == \
        [("alice", "big", 20 * GiB), ("bob", "", 0)]
    assert (gpu["memory_used_bytes"], gpu["idle_memory_bytes"]) == (24 * GiB, 20 * GiB)
    assert (view["memory_bytes"], view["idle_memory_bytes"]) == (24 * GiB, 20 * GiB)


@pytest.mark.parametrize("args, env, reason", [
    (["--min-memory=lots"], True, "--min-memory: invalid memory size 'lots'"),
    (["--idle-after=-5"], True, "--idle-after must be 0 or more seconds"),
    ([], False, "JUPYTERHUB_API_TOKEN, JUPYTERHUB_API_URL not set"),
])
def test_the_service_refuses_bad_options_with_exit_2(args: list[str], env: bool, reason: str) -> None:
    import os
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
    if env:
        base.update(JUPYTERHUB_API_TOKEN="t", JUPYTERHUB_API_URL="http://127.0.0.1:9/hub/api")
    done = subprocess.run([sys.executable, "-m", "hami_idle", *args], env=base, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and reason in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_shutdown_the_hub_announced_is_carried_out_by_the_server_on_time() -> None:
    """Even with the server's own policy off, and the hub's service no longer asking."""
    reports = {"k1": 100.0}

    async def report() -> dict[str, Any]:
        return {"kernels": [{"kernel_id": "k1", "pid": 5, "path": "k1.ipynb", "execution_state": "idle",
                             "idle_seconds": reports["k1"], "gpu_quiet_seconds": 100.0, "launches": 0,
                             "devices": [{"uuid": GPU0, "memory_used_bytes": 2 * GiB}]}]}
    kernels, clock = FakeKernels(), Clock()
    p = IdlePolicy(report=report, kernel_manager=kernels, clock=clock, action="off")
    step(p, kernel(), Rule(60, GiB), source="hub", grace=30)
    assert asyncio.run(p.check()) == [{"state": "pending", "deadline": 1030.0}]
    clock.now = 1031.0
    assert asyncio.run(p.check())[0]["state"] == "shut_down" and kernels.shut == ["k1"]
    # Called off when it ran something before the deadline, under the hub's rule.
    kernels.shut.clear()
    p2 = IdlePolicy(report=report, kernel_manager=kernels, clock=clock, action="off")
    step(p2, kernel(), Rule(60, GiB), source="hub", grace=30)
    reports["k1"] = 3.0
    assert asyncio.run(p2.check()) == [{"state": "not_idle"}]
    assert [n["kind"] for n in p2.notices] == ["warning", "kept"] and kernels.shut == []


def test_a_shutdown_that_fails_is_said_once_and_the_policy_goes_on() -> None:
    p, kernels, clock = policy()

    async def refuse(kid: str) -> None:
        raise RuntimeError("the kernel's process cannot be signalled")
    kernels.shutdown_kernel = refuse  # type: ignore[method-assign]
    step(p, kernel())
    clock.now += 30
    assert step(p, kernel()) == {"state": "failed", "message": "the kernel's process cannot be signalled"}
    assert p.notices[-1]["kind"] == "failed" and "could not be shut down" in p.notices[-1]["message"]
    clock.now += 1
    assert step(p, kernel())["state"] == "warned"  # announced again, never a crash
