"""Slices on a machine with two NVIDIA GPUs (an H200 pair): every limit lands on its own card.

1. Per-device memory limits (CUDA_DEVICE_MEMORY_LIMIT_0/_1) follow the CUDA
   ordinal in every numbering (CUDA_VISIBLE_DEVICES unset, "1,0", the UUIDs
   reversed): PyTorch sees and is held to each ordinal's limit, and the memory
   shows on the physical GPU behind that ordinal, in nvidia-smi and in the
   shared region (read by UUID).
2. %vgpu's text, rendered from that region, shows each GPU's usage under its own UUID.
3. The single-machine spawner with both GPUs: a two-GPU profile gets a share of
   each card; four quarters go 2+2 under "spread" and 4+0 under "binpack"; a
   slice that no card (or no pair of cards) can take is refused with HTTP 409.
4. Compute caps per device (CUDA_DEVICE_SM_LIMIT_0=30, _1=60, policy force)
   hold on each GPU while both are busy.

Run on the GPU machine: pytest -m gpu -v -s tests/gpu/test_two_gpus.py
Skips (via the module's skipif and tests/gpu/conftest.py) unless nvidia-smi lists 2 GPUs.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

import hami_kernel
from hami_kernel.region import read_region
from hami_kernel.status import gather
from hami_kernel.status_text import format_text, memory_text, short_uuid

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(ROOT / "bench"))  # noqa: E402
from hub_harness import Hub, process_env  # noqa: E402
from gpu_suite import environment, window_stats  # noqa: E402  (the suite's share arithmetic)

GiB = 1 << 30
MiB = 1 << 20
BENCH = ROOT / "bench"


def _smi_env() -> dict[str, str]:
    """nvidia-smi as the machine sees it: never under libvgpu, never with a narrowed view."""
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "CUDA_VISIBLE_DEVICES")}


def physical_gpus() -> list[tuple[int, str]]:
    """(index, UUID) of each GPU nvidia-smi lists (MIG instances not counted); [] without one."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60, env=_smi_env())
        if listed.returncode != 0 or sum(line.startswith("GPU ") for line in listed.stdout.splitlines()) < 2:
            return []
        out = subprocess.run([smi, "--query-gpu=index,uuid", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60, env=_smi_env())
    except (OSError, subprocess.TimeoutExpired):
        return []
    gpus = []
    for line in out.stdout.strip().splitlines():
        index, uuid = (part.strip() for part in line.split(","))
        gpus.append((int(index), uuid))
    return sorted(gpus)


GPUS = physical_gpus()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(len(GPUS) < 2, reason="needs two NVIDIA GPUs (nvidia-smi -L lists fewer)"),
]


def uuid_of(index: int) -> str:
    return dict(GPUS)[index]


def same_gpu(a: str, b: str) -> bool:
    """UUIDs compared as hex digits: nvidia-smi, the region and torch spell them alike, but
    only the digits matter."""
    def digits(u: str) -> str:
        return u.lower().removeprefix("gpu-").replace("-", "")
    return digits(a) == digits(b)


# ---- a process under libvgpu on both GPUs --------------------------------------------------

LIMITS = {0: 4 * GiB, 1: 6 * GiB}  # per CUDA ordinal, as CUDA_DEVICE_MEMORY_LIMIT_<ordinal>
LIMIT_ENV = {"CUDA_DEVICE_MEMORY_LIMIT_0": "4g", "CUDA_DEVICE_MEMORY_LIMIT_1": "6g"}

# The numberings of test 1: CUDA_VISIBLE_DEVICES (None = unset) and the physical
# GPU index behind CUDA ordinals 0 and 1.
NUMBERINGS = {
    "unset": (lambda: None, (0, 1)),
    "1,0": (lambda: "1,0", (1, 0)),
    "uuids-reversed": (lambda: f"{uuid_of(1)},{uuid_of(0)}", (1, 0)),
}

