"""hami_kernel.region: the Python reader (and writers) of libvgpu's shared region.

The first half builds regions byte by byte from the layout in
csrc/include/vgpu_region.h (offsets written out here, independently of the
module, so that a wrong offset in either shows up); the second half reads
regions that the real C library wrote while processes held memory.
"""
from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from cbuild import Runner
from hami_kernel.region import (
    DeviceUsage,
    RegionError,
    read_region,
    set_memory_limit,
    set_process_memory_limit,
    set_process_sm_limit,
)

MiB = 1 << 20
GiB = 1 << 30
UNLIMITED = (1 << 64) - 1
MAGIC = 0x55504776
REGION_SIZE = 4096 + 1024 * 1024
VERSION = 2  # written out, not imported: a change of layout must be a deliberate change here too

UUID0 = bytes.fromhex("face000010203040" "5060708090a0b0c0")
UUID1 = bytes.fromhex("face000110203040" "5060708090a0b0c0")
UUID0_STR = "GPU-face0000-1020-3040-5060-708090a0b0c0"
UUID1_STR = "GPU-face0001-1020-3040-5060-708090a0b0c0"

# Offsets inside one 1024-byte process slot, from vgpu_region.h.
USED, CAP, LAUNCHES, SM_SHARE, SM_LIMIT, UPDATED = 80, 208, 336, 464, 528, 592


def slot_at(i: int) -> int:
    """File offset of process slot i."""
    return 4096 + 1024 * i


# ---- building regions by hand -------------------------------------------------


def checksum(data: bytes) -> int:
    """FNV-1a 64 (offset basis 14695981039346656037), written out independently of the module."""
    h = 14695981039346656037
    for b in data:
        h = ((h ^ b) * 1099511628211) % (1 << 64)
    return h


def header(version: int = VERSION, magic: int = MAGIC, proc_high: int = 0, created_ns: int = 1_700_000_000_123_456_789,
           max_procs: int = 1024) -> bytes:
    fixed = struct.pack("<6IQ", magic, version, REGION_SIZE, 16, max_procs, 1024, created_ns)
    return fixed + struct.pack("<QI", checksum(fixed), proc_high)


def device(uuid: bytes, limit: int, context: int = 0, sm: int = 0) -> tuple[bytes, int, int, int]:
    return uuid, limit, context, sm


def proc(pid: int, identity: bytes, used: dict[int, int] | None = None, cap: dict[int, int] | None = None,
         launches: dict[int, int] | None = None, sm_share: dict[int, int] | None = None,
         sm_limit: dict[int, int] | None = None, claimed_ns: int = 1_700_000_001_000_000_000,
         updated_ns: int = 0) -> bytes:
    """One 1024-byte process slot; the dicts map a device entry to its value."""
    raw = bytearray(1024)
    struct.pack_into("<iIQ64s", raw, 0, pid, 0, claimed_ns, identity)
    for offset, fmt, values in ((USED, "Q", used), (CAP, "Q", cap), (LAUNCHES, "Q", launches),
                                (SM_SHARE, "I", sm_share), (SM_LIMIT, "I", sm_limit)):
        struct.pack_into(f"<16{fmt}", raw, offset, *[(values or {}).get(i, 0) for i in range(16)])
    struct.pack_into("<Q", raw, UPDATED, updated_ns)
    return bytes(raw)


def make_region(path: Path, devices: dict[int, tuple[bytes, int, int, int]] | None = None,
                procs: dict[int, bytes] | None = None, proc_high: int | None = None, **hdr: int) -> Path:
    """Writes a region: devices and procs are keyed by their entry / slot."""
    procs = procs or {}
    if proc_high is None:
        proc_high = max(procs, default=-1) + 1
    buf = bytearray(REGION_SIZE)
    head = header(proc_high=proc_high, **hdr)
    buf[: len(head)] = head
    for entry, (uuid, limit, context, sm) in (devices or {}).items():
        struct.pack_into("<16sQQI", buf, 256 + 64 * entry, uuid, limit, context, sm)
    for slot, raw in procs.items():
        buf[4096 + 1024 * slot: 4096 + 1024 * slot + len(raw)] = raw
    path.write_bytes(bytes(buf))
    return path


