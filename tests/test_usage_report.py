"""The usage report (hami_kernel/serverext/usage.py) from made-up region snapshots.

The server extension's tests check real answers against a real region; these
check the cases that are awkward to make for real: a process of no kernel of
this server, several GPUs, a process seen launching between two reads.
"""
from __future__ import annotations

from hami_kernel.region import ProcessDeviceUsage, ProcessUsage, RegionSnapshot, DeviceUsage
from hami_kernel.serverext.metrics import render
from hami_kernel.serverext.usage import NO_SLICE, KernelInfo, LaunchClock, build_report
from hami_kernel.slice import DeviceLimit

MiB = 1 << 20
GPU0 = "GPU-face0000-1020-3040-5060-708090a0b0c0"
GPU1 = "GPU-face0001-1020-3040-5060-708090a0b0c0"
KERNEL = "3f2a1b9c-5d6e-4f70-8a9b-0c1d2e3f4a5b"


def proc(identity: str, pid: int, used: tuple[int, int], launches: tuple[int, int] = (0, 0),
         share: tuple[float, float] = (0.0, 0.0)) -> ProcessUsage:
    return ProcessUsage(slot=pid % 7, pid=pid, identity=identity, claimed_at=1000.0 + pid, updated_at=None,
                        devices=tuple(ProcessDeviceUsage(uuid=u, memory_used=m, memory_limit=None, launches=n,
                                                         sm_share=s, sm_limit=None)
                                      for u, m, n, s in zip((GPU0, GPU1), used, launches, share)))


def snapshot(*procs: ProcessUsage) -> RegionSnapshot:
    devices = tuple(DeviceUsage(entry=i, uuid=u, memory_limit=8192 * MiB, memory_used=sum(p.devices[i].memory_used
                                for p in procs), context_size=None, sm_limit=30) for i, u in enumerate((GPU0, GPU1)))
    return RegionSnapshot(path="/r", version=1, created_at=0.0, devices=devices, processes=procs)


def report(snap: RegionSnapshot | None, **kw: object) -> dict:
    args = dict(region_path="/r", limits=[DeviceLimit(8192 * MiB, 30)] * 2, policy="force", has_slice=True,
                snapshot=snap, region_error=None, kernels={}, device_names={GPU0.lower(): "Fake GPU"}, now=2000.0)
    args.update(kw)
    return build_report(**args)  # type: ignore[arg-type]


def test_several_gpus_and_a_process_of_no_kernel() -> None:
    kernels = {KERNEL: KernelInfo(KERNEL, "gpu-4g", "idle", 1990.0, "work/a.ipynb", "notebook")}
    snap = snapshot(proc(KERNEL, 11, (100 * MiB, 300 * MiB), share=(0.2, 0.05)),
                    proc("batch-job", 12, (50 * MiB, 0), share=(0.15, 0.0)))
    got = report(snap, kernels=kernels, driver_memory={GPU0.lower(): {11: 101 * MiB}})
    assert got["status"] == "ok" and got["slice"]["policy"] == "force"
    assert [(d["uuid"], d["name"], d["memory_used_bytes"], d["compute_used_ratio"], d["compute_cap_ratio"])
            for d in got["devices"]] == [(GPU0, "Fake GPU", 150 * MiB, 0.35, 0.3), (GPU1, None, 300 * MiB, 0.05, 0.3)]
    ours, other = got["kernels"]  # this server's kernels first
    assert (ours["kernel_id"], ours["path"], ours["idle_seconds"]) == (KERNEL, "work/a.ipynb", 10.0)
    assert [d["driver_memory_used_bytes"] for d in ours["devices"]] == [101 * MiB, None]
    assert (other["kernel_id"], other["identity"], other["path"], other["idle_seconds"]) == (None, "batch-job",
                                                                                             None, None)
    # In the metrics, the process of no kernel is named by its identity.
    samples = dict(line.rsplit(" ", 1) for line in render(got).decode().splitlines() if not line.startswith("#"))
    assert float(samples[f'hami_vgpu_kernel_memory_used_bytes{{device_uuid="{GPU0}",kernel_id="batch-job",'
                         f'notebook="",pid="12"}}']) == 50 * MiB
    assert float(samples[f'hami_vgpu_memory_used_bytes{{device_name="",device_uuid="{GPU1}"}}']) == 300 * MiB
    assert float(samples[f'hami_vgpu_kernel_driver_memory_used_bytes{{device_uuid="{GPU0}",kernel_id="{KERNEL}",'
                         f'notebook="work/a.ipynb",pid="11"}}']) == 101 * MiB


def test_last_gpu_work_is_dated_by_the_launch_count_moving() -> None:
    clock = LaunchClock()
    clock.observe(snapshot(proc(KERNEL, 11, (0, 0), launches=(5, 0))), now=100.0)
    # Seen with launches already made: when they were made is unknown.
    assert report(snapshot(proc(KERNEL, 11, (0, 0), launches=(5, 0))), launches=clock,
                  now=101.0)["kernels"][0]["gpu_idle_seconds"] is None
    clock.observe(snapshot(proc(KERNEL, 11, (0, 0), launches=(5, 2))), now=102.0)
    clock.observe(snapshot(proc(KERNEL, 11, (0, 0), launches=(5, 2))), now=103.0)
    got = report(snapshot(proc(KERNEL, 11, (0, 0), launches=(5, 2))), launches=clock, now=110.0)["kernels"][0]
    assert (got["launches"], got["gpu_idle_seconds"]) == (7, 8.0)
    # A new process under the same identity (a restarted kernel) starts unknown again.
    clock.observe(snapshot(proc(KERNEL, 13, (0, 0), launches=(1, 0))), now=111.0)
    assert clock.last_launch(KERNEL, 13, 1013.0) is None and clock.last_launch(KERNEL, 11, 1011.0) is None
    # No launch at all: never (null), whatever the clock.
    assert report(snapshot(proc(KERNEL, 14, (0, 0))), launches=clock)["kernels"][0]["gpu_idle_seconds"] is None


def test_the_states_without_figures() -> None:
    none = report(None, has_slice=False)
    assert (none["status"], none["message"], none["slice"]) == ("no_slice", NO_SLICE, None)
    idle = report(None)
    assert idle["status"] == "no_usage_yet" and idle["slice"]["limits"][1] == {
        "index": 1, "memory_limit_bytes": 8192 * MiB, "compute_cap_ratio": 0.3}
    broken = report(None, region_error="the shared region /r is corrupted (bad header checksum)")
    assert broken["status"] == "region_error" and "bad header checksum" in broken["message"]
    assert broken["devices"] == [] and broken["kernels"] == []
    # A region error wins over figures: never half a report from a file that is not trusted.
    assert report(snapshot(), region_error="x", has_slice=False)["status"] == "region_error"
