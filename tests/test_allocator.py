"""Single-machine placement of GPU slices, with fake GPUs and a fake NVML."""
from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import pytest

from hami_kernel.slice import GIB, Slice
from hami_spawner.allocator import (AlreadyPlaced, Allocator, Gpu, NeverFits, NoCapacity, Placement,
                                    discover_gpus)

H100 = "NVIDIA H100 80GB HBM3"
A10 = "NVIDIA A10"


def gpus(*names: str, memory: int = 80 * GIB) -> list[Gpu]:
    return [Gpu(i, f"GPU-{i}", name, memory) for i, name in enumerate(names)]


def on(placement: Placement) -> list[int]:
    return [int(u.split("-")[1]) for u in placement.gpus]


SMALL = Slice(8 * GIB, 25)


def test_binpack_fills_gpu0_first():
    alloc = Allocator(gpus(H100, H100))
    assert [on(alloc.place(f"u{i}", SMALL))[0] for i in range(5)] == [0, 0, 0, 0, 1]
    assert alloc.used("GPU-0") == (32 * GIB, 100)
    assert alloc.free("GPU-0") == (48 * GIB, 0)


def test_spread_alternates():
    alloc = Allocator(gpus(H100, H100))
    assert [on(alloc.place(f"u{i}", SMALL, "spread"))[0] for i in range(4)] == [0, 1, 0, 1]


def test_bad_policy():
    with pytest.raises(ValueError, match="policy"):
        Allocator(gpus(H100)).place("u", SMALL, "random")


def test_exhaustion_message():
    alloc = Allocator(gpus(H100, H100))
    alloc.place("a", Slice(60 * GIB, 40))
    alloc.place("b", Slice(72 * GIB, 75))
    with pytest.raises(NoCapacity) as info:
        alloc.place("c", Slice(48 * GIB, 25), label="big")
    assert str(info.value) == (
        "No GPU on this machine has 48 GiB and 25% compute free for the 'big' slice "
        "(free now: GPU 0: 20 GiB, 60%; GPU 1: 8 GiB, 25%).")
    assert "c" not in alloc.placements


def test_compute_exhaustion_and_too_big_slice():
    alloc = Allocator(gpus(H100))
    alloc.place("a", Slice(GIB, 90))
    with pytest.raises(NoCapacity, match="1 GiB and 20% compute free.*'b'"):
        alloc.place("b", Slice(GIB, 20))
    with pytest.raises(NoCapacity, match="160 GiB"):
        Allocator(gpus(H100)).place("x", Slice(160 * GIB, None))


def test_whole_gpu_slices():
    alloc = Allocator(gpus(H100, H100))
    alloc.place("small", SMALL)
    whole = alloc.place("whole", Slice(None, None))
    assert on(whole) == [1] and alloc.used("GPU-1") == (80 * GIB, 100)
    assert whole.to_env() == {"CUDA_VISIBLE_DEVICES": "GPU-1"}
    with pytest.raises(NoCapacity, match="all its memory and all its compute free"):
        alloc.place("whole2", Slice(None, None))
    one = Allocator(gpus(H100))
    one.place("w", Slice(None, 10))  # whole memory: nothing else fits beside it
    with pytest.raises(NoCapacity, match="GPU 0: 0 GiB, 90%"):
        one.place("s", Slice(GIB, 10))


def test_count_two_on_distinct_gpus():
    alloc = Allocator(gpus(H100, H100, H100))
    alloc.place("a", Slice(70 * GIB, 10))  # GPU 0 nearly full
    pair = alloc.place("pair", Slice(16 * GIB, 50, count=2))
    assert on(pair) == [1, 2] and pair.slice == Slice(16 * GIB, 50, 2)
    assert pair.to_env() == {"CUDA_VISIBLE_DEVICES": "GPU-1,GPU-2",
                             "CUDA_DEVICE_MEMORY_LIMIT": "16g", "CUDA_DEVICE_SM_LIMIT": "50"}
    with pytest.raises(NoCapacity, match="needs 2 GPUs that each have .* but only 1"):
        alloc.place("pair2", Slice(5 * GIB, 60, count=2))
    with pytest.raises(NeverFits, match="needs 4 GPUs, but this machine has only 3"):
        alloc.place("quad", Slice(GIB, 1, count=4))


def test_gpu_types_and_avoid():
    alloc = Allocator(gpus(A10, H100, A10, memory=24 * GIB))
    assert on(alloc.place("a", SMALL, gpu_types=["h100"])) == [1]
    assert on(alloc.place("b", SMALL, avoid=["a10"])) == [1]
    assert on(alloc.place("c", SMALL, "spread", gpu_types=["a10"])) == [0]
    assert on(alloc.place("d", SMALL, "spread", gpu_types=["a10"])) == [2]
    with pytest.raises(NeverFits, match="no GPU of type B200 for the 'e' slice.*GPU 1: "
                                        "NVIDIA H100.*can never be placed here"):
        alloc.place("e", SMALL, gpu_types=["B200"])
    with pytest.raises(NeverFits, match="other than a10 or h100"):
        alloc.place("f", SMALL, avoid=["a10", "h100"])
    with pytest.raises(NeverFits, match="has no NVIDIA GPU, so the 'g' slice can never be placed"):
        Allocator([]).place("g", SMALL)