def lock_args(slot: int) -> bytes:
    return struct.pack("hh4xqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 4096 + 1024 * slot, 1, 0)


@contextmanager
def held(path: Path, *slots: int) -> Iterator[None]:
    """Holds the slots' locks through a separate open file description, as an owner would."""
    fd = os.open(path, os.O_RDWR)
    try:
        for slot in slots:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, lock_args(slot))
        yield
    finally:
        os.close(fd)


TWO_DEVICES = {0: device(UUID0, GiB, 64 * MiB, 50), 1: device(UUID1, UNLIMITED)}


# ---- RegionError ------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.region"
    with pytest.raises(RegionError, match="does not exist") as e:
        read_region(path)
    assert str(path) in str(e.value)
    assert isinstance(e.value, ValueError)


def test_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(RegionError, match="is a directory: refusing it"):
        read_region(tmp_path)


def test_unopenable_path(tmp_path: Path) -> None:
    # A path through a regular file cannot be opened, whoever asks (CI runs as root).
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    path = blocker / "r"
    with pytest.raises(RegionError) as e:
        read_region(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("size", [0, 8, 255])
def test_short_file(tmp_path: Path, size: int) -> None:
    path = tmp_path / "r"
    path.write_bytes(header()[:size])
    with pytest.raises(RegionError, match="too short") as e:
        read_region(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("delta", [-1024, 1])
def test_wrong_size(tmp_path: Path, delta: int) -> None:
    path = make_region(tmp_path / "r")
    os.truncate(path, REGION_SIZE + delta)
    with pytest.raises(RegionError, match=f"{REGION_SIZE + delta} bytes, not {REGION_SIZE}"):
        read_region(path)


def test_other_magic(tmp_path: Path) -> None:
    path = make_region(tmp_path / "r", magic=0x12345678)
    with pytest.raises(RegionError, match="not a libvgpu shared region") as e:
        read_region(path)
    assert "0x12345678" in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize("size", [REGION_SIZE, 2 * REGION_SIZE])
def test_other_version_names_both(tmp_path: Path, size: int) -> None:
    path = make_region(tmp_path / "r", version=3)
    os.truncate(path, size)  # another version may have another size: still reported as a version
    with pytest.raises(RegionError) as e:
        read_region(path)
    message = str(e.value)
    assert "version 3" in message and "version 2" in message and str(path) in message
    assert "\n" not in message


def test_bad_checksum(tmp_path: Path) -> None:
    path = make_region(tmp_path / "r")
    raw = bytearray(path.read_bytes())
    raw[24] ^= 1  # created_ns, covered by the checksum
    path.write_bytes(bytes(raw))
    with pytest.raises(RegionError, match="checksum"):
        read_region(path)


def test_other_sizes_in_the_header(tmp_path: Path) -> None:
    path = make_region(tmp_path / "r", max_procs=512)  # with a matching checksum
    with pytest.raises(RegionError, match="corrupted"):
        read_region(path)


def test_proc_high_beyond_the_slots(tmp_path: Path) -> None:
    path = make_region(tmp_path / "r", proc_high=1025)
    with pytest.raises(RegionError, match="proc_high"):
        read_region(path)


def test_writers_validate_first(tmp_path: Path) -> None:
    path = make_region(tmp_path / "r", TWO_DEVICES, version=7)
    before = path.read_bytes()
    with pytest.raises(RegionError, match="version 7"):
        set_memory_limit(path, UUID0_STR, GiB)
    with pytest.raises(RegionError, match="version 7"):
        set_process_memory_limit(path, "k", None, GiB)
    with pytest.raises(RegionError, match="does not exist"):
        set_memory_limit(tmp_path / "missing", UUID0_STR, GiB)
    assert path.read_bytes() == before


# ---- devices ----------------------------------------------------------------------


def test_empty_region(tmp_path: Path) -> None:
    snap = read_region(make_region(tmp_path / "r"))
    assert snap.devices == () and snap.processes == ()
    assert snap.version == 2
    assert snap.created_at == pytest.approx(1_700_000_000.123456789)
    assert snap.path == str(tmp_path / "r")


def test_devices_and_special_values(tmp_path: Path) -> None:
    unset = bytes.fromhex("aa" * 16)
    path = make_region(tmp_path / "r", {**TWO_DEVICES, 3: device(unset, 0, 5, 5)})
    snap = read_region(path)
    assert snap.devices == (
        DeviceUsage(entry=0, uuid=UUID0_STR, memory_limit=GiB, memory_used=0, context_size=64 * MiB,
                    sm_limit=50),
        DeviceUsage(entry=1, uuid=UUID1_STR, memory_limit=None, memory_used=0, context_size=None,
                    sm_limit=None),
    )  # entry 3 is claimed but its limit is still UNSET: not registered yet
    assert snap.device(UUID1_STR).memory_limit is None
    assert snap.device(UUID0_STR.upper()).entry == 0
    with pytest.raises(KeyError, match="GPU-aaaa"):
        snap.device("GPU-aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa")


def test_entry_index_is_kept(tmp_path: Path) -> None:
    snap = read_region(make_region(tmp_path / "r", {5: device(UUID1, 2 * GiB)}))
    assert [(d.entry, d.uuid) for d in snap.devices] == [(5, UUID1_STR)]


def test_uuid_formatting(tmp_path: Path) -> None:
    uuid = bytes(range(0xF0, 0x100))
    snap = read_region(make_region(tmp_path / "r", {0: device(uuid, GiB)}))
    assert snap.devices[0].uuid == "GPU-f0f1f2f3-f4f5-f6f7-f8f9-fafbfcfdfeff"


# ---- processes and liveness -----------------------------------------------------


def test_process_fields(tmp_path: Path) -> None:
    path = make_region(tmp_path / "r", TWO_DEVICES, {
        0: proc(4242, b"kernel-abc", used={0: 300 * MiB, 1: 5}, cap={0: 512 * MiB}, launches={0: 7, 1: 9},
                sm_share={0: 2500, 1: 10000}, sm_limit={1: 30}, updated_ns=1_700_000_002_500_000_000),
    })
    with held(path, 0):
        snap = read_region(path)
    (p,) = snap.processes
    assert (p.slot, p.pid, p.identity) == (0, 4242, "kernel-abc")
    assert p.claimed_at == pytest.approx(1_700_000_001.0)
    assert p.updated_at == pytest.approx(1_700_000_002.5)
    d0, d1 = p.devices
    assert (d0.uuid, d0.memory_used, d0.memory_limit, d0.launches, d0.sm_share, d0.sm_limit) == (
        UUID0_STR, 300 * MiB, 512 * MiB, 7, 0.25, None)
    assert (d1.uuid, d1.memory_used, d1.memory_limit, d1.launches, d1.sm_share, d1.sm_limit) == (
        UUID1_STR, 5, None, 9, 1.0, 30)
    assert snap.device(UUID0_STR).memory_used == 300 * MiB
    assert snap.device(UUID1_STR).memory_used == 5
    assert snap.process("kernel-abc") == [p]
    assert snap.process("other") == []


def test_never_updated_and_zero_usage_devices(tmp_path: Path) -> None:
    path = make_region(tmp_path / "r", TWO_DEVICES, {0: proc(1, b"k")})
    with held(path, 0):
        (p,) = read_region(path).processes
    assert p.updated_at is None
    assert [(d.uuid, d.memory_used, d.sm_share) for d in p.devices] == [(UUID0_STR, 0, 0.0), (UUID1_STR, 0, 0.0)]


def test_identity_decoding(tmp_path: Path) -> None:
    path = make_region(tmp_path / "r", TWO_DEVICES, {
        0: proc(1, b"caf\xc3\xa9\x00garbage after the NUL"),
        1: proc(2, b"bad \xff byte"),
        2: proc(3, b"x" * 64),  # no NUL at all: the whole field
    })
    with held(path, 0, 1, 2):
        snap = read_region(path)
    assert [p.identity for p in snap.processes] == ["café", "bad \ufffd byte", "x" * 64]


def test_dead_slots_are_neither_listed_nor_summed(tmp_path: Path) -> None:
    path = make_region(tmp_path / "r", TWO_DEVICES, {
        0: proc(100, b"alive", used={0: 100 * MiB}),
        1: proc(101, b"dead", used={0: 200 * MiB, 1: 7}),  # pid left behind, lock gone
        2: proc(0, b"", used={0: 400 * MiB}),  # pid 0: free, even with its lock held
        3: proc(103, b"alive", used={0: 800 * MiB}),
    }, proc_high=3)  # slot 3 lies beyond proc_high: never looked at
    with held(path, 0, 2, 3):
        snap = read_region(path)
    assert [(p.slot, p.pid) for p in snap.processes] == [(0, 100)]
    assert snap.device(UUID0_STR).memory_used == 100 * MiB
    assert snap.device(UUID1_STR).memory_used == 0
    # Once the owner is gone, nothing is live and nothing is used.
    snap = read_region(path)
    assert snap.processes == ()
    assert [d.memory_used for d in snap.devices] == [0, 0]


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    path = make_region(tmp_path / "r", TWO_DEVICES, {
        0: proc(1, b"a", used={0: MiB}),
        1: proc(2, b"b", used={0: 2 * MiB}),
    })
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, struct, sys\n"
         "fd = os.open(sys.argv[1], os.O_RDWR)\n"
         "fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack('hh4xqqi4x', fcntl.F_WRLCK, 0, 4096 + 1024, 1, 0))\n"
         "print('ready', flush=True)\n"
         "sys.stdin.read()\n",
         str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        snap = read_region(path)
        assert [p.identity for p in snap.processes] == ["b"]
        assert snap.device(UUID0_STR).memory_used == 2 * MiB
    finally:
        child.communicate("", timeout=30)
    assert read_region(path).processes == ()


def test_reader_needs_no_write_permission(tmp_path: Path) -> None:
    path = make_region(tmp_path / "r", TWO_DEVICES, {0: proc(1, b"a", used={0: MiB})})
    with held(path, 0):
        path.chmod(0o444)
        assert [p.pid for p in read_region(path).processes] == [1]


# ---- writers ------------------------------------------------------------------------


def expect(before: bytes, *stores: tuple[int, int]) -> bytes:
    """`before` with 8-byte values stored at the given offsets, and nothing else."""
    out = bytearray(before)
    for offset, value in stores:
        struct.pack_into("<Q", out, offset, value)
    return bytes(out)


def test_set_memory_limit(tmp_path: Path) -> None:
    path = make_region(tmp_path / "r", {**TWO_DEVICES, 2: device(UUID1[::-1], 0)},
                       {0: proc(1, b"k", used={0: MiB})})
    before = path.read_bytes()
    set_memory_limit(path, UUID1_STR, 3 * GiB)
    assert path.read_bytes() == expect(before, (256 + 64 + 16, 3 * GiB))
    assert read_region(path).device(UUID1_STR).memory_limit == 3 * GiB

    set_memory_limit(path, UUID0_STR.upper(), None)
    assert path.read_bytes() == expect(before, (256 + 64 + 16, 3 * GiB), (256 + 16, UNLIMITED))
    assert read_region(path).device(UUID0_STR).memory_limit is None


def test_set_memory_limit_refuses(tmp_path: Path) -> None:
    unset = "GPU-c0b0a090-8070-6050-4030-20100100cefa"
    path = make_region(tmp_path / "r", {**TWO_DEVICES, 2: device(UUID1[::-1], 0)})
    before = path.read_bytes()
    for bad in (0, -1, UNLIMITED):
        with pytest.raises(ValueError, match="positive"):
            set_memory_limit(path, UUID0_STR, bad)
    with pytest.raises(KeyError, match="GPU-0000"):
        set_memory_limit(path, "GPU-00000000-0000-0000-0000-000000000000", GiB)
    with pytest.raises(KeyError, match=unset):  # claimed, not yet registered by its process
        set_memory_limit(path, unset, GiB)
    assert path.read_bytes() == before


def test_set_process_memory_limit(tmp_path: Path) -> None:
    path = make_region(tmp_path / "r", TWO_DEVICES, {
        0: proc(10, b"k"),
        1: proc(11, b"other"),
        2: proc(12, b"k"),  # dead
        3: proc(13, b"k", cap={1: 5}),
    })
    before = path.read_bytes()
    with held(path, 0, 1, 3):
        assert set_process_memory_limit(path, "k", None, 256 * MiB) == 2
        after_all = expect(before, *[(slot_at(s) + CAP + 8 * e, 256 * MiB) for s in (0, 3) for e in (0, 1)])
        assert path.read_bytes() == after_all

        assert set_process_memory_limit(path, "k", UUID1_STR, None) == 2
        after_one = expect(after_all, (slot_at(0) + CAP + 8, 0), (slot_at(3) + CAP + 8, 0))
        assert path.read_bytes() == after_one

        snap = read_region(path)
        caps = {(p.slot, d.uuid): d.memory_limit for p in snap.processes for d in p.devices}
        assert caps == {(0, UUID0_STR): 256 * MiB, (0, UUID1_STR): None, (1, UUID0_STR): None,
                        (1, UUID1_STR): None, (3, UUID0_STR): 256 * MiB, (3, UUID1_STR): None}

        assert set_process_memory_limit(path, "nobody", None, GiB) == 0
        with pytest.raises(KeyError, match="GPU-0000"):
            set_process_memory_limit(path, "k", "GPU-00000000-0000-0000-0000-000000000000", GiB)
        with pytest.raises(ValueError):
            set_process_memory_limit(path, "k", None, 0)
        assert path.read_bytes() == after_one



def test_set_process_sm_limit(tmp_path: Path) -> None:
    path = make_region(tmp_path / "r", TWO_DEVICES, {0: proc(10, b"k"), 1: proc(11, b"other")})
    with held(path, 0, 1):
        assert set_process_sm_limit(path, "k", None, 20) == 1
        shares = {(p.identity, d.uuid): d.sm_limit for p in read_region(path).processes for d in p.devices}
        assert shares == {("k", UUID0_STR): 20, ("k", UUID1_STR): 20, ("other", UUID0_STR): None,
                          ("other", UUID1_STR): None}
        assert set_process_sm_limit(path, "k", UUID1_STR, None) == 1
        assert [d.sm_limit for d in read_region(path).process("k")[0].devices] == [20, None]
        # 100% is no cap, as libvgpu reads it; anything else outside 1..100 is refused untouched.
        assert set_process_sm_limit(path, "k", UUID0_STR, 100) == 1
        assert [d.sm_limit for d in read_region(path).process("k")[0].devices] == [None, None]
        before = path.read_bytes()
        for bad in (0, 101, -5, True, "20"):
            with pytest.raises(ValueError):
                set_process_sm_limit(path, "k", None, bad)  # type: ignore[arg-type]
        assert path.read_bytes() == before

# ---- regions written by the real libvgpu ------------------------------------------


def hold(runner: Runner, identity: str, mib: int, **env: str) -> subprocess.Popen[str]:
    """Starts a process holding `mib` MiB * (d+1) on each device d; returns once it holds them."""
    child = runner.start("hold", {
        "FAKE_CUDA_DEVICE_COUNT": "2",
        "CUDA_DEVICE_MEMORY_LIMIT_0": "1g",
        "CUDA_DEVICE_MEMORY_LIMIT_1": "2g",
        "LIBVGPU_IDENTITY": identity,
        "VGPU_TEST_HOLD_MIB": str(mib),
        **env,
    })
    assert child.stdout is not None
    if child.stdout.readline() != "ready\n":
        out, err = child.communicate(timeout=60)
        pytest.fail(f"hold exited {child.returncode}\nstdout:\n{out}\nstderr:\n{err}")
    return child


def release(child: subprocess.Popen[str]) -> None:
    out, err = child.communicate("", timeout=60)
    assert child.returncode == 0 and "PASS hold" in out, f"hold exited {child.returncode}\n{out}\n{err}"


CONTEXT = 64 * MiB  # FAKE_CUDA_CONTEXT_SIZE's default


def test_reads_what_libvgpu_wrote(runner: Runner) -> None:
    child = hold(runner, "kernel-abc", 100)
    try:
        snap = read_region(runner.region)
    finally:
        release(child)
    assert [(d.uuid, d.memory_limit) for d in snap.devices] == [(UUID0_STR, GiB), (UUID1_STR, 2 * GiB)]
    assert [d.context_size for d in snap.devices] == [CONTEXT, CONTEXT]
    assert snap.device(UUID0_STR).memory_used == CONTEXT + 100 * MiB
    assert snap.device(UUID1_STR).memory_used == CONTEXT + 200 * MiB
    (p,) = snap.process("kernel-abc")
    assert snap.processes == (p,)
    assert p.pid == child.pid
    assert [(d.uuid, d.memory_used, d.memory_limit) for d in p.devices] == [
        (UUID0_STR, CONTEXT + 100 * MiB, None), (UUID1_STR, CONTEXT + 200 * MiB, None)]
    assert p.claimed_at > snap.created_at > 0

    # The holder is gone: its slot is dead, whatever it left in the file.
    after = read_region(runner.region)
    assert after.processes == ()
    assert [d.memory_used for d in after.devices] == [0, 0]
    assert [d.memory_limit for d in after.devices] == [GiB, 2 * GiB]


def test_two_identities_are_told_apart(runner: Runner) -> None:
    first = hold(runner, "kernel-abc", 100)
    try:
        second = hold(runner, "kernel-xyz", 50, LIBVGPU_PROCESS_MEMORY_LIMIT_0="512m")
        try:
            snap = read_region(runner.region)
        finally:
            release(second)
    finally:
        release(first)
    (a,) = snap.process("kernel-abc")
    (b,) = snap.process("kernel-xyz")
    assert (a.pid, b.pid) == (first.pid, second.pid)
    assert [d.memory_used for d in a.devices] == [CONTEXT + 100 * MiB, CONTEXT + 200 * MiB]
    assert [d.memory_used for d in b.devices] == [CONTEXT + 50 * MiB, CONTEXT + 100 * MiB]
    assert [d.memory_limit for d in b.devices] == [512 * MiB, None]
    assert [d.memory_used for d in snap.devices] == [2 * CONTEXT + 150 * MiB, 2 * CONTEXT + 300 * MiB]


def test_a_new_limit_binds_the_next_process(runner: Runner) -> None:
    first = hold(runner, "kernel-abc", 100)
    try:
        set_memory_limit(runner.region, UUID0_STR, 256 * MiB)
        snap = read_region(runner.region)
        assert snap.device(UUID0_STR).memory_limit == 256 * MiB
        assert snap.device(UUID1_STR).memory_limit == 2 * GiB
        # 164 MiB held; a second context (64 MiB) fits, 100 MiB more does not.
        child = runner.start("hold", {
            "FAKE_CUDA_DEVICE_COUNT": "2", "CUDA_DEVICE_MEMORY_LIMIT_0": "1g",
            "CUDA_DEVICE_MEMORY_LIMIT_1": "2g", "LIBVGPU_IDENTITY": "kernel-big",
            "VGPU_TEST_HOLD_MIB": "100"})
        out, err = child.communicate("", timeout=60)
        assert child.returncode != 0 and "ready" not in out, out
        assert "FAIL" in err and "returned 2" in err, err
        # The slice's limit stays the controller's, not the newcomer's 1g.
        assert read_region(runner.region).device(UUID0_STR).memory_limit == 256 * MiB
    finally:
        release(first)


def wait_for_share(runner: Runner, identity: str) -> list[float]:
    """The process's compute shares once the statistics thread has refreshed them twice."""
    deadline = time.monotonic() + 10
    first = None
    while time.monotonic() < deadline:
        (p,) = read_region(runner.region).process(identity)
        if p.updated_at is not None:
            first = first or p.updated_at
            if p.updated_at > first:
                return [d.sm_share for d in p.devices]
        time.sleep(0.1)
    pytest.fail("the statistics thread never refreshed the slot")


def test_uncapped_process_share_comes_from_nvml(runner: Runner) -> None:
    # The pacer times only capped processes; for the others NVML's
    # per-process SM utilization is the share.
    child = hold(runner, "free", 10, FAKE_NVML_SM_UTIL="37")
    try:
        assert wait_for_share(runner, "free") == [pytest.approx(0.37), pytest.approx(0.37)]
    finally:
        release(child)


def test_capped_process_share_is_the_pacers(runner: Runner, tmp_path: Path) -> None:
    # Its cap engages at its first launch; after that the pacer's own timing
    # is the share (here: one instant launch, then nothing), not NVML's 37%.
    child = hold(runner, "capped", 10, FAKE_NVML_SM_UTIL="37", CUDA_DEVICE_SM_LIMIT="30", VGPU_TEST_LAUNCHES="1",
                 GPU_CORE_UTILIZATION_POLICY="force", LIBVGPU_ARBITER_DIR=str(tmp_path))
    try:
        assert all(share < 0.05 for share in wait_for_share(runner, "capped"))
    finally:
        release(child)
