"""The shared region of a GPU slice, read (and adjusted) from Python.

libvgpu accounts every process of a slice in one memory-mapped file whose
layout is described in ``csrc/include/vgpu_region.h``.  This module is the one
place in Python that knows that layout: offsets, special values, how the
header is validated and how a live process is told from a dead one.  If the
header changes (and ``VGPU_REGION_VERSION`` is bumped), this file changes with
it; a region of another version is refused rather than misread.

Reading never takes a lock and never writes: a snapshot is one copy of the
file's bytes (read, not mapped, so a truncated file cannot kill the
reader), and liveness comes from the kernel's record of who holds each
slot's lock, which a killed process cannot leave behind.
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import struct
from dataclasses import dataclass
from typing import Iterator

__all__ = [
    "RegionError",
    "DeviceUsage",
    "ProcessDeviceUsage",
    "ProcessUsage",
    "RegionSnapshot",
    "read_region",
    "set_memory_limit",
    "set_process_memory_limit",
]

# ---- layout: mirrors csrc/include/vgpu_region.h (version 2) ----------------

MAGIC = 0x55504776  # "vGPU"
VERSION = 2
MAX_DEVICES = 16
MAX_PROCS = 1024
IDENTITY_LEN = 64

HEADER_SIZE = 256
DEVICES_OFFSET = 256
DEVICE_SIZE = 64
PROCS_OFFSET = 4096
PROC_SIZE = 1024
REGION_SIZE = PROCS_OFFSET + MAX_PROCS * PROC_SIZE

LIMIT_UNSET = 0  # entry claimed, its limit not yet written
UNLIMITED = (1 << 64) - 1  # no memory cap on the device

# Header: magic, version, region_size, max_devices, max_procs, proc_size,
# created_ns, checksum, proc_high.  The checksum covers the 32 bytes before it.
_HEADER = struct.Struct("<6IQQI")
_CHECKSUMMED = 32
# Device entry: uuid_lo, uuid_hi, memory_limit, context_size, sm_limit.
_DEVICE = struct.Struct("<4QI")
_DEVICE_LIMIT = 16  # offset of memory_limit within an entry
# Process slot: pid, reserved0, claimed_ns, identity, then five arrays.
_PROC_HEAD = struct.Struct(f"<iIQ{IDENTITY_LEN}s")
_PROC_USED = 80
_PROC_LIMIT = _PROC_USED + 8 * MAX_DEVICES  # 208
_PROC_LAUNCHES = _PROC_LIMIT + 8 * MAX_DEVICES  # 336
_PROC_SM_SHARE = _PROC_LAUNCHES + 8 * MAX_DEVICES  # 464
_PROC_SM_LIMIT = _PROC_SM_SHARE + 4 * MAX_DEVICES  # 528
_PROC_UPDATED = _PROC_SM_LIMIT + 4 * MAX_DEVICES  # 592
_U64S = struct.Struct(f"<{MAX_DEVICES}Q")
_U32S = struct.Struct(f"<{MAX_DEVICES}I")
_U64 = struct.Struct("<Q")

SM_SHARE_SCALE = 10000  # sm_share is stored in 1/10000 of the GPU

# struct flock on x86-64 and aarch64 Linux: l_type, l_whence, (pad), l_start,
# l_len, l_pid, (pad).  Native order: the kernel reads it, not the file.
_FLOCK = struct.Struct("hh4xqqi4x")
# F_OFD_GETLK is in the fcntl module from Python 3.9 on Linux; 36 is its value
# on every Linux architecture, for builds that lack the name.
_F_OFD_GETLK: int = getattr(fcntl, "F_OFD_GETLK", 36)


class RegionError(ValueError):
    """The region file cannot be used: missing, unreadable, not ours, or not
    this user's own (a file anyone else could write is refused, as libvgpu
    refuses it)."""


@dataclass(frozen=True)
class DeviceUsage:
    """One GPU of the slice, with the whole slice's usage on it."""

    entry: int  # index of the device entry in the region
    uuid: str  # "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
    memory_limit: int | None  # bytes for the whole slice; None = unlimited
    memory_used: int  # bytes charged by live processes
    context_size: int | None  # bytes one CUDA context takes; None = not measured yet
    sm_limit: int | None  # percent of the GPU's compute; None = no cap