def test_a_slice_that_could_never_fit_is_told_apart_from_a_full_machine():
    alloc = Allocator(gpus(A10, H100, memory=80 * GIB))
    with pytest.raises(NeverFits, match="needs 96 GiB of GPU memory, but the largest GPU here "
                                        "that qualifies has 80 GiB"):
        alloc.place("big", Slice(96 * GIB, 10, 1))
    with pytest.raises(NeverFits, match="needs 3 GPUs, but this machine has only 2 that qualify"):
        alloc.place("three", Slice(8 * GIB, 10, 3))
    with pytest.raises(NeverFits, match="needs 2 GPUs, but this machine has only 1"):
        alloc.place("two-h100", Slice(8 * GIB, 10, 2), gpu_types=["h100"])
    # Full now is not "never": the same whole GPU fits once the other slice is gone.
    alloc.place("a", Slice(None, None, 2))
    with pytest.raises(NoCapacity) as full:
        alloc.place("b", Slice(None, None, 1))
    assert not isinstance(full.value, NeverFits)
    alloc.release("a")
    assert alloc.place("b", Slice(None, None, 1)).gpus


def test_double_placement_refused_and_release_frees():
    alloc = Allocator(gpus(H100))
    first = alloc.place("u", SMALL)
    with pytest.raises(AlreadyPlaced, match="'u' already holds.*8 GiB · 25%"):
        alloc.place("u", SMALL)
    assert alloc.get("u") == first
    assert alloc.release("u") == first and alloc.release("u") is None
    assert alloc.used("GPU-0") == (0, 0) and alloc.placements == {}
    alloc.place("u", Slice(None, None))


def test_state_restore_round_trip_with_vanished_gpu():
    old = Allocator(gpus(H100, H100, H100))
    a = old.place("a", SMALL)
    b = old.place("b", Slice(None, None), "spread")
    c = old.place("c", Slice(4 * GIB, 10, 2), "spread")
    saved = json.loads(json.dumps(old.state()))
    assert on(b) == [1] and on(c) == [0, 2]
    new = Allocator(gpus(H100, H100))  # GPU-2 is gone after the restart
    skipped = new.restore(saved)
    assert skipped == [(c, "GPU(s) GPU-2 no longer present")]
    assert new.placements == {"a": a, "b": b}
    assert new.used("GPU-1") == (80 * GIB, 100)
    assert new.restore(saved)[0] == (a, "key already placed")
    same = Allocator(gpus(H100, H100, H100))
    assert same.restore(saved) == [] and same.state() == old.state()


@pytest.mark.parametrize("state", [
    {}, {"version": 99, "placements": []}, "x",
    {"version": 1, "placements": [{"key": "a", "gpus": ["GPU-0"], "memory": -1,
                                   "cores": None}]},
    {"version": 1, "placements": [{"key": "a", "gpus": ["GPU-0"]}]},
])
def test_restore_refuses_malformed_state(state):
    with pytest.raises(ValueError):
        Allocator(gpus(H100)).restore(state)


def test_concurrent_places_never_overcommit():
    alloc = Allocator(gpus(H100, H100))
    results: list[object] = []

    def worker(i: int) -> None:
        try:
            results.append(alloc.place(f"u{i}", Slice(8 * GIB, 10)))
        except NoCapacity as exc:
            results.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, Placement) for r in results) == 20
    assert all(alloc.used(g.uuid) == (80 * GIB, 100) for g in alloc.gpus)


class FakeNvml:
    def __init__(self, devices, fail_init: bool = False):
        self.devices, self.fail_init, self.shutdowns = devices, fail_init, 0

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index):
        return self.devices[index]

    def nvmlDeviceGetUUID(self, handle):
        return handle[0]

    def nvmlDeviceGetName(self, handle):
        return handle[1]

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=handle[2], free=handle[2], used=0)


def test_discover_gpus_with_fake_nvml():
    nvml = FakeNvml([(b"GPU-aaa", b"NVIDIA H100 80GB HBM3", 80 * GIB),
                     ("GPU-bbb", "NVIDIA A10", 24 * GIB)])
    assert discover_gpus(nvml) == [Gpu(0, "GPU-aaa", H100, 80 * GIB),
                                   Gpu(1, "GPU-bbb", A10, 24 * GIB)]
    assert nvml.shutdowns == 1
    assert discover_gpus(FakeNvml([])) == []
    assert discover_gpus(FakeNvml([], fail_init=True)) == []


def test_discover_gpus_without_pynvml(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    assert discover_gpus() == []