# Ordinal i holds (i + 1) GiB, so the two GPUs' usage can be told apart; while
# holding it, an allocation just past what is free must fail and one just under
# it must succeed (the limit is that ordinal's, not the other's).
HOLDER = r"""
import json, sys, torch
GiB, MiB = 1 << 30, 1 << 20
def attempt(nbytes, device):
    try:
        block = torch.empty(nbytes, dtype=torch.uint8, device=device)
        del block
        torch.cuda.empty_cache()
        return "ok"
    except torch.cuda.OutOfMemoryError:
        return "OutOfMemoryError"
devices, held = [], []
for i in range(torch.cuda.device_count()):
    uuid = getattr(torch.cuda.get_device_properties(i), "uuid", None)
    free, total = torch.cuda.mem_get_info(i)
    held.append(torch.empty((i + 1) * GiB, dtype=torch.uint8, device=f"cuda:{i}"))
    torch.cuda.synchronize(i)
    free_held, _ = torch.cuda.mem_get_info(i)
    devices.append({"ordinal": i, "uuid": None if uuid is None else f"GPU-{uuid}", "total": total,
                    "free": free, "held": (i + 1) * GiB, "free_held": free_held,
                    "past": attempt(free_held + 64 * MiB, f"cuda:{i}"),
                    "under": attempt(free_held - 256 * MiB, f"cuda:{i}")})
print("ready " + json.dumps({"count": torch.cuda.device_count(), "devices": devices}), flush=True)
sys.stdin.readline()
"""


def base_env() -> dict[str, str]:
    """This environment minus LD_PRELOAD, CUDA_VISIBLE_DEVICES and every variable libvgpu reads."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "CUDA_VISIBLE_DEVICES")
           and not k.startswith(environment.SLICE_VARIABLES)}
    env["PYTHONUNBUFFERED"] = "1"
    # CUDA numbers the GPUs as nvidia-smi does, so "1,0" means nvidia-smi's GPU 1 first.
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    return env


def slice_env(tmp: Path, visible: str | None, **extra: str) -> dict[str, str]:
    env = base_env()
    env.update({"LD_PRELOAD": str(hami_kernel.library_path()),
                "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(tmp / "region"),
                "LIBVGPU_ARBITER_DIR": str(tmp / "arbiter"),
                "LIBCUDA_LOG_LEVEL": "2", **extra})
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    return env


@contextmanager
def holding(env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], dict]]:
    """The HOLDER process, stopped on exit; yields it and what it reported."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("ready "):
            proc.kill()
            raise AssertionError(f"the holder failed:\n{line}{proc.communicate(timeout=60)[1]}")
        yield proc, json.loads(line.split(" ", 1)[1])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)


def smi_usage_mib() -> dict[tuple[int, str], int]:
    """(pid, GPU UUID) -> MiB, as the GPUs themselves report it."""
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,gpu_uuid,used_memory",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True,
                         timeout=60, env=_smi_env())
    assert out.returncode == 0, out.stderr
    usage = {}
    for line in out.stdout.strip().splitlines():
        pid, uuid, mib = (part.strip() for part in line.split(","))
        assert mib.isdigit(), f"nvidia-smi gives no per-process memory here: {line!r}"
        usage[(int(pid), uuid.lower())] = int(mib)
    return usage


def check_holder_report(seen: dict, physical: tuple[int, int]) -> list[str]:
    """Test 1's checks of what PyTorch saw; returns each ordinal's physical UUID."""
    assert seen["count"] == 2, seen
    uuids = []
    for ordinal, dev in enumerate(seen["devices"]):
        uuid = uuid_of(physical[ordinal])
        if dev["uuid"] is not None:  # torch >= 2.1 reports it: the numbering is the one expected
            assert same_gpu(dev["uuid"], uuid), (ordinal, dev, GPUS)
        assert dev["total"] == LIMITS[ordinal], dev
        assert dev["past"] == "OutOfMemoryError", f"ordinal {ordinal} allocated past its limit: {dev}"
        assert dev["under"] == "ok", f"ordinal {ordinal} is held below its limit: {dev}"
        uuids.append(uuid)
    return uuids