@dataclass(frozen=True)
class ProcessDeviceUsage:
    """One process's share of one GPU."""

    uuid: str
    memory_used: int
    memory_limit: int | None  # the process's own cap; None = only the slice's
    launches: int  # kernel launches so far
    sm_share: float  # compute used over the last second, 0.0 to 1.0
    sm_limit: int | None  # percent; None = no per-process cap


@dataclass(frozen=True)
class ProcessUsage:
    """A live process accounted in the region."""

    slot: int
    pid: int  # as the process saw itself; informational across PID namespaces
    identity: str  # LIBVGPU_IDENTITY, e.g. a kernel id
    claimed_at: float  # seconds since the epoch
    updated_at: float | None  # last statistics refresh; None = never
    devices: tuple[ProcessDeviceUsage, ...]


@dataclass(frozen=True)
class RegionSnapshot:
    """What the region said at one moment."""

    path: str
    version: int
    created_at: float
    devices: tuple[DeviceUsage, ...]
    processes: tuple[ProcessUsage, ...]

    def device(self, uuid: str) -> DeviceUsage:
        """The device with this UUID; KeyError if the slice has none."""
        for dev in self.devices:
            if dev.uuid.lower() == uuid.lower():  # "GPU-" prefix, lowercase hex
                return dev
        raise KeyError(f"no GPU {uuid} in the shared region {self.path}")

    def process(self, identity: str) -> list[ProcessUsage]:
        """The live processes started under this identity (often one)."""
        return [p for p in self.processes if p.identity == identity]


# ---- opening and validating -------------------------------------------------


# FNV-1a 64 over the header's immutable fields, exactly as vgpu_region_checksum.
_CHECKSUM_BASIS = 14695981039346656037
_FNV_PRIME = 1099511628211


def _checksum(data: bytes) -> int:
    """FNV-1a 64, as vgpu_region_checksum computes it."""
    h = _CHECKSUM_BASIS
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _check_file(path: str, st: os.stat_result) -> None:
    """The checks libvgpu makes (csrc/src/safe_file.c): a regular file of this user's or root's, that
    nobody else may write."""
    if not stat.S_ISREG(st.st_mode):
        raise RegionError(f"the shared region {path} is {_kind(st.st_mode)}: refusing it")
    if st.st_uid not in (os.geteuid(), 0):
        raise RegionError(f"the shared region {path} belongs to uid {st.st_uid}, not to this user "
                          f"(uid {os.geteuid()}) or root: refusing it")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "others" if st.st_mode & stat.S_IWOTH else "its group"
        raise RegionError(f"the shared region {path} is writable by {who} "
                          f"(mode {stat.S_IMODE(st.st_mode):04o}): refusing it")


def _open(path: str, flags: int) -> int:
    """Opens the region file, turning every failure into a RegionError.

    A FIFO or a device is never opened (lstat first), a link is never
    followed, and the open never blocks.
    """
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        raise RegionError(f"the shared region {path} does not exist") from None
    except OSError as e:
        raise RegionError(f"cannot open the shared region {path}: {e.strerror}") from None
    _check_file(path, before)
    try:
        fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise RegionError(f"the shared region {path} does not exist") from None
    except OSError as e:
        reason = "it is a symbolic link" if e.errno == errno.ELOOP else e.strerror
        raise RegionError(f"cannot open the shared region {path}: {reason}") from None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise RegionError(f"the shared region {path} was replaced while it was opened: refusing it")
        _check_file(path, st)
        head = os.pread(fd, HEADER_SIZE, 0)
        _check_header(path, head, st.st_size)
    except OSError as e:
        os.close(fd)
        raise RegionError(f"cannot read the shared region {path}: {e.strerror}") from None
    except RegionError:
        os.close(fd)
        raise
    return fd


