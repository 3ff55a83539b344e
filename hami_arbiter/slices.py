"""Whose slice a client process runs in, from sources the process cannot write.

:func:`slice_of` answers, for a pid, the slice its share and memory come from:

1. **Its container's slice file** (Kubernetes): ``/proc/<pid>/root`` +
   ``/etc/hami-jupyter/slice``, the pod's annotation as the kubelet wrote it
   (HamiSpawner's ``slice_file_text``), accepted only when it is a regular file
   owned by root that nobody else may write.  Keyed by the process's mount
   namespace: the processes of one container share it.
2. **The local hub's grants** (one machine): LocalGpuSpawner writes one file
   per server it starts into a grants directory only the hub's user (or root)
   can write, named ``<pid>-<start time>`` after the server process, holding
   the same NAME=VALUE lines.  A client is in the slice of its nearest
   granted ancestor (the start time rules out a recycled pid); a process of a
   user who has grants but no granted ancestor (started elsewhere, e.g. from
   an ssh session) gets that user's smallest grant.

Without either, :func:`slice_of` returns None and only then does the
client's own claim count.  The backstop (backstop.py) uses the same function.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from hami_kernel.slice import parse_env_cores, parse_env_memory

SLICE_FILE = "/etc/hami-jupyter/slice"
MAX_FILE = 65536


@dataclass(frozen=True)
class TrustedSlice:
    """A slice as its trusted source gives it.

    ``key`` names the slice (processes with the same key share it),
    ``memory_limit`` is bytes per GPU (the smallest where devices differ;
    None: no limit), ``compute_share`` percent (None: no cap), ``source``
    says where it came from, for messages.
    """

    key: str
    memory_limit: int | None
    compute_share: int | None
    source: str


class UntrustedFile(ValueError):
    """A file that is there but may not be believed (owner, mode, kind, content)."""


def read_trusted_text(path: str | os.PathLike[str], owners: tuple[int, ...] = (0,),
                      follow: bool = True) -> str | None:
    """The text of a root-owned (or `owners`') file nobody else may write.

    None if it does not exist; UntrustedFile if it exists but fails a check.
    `follow`: whether the last component may be a link (the kubelet's
    downward-API files are links that only root can make).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    if not follow:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UntrustedFile(f"cannot open {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UntrustedFile(f"{path} is not a regular file")
        if st.st_uid not in owners or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UntrustedFile(f"{path} is not owned by a trusted user or others may write it")
        if st.st_size > MAX_FILE:
            raise UntrustedFile(f"{path} is too large")
        data = os.read(fd, MAX_FILE + 1)
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UntrustedFile(f"{path} is not text") from None


def parse_slice_text(text: str, key: str, source: str) -> TrustedSlice:
    """The slice in NAME=VALUE lines (csrc/src/trusted.h's language).

    Names this module does not need are ignored (libvgpu checks them); a
    malformed limit is UntrustedFile, never "no limit".
    """
    memory: list[int] = []
    shares: list[int] = []  # a device with no cap does not raise the others' share
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise UntrustedFile(f"{source}: expected NAME=VALUE, got {line[:40]!r}")
        base = name.rstrip("0123456789").rstrip("_") if name[-1:].isdigit() else name
        try:
            if base == "CUDA_DEVICE_MEMORY_LIMIT":
                memory.append(parse_env_memory(value, name))
            elif base == "CUDA_DEVICE_SM_LIMIT":
                share = parse_env_cores(value, name)
                if share is not None:
                    shares.append(share)
        except ValueError as exc:
            raise UntrustedFile(f"{source}: {exc}") from None
    return TrustedSlice(key=key, memory_limit=min(memory) if memory else None,
                        compute_share=min(shares) if shares else None, source=source)


def proc_stat(pid: int, proc: str = "/proc") -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a process, None if it is gone."""
    try:
        text = Path(proc, str(pid), "stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text[text.rfind(")") + 2:].split()
    try:
        return int(fields[1]), int(fields[19])
    except (IndexError, ValueError):
        return None


def proc_uid(pid: int, proc: str = "/proc") -> int | None:
    try:
        return os.stat(Path(proc, str(pid))).st_uid
    except OSError:
        return None


def ancestry(pid: int, proc: str = "/proc") -> Iterator[tuple[int, int]]:
    """(pid, start time) of the process and each of its ancestors, nearest first."""
    seen = set()
    while pid > 0 and pid not in seen:
        seen.add(pid)
        info = proc_stat(pid, proc)
        if info is None:
            return
        yield pid, info[1]
        pid = info[0]


class Resolver:
    """slice_of(pid) with its sources configurable (tests point them elsewhere)."""

    def __init__(self, grants_dir: str | None = None, proc: str = "/proc",
                 slice_file: str = SLICE_FILE, trusted_owners: tuple[int, ...] | None = None):
        self.grants_dir = grants_dir
        self.proc = proc
        self.slice_file = slice_file
        # Grants are believed from root and the daemon's own user (the hub's).
        self.owners = trusted_owners or tuple(sorted({0, os.geteuid()}))
        # The grants as last read, and what the directory looked like then: the
        # backstop resolves every process on the GPUs several times a second, and
        # the hub adds and removes grants only by renaming and unlinking.
        self._grants_seen: tuple[object, dict[tuple[int, int], TrustedSlice]] | None = None

    def slice_of(self, pid: int) -> TrustedSlice | None:
        found = self._from_slice_file(pid)
        return found if found is not None else self._from_grants(pid)

    def _from_slice_file(self, pid: int) -> TrustedSlice | None:
        path = f"{self.proc}/{pid}/root{self.slice_file}"
        try:
            text = read_trusted_text(path, owners=(0,))
            if text is None:
                return None
            ns = os.readlink(f"{self.proc}/{pid}/ns/mnt")
        except (UntrustedFile, OSError):
            return None
        try:
            return parse_slice_text(text, f"slice-file:{ns}", f"the slice file of pid {pid}")
        except UntrustedFile:
            return None

    def _grants(self) -> dict[tuple[int, int], TrustedSlice]:
        """The grants of live servers, keyed by (pid, start time)."""
        if not self.grants_dir:
            return {}
        try:
            st = os.stat(self.grants_dir, follow_symlinks=False)
            if (not stat.S_ISDIR(st.st_mode) or st.st_uid not in self.owners
                    or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
                return {}
            names = sorted(os.listdir(self.grants_dir))
        except OSError:
            return {}
        # The names too, not the times alone: a directory's times move in coarse ticks.
        seen = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, tuple(names))
        if self._grants_seen is not None and self._grants_seen[0] == seen:
            return self._grants_seen[1]
        grants = {}
        for name in names:
            pid_text, _, start_text = name.partition("-")
            if not (pid_text.isdigit() and start_text.isdigit()):
                continue
            try:
                text = read_trusted_text(os.path.join(self.grants_dir, name), self.owners, follow=False)
                if text is None:
                    continue
                grant = parse_slice_text(text, f"grant:{name}", f"the hub's grant {name}")
            except UntrustedFile:
                continue
            grants[(int(pid_text), int(start_text))] = grant
        self._grants_seen = (seen, grants)
        return grants

    def _from_grants(self, pid: int) -> TrustedSlice | None:
        grants = self._grants()
        if not grants:
            return None
        for link in ancestry(pid, self.proc):
            if link in grants:
                return grants[link]
        uid = proc_uid(pid, self.proc)
        mine = [g for (gpid, start), g in grants.items()
                if proc_uid(gpid, self.proc) == uid and uid is not None
                and (proc_stat(gpid, self.proc) or (0, -1))[1] == start]
        if not mine:
            return None
        return min(mine, key=lambda g: (g.compute_share or 101, g.memory_limit or 1 << 64, g.key))


_default = Resolver()


def configure(grants_dir: str | None) -> None:
    """Sets where slice_of looks for the local hub's grants (the daemon's --grants-dir)."""
    global _default
    _default = Resolver(grants_dir=grants_dir)


def slice_of(pid: int) -> TrustedSlice | None:
    """The trusted slice of a process, or None if no trusted source names one."""
    return _default.slice_of(pid)