@pytest.mark.parametrize("numbering", list(NUMBERINGS))
def test_memory_limit_per_device_lands_on_the_right_gpu(tmp_path: Path, numbering: str) -> None:
    visible, physical = NUMBERINGS[numbering]
    env = slice_env(tmp_path, visible(), **LIMIT_ENV)
    with holding(env) as (proc, seen):
        uuids = check_holder_report(seen, physical)
        usage = smi_usage_mib()
        snap = read_region(tmp_path / "region")
    mine = next(p for p in snap.processes if p.pid == proc.pid)
    for ordinal, uuid in enumerate(uuids):
        held_mib = (ordinal + 1) * 1024
        smi = usage.get((proc.pid, uuid.lower()), 0)
        other = usage.get((proc.pid, uuids[1 - ordinal].lower()), 0)
        dev = snap.device(uuid)
        proc_use = next(d for d in mine.devices if same_gpu(d.uuid, uuid))
        print(f"[{numbering}] CUDA_VISIBLE_DEVICES={visible()!r} ordinal {ordinal} -> "
              f"GPU {physical[ordinal]} {uuid}: torch total {seen['devices'][ordinal]['total'] / GiB:g} GiB, "
              f"free holding {held_mib} MiB {seen['devices'][ordinal]['free_held'] / MiB:.0f} MiB; "
              f"nvidia-smi {smi} MiB here, {other} MiB on the other GPU; region limit "
              f"{dev.memory_limit} B, used {dev.memory_used / MiB:.0f} MiB (process {proc_use.memory_used / MiB:.0f} MiB)")
        # nvidia-smi: the ordinal's block plus a context (< 1 GiB) on the GPU behind it.
        assert held_mib <= smi < held_mib + 1024, (ordinal, uuid, usage)
        # The region, by UUID: that ordinal's limit, and its usage on its own GPU.
        assert dev.memory_limit == LIMITS[ordinal], dev
        assert held_mib * MiB <= dev.memory_used < (held_mib + 1024) * MiB, dev
        assert held_mib * MiB <= proc_use.memory_used < (held_mib + 1024) * MiB, proc_use
        assert abs(dev.memory_used / MiB - smi) <= 512, (dev, smi)
    assert {d.uuid.lower() for d in snap.devices} == {u.lower() for u in uuids}


def device_block(text: str, uuid: str) -> str:
    """The lines format_text shows for one GPU (its header line to the next GPU's)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{short_uuid(uuid)}  ({uuid})"))
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].startswith("GPU-") and "  (GPU-" in lines[i]), len(lines))
    return "\n".join(lines[start:end])


def test_vgpu_status_shows_each_gpu_under_its_uuid(tmp_path: Path) -> None:
    visible, physical = NUMBERINGS["uuids-reversed"]
    env = slice_env(tmp_path, visible(), **LIMIT_ENV)
    with holding(env) as (proc, seen):
        uuids = check_holder_report(seen, physical)
        snap = read_region(tmp_path / "region")
    text = format_text(gather(env, pid=proc.pid, snapshot=snap))  # what %vgpu shows, for the holder
    print(text)
    for ordinal, uuid in enumerate(uuids):
        dev = snap.device(uuid)
        block = device_block(text, dev.uuid)
        own = next(d for p in snap.processes if p.pid == proc.pid for d in p.devices
                   if same_gpu(d.uuid, uuid))
        assert dev.memory_used >= (ordinal + 1) * GiB, dev
        assert f"slice {memory_text(LIMITS[ordinal])}: {memory_text(dev.memory_used)} used" in block, block
        assert f"this kernel: {memory_text(own.memory_used)} used" in block, block
        other = memory_text(LIMITS[1 - ordinal])
        assert f"slice {other}:" not in block, block


# ---- the single-machine spawner across the two cards -----------------------------------------

HUB_CONFIG = """
from hami_spawner import Allocator, discover_gpus
from hami_spawner import local
local.set_shared_allocator(Allocator(discover_gpus()[:2]))  # both GPUs, and only two
c.JupyterHub.spawner_class = "hami_spawner.local.SimpleLocalGpuSpawner"
c.SimpleLocalGpuSpawner.home_dir_template = {home!r}
c.LocalGpuSpawner.region_root = {regions!r}
c.Spawner.environment.update({server_env!r})
c.GpuProfiles.profiles = [
    {{"name": "pair", "display_name": "Quarter of each GPU", "memory": "{quarter}MiB", "cores": 25, "count": 2}},
    {{"name": "quarter-spread", "display_name": "Quarter (spread)", "memory": "{quarter}MiB", "cores": 25,
      "policy": "spread"}},
    {{"name": "quarter-binpack", "display_name": "Quarter (binpack)", "memory": "{quarter}MiB", "cores": 25,
      "policy": "binpack"}},
    {{"name": "three-quarters", "display_name": "Three quarters", "memory": "{three}MiB", "cores": 75}},
]
"""

PAIR_PROBE = """
import json, os, torch
n = torch.cuda.device_count()
seen = []
for i in range(n):
    free, total = torch.cuda.mem_get_info(i)
    try:
        torch.empty(total + (1 << 30), dtype=torch.uint8, device=f"cuda:{i}")
        oom = False
    except torch.cuda.OutOfMemoryError:
        oom = True
    uuid = getattr(torch.cuda.get_device_properties(i), "uuid", None)
    seen.append({"total": total, "oom": oom, "uuid": None if uuid is None else f"GPU-{uuid}"})