def _check_header(path: str, head: bytes, size: int) -> None:
    """The checks vgpu_region_open makes, in the same order, with a message each."""
    if len(head) < HEADER_SIZE:
        raise RegionError(f"the shared region {path} is too short ({size} bytes): it is not a region")
    magic, version, region_size, max_devices, max_procs, proc_size, _created, checksum, proc_high = (
        _HEADER.unpack_from(head)
    )
    if magic != MAGIC:
        raise RegionError(f"{path} is not a libvgpu shared region (magic {magic:#010x}, expected {MAGIC:#010x})")
    # Before the size check: another version may well have another size.
    if version != VERSION:
        raise RegionError(
            f"the shared region {path} has layout version {version} but this hami_kernel reads "
            f"version {VERSION}; libvgpu and hami_kernel come from different releases"
        )
    if size != REGION_SIZE:
        raise RegionError(f"the shared region {path} is {size} bytes, not {REGION_SIZE}: it is corrupted")
    if (region_size, max_devices, max_procs, proc_size) != (REGION_SIZE, MAX_DEVICES, MAX_PROCS, PROC_SIZE):
        raise RegionError(f"the shared region {path} is corrupted (its header gives other sizes)")
    if checksum != _checksum(head[:_CHECKSUMMED]):
        raise RegionError(f"the shared region {path} is corrupted (bad header checksum)")
    if proc_high > MAX_PROCS:
        raise RegionError(f"the shared region {path} is corrupted (proc_high {proc_high} > {MAX_PROCS})")


def _map(path: str, fd: int, writable: bool) -> mmap.mmap:
    """Maps the region for a writer.

    Only the file's owner (this user, or root) can shrink it now, and only a
    writer maps it: a file truncated between the size check and the map is
    a RegionError; one truncated during a writer's few stores still ends the
    process with SIGBUS, as it would any program that maps files.
    """
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    try:
        return mmap.mmap(fd, REGION_SIZE, mmap.MAP_SHARED, prot)
    except (OSError, ValueError) as e:  # ValueError: the file is shorter than the region now
        raise RegionError(f"cannot map the shared region {path}: {getattr(e, 'strerror', None) or e}") from None


def _read_all(path: str, fd: int) -> bytes:
    """The whole region in one copy, read rather than mapped: a file truncated
    meanwhile gives a short read (a RegionError), never a SIGBUS."""
    try:
        data = os.pread(fd, REGION_SIZE, 0)
    except OSError as e:
        raise RegionError(f"cannot read the shared region {path}: {e.strerror}") from None
    if len(data) != REGION_SIZE:
        raise RegionError(f"the shared region {path} was truncated while it was read "
                          f"({len(data)} of {REGION_SIZE} bytes)")
    if _HEADER.unpack_from(data, 0)[0] != MAGIC:
        raise RegionError(f"the shared region {path} was overwritten while it was read")
    return data


# ---- liveness and decoding --------------------------------------------------


def _slot_live(fd: int, slot: int) -> bool:
    """True while some process holds slot's lock byte.

    The query asks "could I write-lock this byte?"; the kernel answers with the
    conflicting lock, or F_UNLCK if there is none.  Linux does not require the
    descriptor to be open for writing to ask, so a read-only reader works.  As
    in C, an answer we cannot get counts as live: over-reporting usage is safer
    than hiding a process that is still on the GPU.
    """
    query = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, PROCS_OFFSET + slot * PROC_SIZE, 1, 0)
    try:
        reply = fcntl.fcntl(fd, _F_OFD_GETLK, query)
    except OSError:
        return True
    l_type: int = _FLOCK.unpack(reply)[0]
    return l_type != fcntl.F_UNLCK


def _live_slots(fd: int, data: bytes | mmap.mmap) -> Iterator[int]:
    """Slots in [0, proc_high) that have a pid and whose lock is held."""
    proc_high = min(_HEADER.unpack_from(data, 0)[8], MAX_PROCS)
    for slot in range(proc_high):
        base = PROCS_OFFSET + slot * PROC_SIZE
        if _PROC_HEAD.unpack_from(data, base)[0] != 0 and _slot_live(fd, slot):
            yield slot


def _uuid_string(lo: int, hi: int) -> str:
    raw = (_U64.pack(lo) + _U64.pack(hi)).hex()
    return f"GPU-{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


def _registered(data: bytes | mmap.mmap) -> list[tuple[int, str, int, int, int]]:
    """(entry, uuid, memory_limit, context_size, sm_limit) of each registered device.

    An entry is registered once its UUID is complete and its limit has left
    LIMIT_UNSET; before that, its claimer is still writing it.
    """
    found = []
    for entry in range(MAX_DEVICES):
        lo, hi, limit, ctx, sm = _DEVICE.unpack_from(data, DEVICES_OFFSET + entry * DEVICE_SIZE)
        if lo != 0 and hi != 0 and limit != LIMIT_UNSET:
            found.append((entry, _uuid_string(lo, hi), limit, ctx, sm))
    return found