print(json.dumps({"devices": n, "seen": seen, "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                  "preload": os.environ.get("LD_PRELOAD", "")}))
"""


@pytest.fixture
def hub_gpus() -> list:
    pytest.importorskip("jupyterhub")
    pytest.importorskip("pynvml")
    from hami_spawner import discover_gpus
    gpus = discover_gpus()[:2]
    if len(gpus) < 2:
        pytest.skip("NVML reports fewer than two GPUs")
    return gpus


@pytest.fixture
def quarter(hub_gpus: list) -> int:
    """A quarter of the smaller GPU's memory, in bytes (whole MiB)."""
    return min(g.memory for g in hub_gpus) // 4 // MiB * MiB


@pytest.fixture
def hub(tmp_path: Path, hub_gpus: list, quarter: int) -> Iterator[Hub]:
    """A fresh hub for each test, so placements start from two empty GPUs."""
    server_env = {"LIBVGPU_ARBITER_DIR": str(tmp_path / "arbiter"),
                  **{k: os.environ[k] for k in ("LIBVGPU_LIBRARY", "LD_LIBRARY_PATH") if k in os.environ}}
    three = min(g.memory for g in hub_gpus) * 3 // 4 // MiB
    config = HUB_CONFIG.format(home=str(tmp_path / "home" / "{username}"), regions=str(tmp_path / "regions"),
                               server_env=server_env, quarter=quarter // MiB, three=three)
    hub = Hub(tmp_path / "hub", config)
    started = time.monotonic()
    hub.start()
    print(f"hub up in {time.monotonic() - started:.1f} s")
    try:
        yield hub
    finally:
        hub.stop()  # cleanup_servers is False: the servers are killed below
        hub.kill_servers()


def spawn(hub: Hub, user: str, profile: str) -> dict[str, str]:
    """Start the user's server on the profile; returns the server process's env."""
    hub.create_user(user)
    started = time.monotonic()
    status, body = hub.spawn(user, {"profile": profile}, timeout=120)
    assert status in (201, 202), body
    env = process_env(hub.server_pid(user))
    print(f"{user} {profile}: up in {time.monotonic() - started:.1f} s, "
          f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')}")
    return env


def test_two_gpu_profile_gets_a_share_of_each_card(hub: Hub, hub_gpus: list, quarter: int) -> None:
    both = [g.uuid for g in hub_gpus]
    env = spawn(hub, "pair-user", "pair")
    assert env["CUDA_VISIBLE_DEVICES"].split(",") == both, env["CUDA_VISIBLE_DEVICES"]
    assert env["CUDA_DEVICE_MEMORY_LIMIT"] == f"{quarter // MiB}m" and env["CUDA_DEVICE_SM_LIMIT"] == "25"
    seen = json.loads(hub.run_in_kernel("pair-user", PAIR_PROBE, timeout=180).strip().splitlines()[-1])
    print("kernel of the two-GPU slice:", seen)
    assert seen["devices"] == 2, seen
    assert seen["preload"].split(":")[0].endswith("libvgpu.so"), seen
    for i, dev in enumerate(seen["seen"]):
        assert dev["total"] == quarter, (i, dev, quarter)
        assert dev["oom"] is True, f"allocated past the slice on GPU {i}"
        if dev["uuid"] is not None:
            assert same_gpu(dev["uuid"], both[i]), (i, dev)
    snap = read_region(env["CUDA_DEVICE_MEMORY_SHARED_CACHE"])
    print("the server's region:", [(d.uuid, d.memory_limit, d.sm_limit) for d in snap.devices])
    assert {d.uuid.lower() for d in snap.devices} == {u.lower() for u in both}
    assert all(d.memory_limit == quarter and d.sm_limit == 25 for d in snap.devices), snap.devices


@pytest.mark.parametrize("policy, expected", [("spread", (2, 2)), ("binpack", (4, 0))])
def test_four_quarters_are_placed_by_policy(hub: Hub, hub_gpus: list, policy: str,
                                            expected: tuple[int, int]) -> None:
    placed: Counter[str] = Counter()
    for n in range(1, 5):
        env = spawn(hub, f"{policy}{n}", f"quarter-{policy}")
        placed[env["CUDA_VISIBLE_DEVICES"]] += 1
    counts = tuple(placed.get(g.uuid, 0) for g in hub_gpus)
    print(f"{policy}: quarters per GPU {counts} ({dict(placed)})")
    assert counts == expected and sum(placed.values()) == 4, placed

    # What no card can take now is refused before anything starts.
    refused, label, head = {
        # 2+2: each GPU has half free; three quarters fit on neither.
        "spread": ("three-quarters", "Three quarters", "No GPU on this machine has "),
        # 4+0: GPU 0 is full, so a quarter of each GPU has only one card to go on.
        "binpack": ("pair", "Quarter of each GPU", "The 'Quarter of each GPU' slice needs 2 GPUs "),
    }[policy]
    hub.create_user("refused")
    status, body = hub.request("POST", "/hub/api/users/refused/server", {"profile": refused})
    print(f"{policy}: {refused} -> HTTP {status}: {body}")
    assert status == 409, body
    message = body["message"]
    assert message.startswith(head) and f"{label!r}" in message, message
    assert "(free now: GPU 0: " in message and "; GPU 1: " in message, message
    assert hub.server("refused") is None and hub.server_processes("refused") == []


# ---- compute caps per device, both GPUs busy -------------------------------------------------

# bench/workloads.py's matmul on CUDA ordinal argv[1] (it uses the current device).
ON_DEVICE = """
import sys, torch
torch.cuda.set_device(int(sys.argv[1]))
sys.path.insert(0, sys.argv[2])
import workloads
sys.exit(workloads.main(sys.argv[3:]))
"""
CAPS = {0: 30, 1: 60}  # per CUDA ordinal, as CUDA_DEVICE_SM_LIMIT_<ordinal>
SHARE_TOLERANCE = 3.0  # points of the cap


def run_matmuls(envs: dict[int, dict[str, str]], seconds: float) -> dict[int, dict]:
    """One workloads.py matmul per ordinal, released together; returns each one's JSON."""
    procs = {}
    try:
        for ordinal, env in envs.items():
            procs[ordinal] = subprocess.Popen(
                [sys.executable, "-c", ON_DEVICE, str(ordinal), str(BENCH), "matmul", "--seconds", str(seconds),
                 "--window", "0.5", "--wait-go", "--json"],
                env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for ordinal, proc in procs.items():
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                proc.kill()
                raise AssertionError(f"matmul on ordinal {ordinal} did not start:\n{line}"
                                     f"{proc.communicate(timeout=60)[1][-4000:]}")
        for proc in procs.values():
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = {}
        for ordinal, proc in procs.items():
            out, err = proc.communicate(timeout=seconds + 120)
            assert proc.returncode == 0, err[-4000:]
            results[ordinal] = json.loads(out.strip().splitlines()[-1])
        return results
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_compute_cap_per_device_holds_with_both_gpus_busy(tmp_path: Path) -> None:
    visible = f"{uuid_of(0)},{uuid_of(1)}"  # ordinal i = nvidia-smi's GPU i
    native_env = base_env()
    native_env["CUDA_VISIBLE_DEVICES"] = visible
    native = run_matmuls({0: native_env, 1: native_env}, 5.0)
    capped_env = slice_env(tmp_path, visible, CUDA_DEVICE_MEMORY_LIMIT="16g",
                           CUDA_DEVICE_SM_LIMIT_0=str(CAPS[0]), CUDA_DEVICE_SM_LIMIT_1=str(CAPS[1]),
                           GPU_CORE_UTILIZATION_POLICY="force")
    capped = run_matmuls({0: capped_env, 1: capped_env}, 15.0)
    snap = read_region(tmp_path / "region")
    shares = {}
    for ordinal in (0, 1):
        assert native[ordinal]["libvgpu_loaded"] is False and capped[ordinal]["libvgpu_loaded"] is True
        base = window_stats.native_rate(native[ordinal]["windows"])
        got = window_stats.rate(window_stats.steady(capped[ordinal]["windows"]))
        shares[ordinal] = 100.0 * got / base
        first = 100.0 * window_stats.rate(window_stats.first_seconds(capped[ordinal]["windows"], 5.0)) / base
        print(f"GPU {ordinal} ({uuid_of(ordinal)}): native {base:.1f} matmul/s, capped {got:.1f} matmul/s "
              f"-> share {shares[ordinal]:.1f}% (first 5 s {first:.1f}%) of cap {CAPS[ordinal]}%")
        assert snap.device(uuid_of(ordinal)).sm_limit == CAPS[ordinal]
    for ordinal in (0, 1):
        assert abs(shares[ordinal] - CAPS[ordinal]) <= SHARE_TOLERANCE, shares