def _identity(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def _none_if(value: int, special: int) -> int | None:
    return None if value == special else value


def read_region(path: str | os.PathLike[str]) -> RegionSnapshot:
    """Reads the slice's region at ``path``: its devices and live processes."""
    path = os.fspath(path)
    fd = _open(path, os.O_RDONLY)
    try:
        data = _read_all(path, fd)  # one copy: every figure below comes from the same moment
        live = list(_live_slots(fd, data))
    finally:
        os.close(fd)

    registered = _registered(data)
    processes = []
    totals = [0] * MAX_DEVICES
    for slot in live:
        base = PROCS_OFFSET + slot * PROC_SIZE
        pid, _, claimed_ns, identity = _PROC_HEAD.unpack_from(data, base)
        used = _U64S.unpack_from(data, base + _PROC_USED)
        caps = _U64S.unpack_from(data, base + _PROC_LIMIT)
        launches = _U64S.unpack_from(data, base + _PROC_LAUNCHES)
        shares = _U32S.unpack_from(data, base + _PROC_SM_SHARE)
        sm_caps = _U32S.unpack_from(data, base + _PROC_SM_LIMIT)
        (updated_ns,) = _U64.unpack_from(data, base + _PROC_UPDATED)
        for entry in range(MAX_DEVICES):
            totals[entry] += used[entry]
        per_device = tuple(
            ProcessDeviceUsage(
                uuid=uuid,
                memory_used=used[entry],
                memory_limit=_none_if(caps[entry], 0),
                launches=launches[entry],
                sm_share=shares[entry] / SM_SHARE_SCALE,
                sm_limit=_none_if(sm_caps[entry], 0),
            )
            for entry, uuid, *_ in registered
        )
        processes.append(
            ProcessUsage(
                slot=slot,
                pid=pid,
                identity=_identity(identity),
                claimed_at=claimed_ns / 1e9,
                updated_at=updated_ns / 1e9 if updated_ns else None,
                devices=per_device,
            )
        )

    devices = tuple(
        DeviceUsage(
            entry=entry,
            uuid=uuid,
            memory_limit=_none_if(limit, UNLIMITED),
            memory_used=totals[entry],
            context_size=_none_if(ctx, 0),
            sm_limit=_none_if(sm, 0),
        )
        for entry, uuid, limit, ctx, sm in registered
    )
    created_ns = _HEADER.unpack_from(data, 0)[6]
    return RegionSnapshot(path, VERSION, created_ns / 1e9, devices, tuple(processes))


# ---- writers, for controllers -----------------------------------------------


def _entry_of(path: str, data: bytes | mmap.mmap, uuid: str) -> int:
    for entry, known, *_ in _registered(data):
        if known.lower() == uuid.lower():
            return entry
    raise KeyError(f"no GPU {uuid} in the shared region {path}")


def _store(words: memoryview, offset: int, value: int) -> None:
    """One aligned 8-byte store, so C never sees half of a new value.

    The region is in the host's byte order on both sides (libvgpu writes it
    with plain stores), which is little-endian on every host we run on.
    """
    assert offset % 8 == 0
    words[offset // 8] = value


def _checked_bytes(nbytes: int) -> int:
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0 or nbytes >= UNLIMITED:
        raise ValueError(f"a memory limit must be a positive number of bytes (use None for no limit), not {nbytes!r}")
    return nbytes


def set_memory_limit(path: str | os.PathLike[str], uuid: str, nbytes: int | None) -> None:
    """Resizes the slice on one GPU; None removes the cap.

    libvgpu reads the limit at every allocation, so the next one obeys it.
    Memory already allocated stays allocated even above a lowered limit.
    """
    value = UNLIMITED if nbytes is None else _checked_bytes(nbytes)
    path = os.fspath(path)
    fd = _open(path, os.O_RDWR)
    try:
        with _map(path, fd, writable=True) as mm:
            entry = _entry_of(path, mm, uuid)
            with memoryview(mm) as view, view.cast("Q") as words:
                _store(words, DEVICES_OFFSET + entry * DEVICE_SIZE + _DEVICE_LIMIT, value)
    finally:
        os.close(fd)


def _set_process_values(path: str | os.PathLike[str], identity: str, uuid: str | None, offset: int,
                        typecode: str, value: int) -> int:
    """Stores one per-device value in every live slot of ``identity``; returns how many."""
    path = os.fspath(path)
    fd = _open(path, os.O_RDWR)
    changed = 0
    width = struct.calcsize(typecode)
    try:
        with _map(path, fd, writable=True) as mm:
            if uuid is None:
                entries = [entry for entry, *_ in _registered(mm)]
            else:
                entries = [_entry_of(path, mm, uuid)]
            with memoryview(mm) as view, view.cast(typecode) as words:
                for slot in _live_slots(fd, mm):
                    base = PROCS_OFFSET + slot * PROC_SIZE
                    # Read from the live mapping, just before the stores, so
                    # a slot taken over since is not capped by mistake.
                    if _identity(_PROC_HEAD.unpack_from(mm, base)[3]) != identity:
                        continue
                    for entry in entries:
                        # One aligned store, so C never sees half of a new value.
                        words[(base + offset + width * entry) // width] = value
                    changed += 1
    finally:
        os.close(fd)
    return changed


def set_process_memory_limit(path: str | os.PathLike[str], identity: str, uuid: str | None, nbytes: int | None) -> int:
    """Caps every live process of ``identity`` on one GPU (or all when uuid is None).

    None removes the per-process cap (the slice's limit still applies).
    Returns how many process slots were changed.
    """
    value = 0 if nbytes is None else _checked_bytes(nbytes)
    return _set_process_values(path, identity, uuid, _PROC_LIMIT, "Q", value)


def set_process_sm_limit(path: str | os.PathLike[str], identity: str, uuid: str | None, percent: int | None) -> int:
    """Caps the compute share of every live process of ``identity``, like
    :func:`set_process_memory_limit`; libvgpu applies it from its next launch.

    None removes the per-process cap (the slice's share still applies).
    """
    if percent is not None and (isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= 100):
        raise ValueError(f"a compute share must be a whole percent from 1 to 100 (None for no cap), not {percent!r}")
    return _set_process_values(path, identity, uuid, _PROC_SM_LIMIT, "I", 0 if percent in (None, 100) else percent)
