"""hami-arbiter as a process: its command line, its socket, the protocol, and the
pid -> slice resolver (hami_arbiter.slices) against a stand-in /proc."""
from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from hami_arbiter import protocol as P
from hami_arbiter.slices import Resolver, TrustedSlice, parse_slice_text

ROOT = Path(__file__).resolve().parent.parent
GPU = bytes.fromhex("face0000102030405060708090a0b0c0")


def _daemon(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "hami_arbiter.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Path]:
    sock_dir = tmp_path / "arbiter"
    proc = _daemon(["--socket-dir", str(sock_dir), "--backstop", "off"])
    deadline = time.monotonic() + 20
    while not (sock_dir / "arbiter.sock").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    yield sock_dir
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert not (sock_dir / "arbiter.sock").exists()  # a clean stop removes it


def _client(sock_dir: Path, share: int) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(5)
    s.connect(str(sock_dir / "arbiter.sock"))
    s.send(P.Message(P.HELLO, share=share, uuid=GPU).pack())
    welcome = _read(s)
    assert welcome.op == P.WELCOME and welcome.share == share and welcome.value == 0  # no trusted slice here
    return s


def _read(s: socket.socket) -> P.Message:
    import struct
    magic, version, op, share, flags, value, uuid = struct.unpack("=IHHIIQ16s", s.recv(100))
    assert (magic, version) == (P.MAGIC, P.VERSION)
    return P.Message(op, share, flags, value, uuid)


@pytest.mark.parametrize("args, words", [
    (["--backstop", "maybe"], "invalid choice: 'maybe'"),
    (["--backstop-grace", "soon"], "'soon' is not a number of seconds"),
    (["--backstop-grace", "-1"], "the grace must be 0 to 60 seconds"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_bad_arguments_exit_2_with_one_line(args: list[str], words: str) -> None:
    done = subprocess.run([sys.executable, "-m", "hami_arbiter.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=30)
    assert done.returncode == 2 and words in done.stderr and len(done.stderr.strip().splitlines()) == 1, done


def test_socket_modes_turns_and_garbage(daemon: Path) -> None:
    assert stat.S_IMODE(os.stat(daemon).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(daemon / "arbiter.sock").st_mode) == 0o666
    a, b = _client(daemon, 30), _client(daemon, 70)
    a.send(P.Message(P.WANT, value=10_000_000).pack())
    assert _read(a).op == P.GRANT
    b.send(P.Message(P.WANT, value=10_000_000).pack())
    assert _read(a).op == P.WAITING  # b is due at the end of a's quantum
    # Garbage from a third connection ends that connection only.
    junk = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    junk.connect(str(daemon / "arbiter.sock"))
    junk.send(os.urandom(40))
    junk.settimeout(5)
    assert junk.recv(100) == b""  # dropped
    a.send(P.Message(P.DONE, value=10_000_000).pack())
    assert _read(b).op == P.GRANT
    # A holder that goes away frees the GPU at once.
    a.send(P.Message(P.WANT, value=10_000_000).pack())
    b.close()
    assert _read(a).op == P.GRANT
    a.close()


def test_slice_text_is_parsed_in_the_environments_language() -> None:
    got = parse_slice_text("# pod\nCUDA_DEVICE_MEMORY_LIMIT=4g\nCUDA_DEVICE_MEMORY_LIMIT_1=2g\n"
                           "CUDA_DEVICE_SM_LIMIT=30\nLIBVGPU_ARBITER_SOCKET=/run/x.sock\n", "k", "s")
    assert got == TrustedSlice(key="k", memory_limit=2 << 30, compute_share=30, source="s")
    for bad in ("CUDA_DEVICE_SM_LIMIT=+30\n", "CUDA_DEVICE_MEMORY_LIMIT=\n", "no equals sign\n"):
        with pytest.raises(ValueError):
            parse_slice_text(bad, "k", "s")


def _fake_proc(tmp: Path, pid: int, ppid: int, start: int, uid_root: Path | None = None) -> None:
    d = tmp / "proc" / str(pid)
    d.mkdir(parents=True)
    (d / "stat").write_text(f"{pid} (a (weird) name) S {ppid} " + " ".join(["0"] * 17) + f" {start} 0 0\n")
    (d / "ns").mkdir()
    os.symlink(f"mnt:[{4026531840 + pid}]", d / "ns" / "mnt")
    if uid_root is not None:
        os.symlink(uid_root, d / "root")


@pytest.mark.skipif(os.geteuid() != 0, reason="a root-owned slice file needs root (CI runs as root)")
def test_the_slice_file_of_a_container_must_be_roots_and_not_writable_by_others(tmp_path: Path) -> None:
    container = tmp_path / "container"
    (container / "etc" / "hami-jupyter").mkdir(parents=True)
    slice_file = container / "etc" / "hami-jupyter" / "slice"
    slice_file.write_text("CUDA_DEVICE_SM_LIMIT=25\nCUDA_DEVICE_MEMORY_LIMIT=8g\n")
    slice_file.chmod(0o644)
    _fake_proc(tmp_path, 100, 1, 5000, container)
    resolver = Resolver(proc=str(tmp_path / "proc"))
    found = resolver.slice_of(100)
    assert found is not None and found.compute_share == 25 and found.memory_limit == 8 << 30
    assert found.key == "slice-file:mnt:[4026531940]"
    slice_file.chmod(0o666)  # anyone could have written it: not trusted
    assert resolver.slice_of(100) is None
    slice_file.chmod(0o644)
    os.chown(slice_file, 65534, 65534)  # the user's own file: not trusted
    assert resolver.slice_of(100) is None


def test_grants_resolve_through_the_nearest_granted_ancestor(tmp_path: Path) -> None:
    grants = tmp_path / "grants"
    grants.mkdir(mode=0o700)
    _fake_proc(tmp_path, 10, 1, 111)   # a server the hub started
    _fake_proc(tmp_path, 20, 10, 222)  # its kernel
    _fake_proc(tmp_path, 30, 20, 333)  # the kernel's child
    _fake_proc(tmp_path, 40, 1, 444)   # a process of no server
    (grants / "10-111").write_text("CUDA_DEVICE_SM_LIMIT=30\n")
    (grants / "10-999").write_text("CUDA_DEVICE_SM_LIMIT=90\n")  # a recycled pid's old grant: not it
    resolver = Resolver(grants_dir=str(grants), proc=str(tmp_path / "proc"), trusted_owners=(os.geteuid(),))
    assert resolver.slice_of(30).compute_share == 30
    assert resolver.slice_of(20).key == "grant:10-111"
    # Not under a server: the smallest grant of its user (all are this user's here).
    assert resolver.slice_of(40).compute_share == 30
    # A grants directory others may write is not believed.
    grants.chmod(0o777)
    assert resolver.slice_of(30) is None


def test_grants_added_and_removed_are_seen_at_once(tmp_path: Path) -> None:
    # The resolver keeps the grants it read while the directory is unchanged; the hub
    # adds a grant by renaming and removes one by unlinking, each seen on the next call.
    grants = tmp_path / "grants"
    grants.mkdir(mode=0o700)
    _fake_proc(tmp_path, 10, 1, 111)
    _fake_proc(tmp_path, 11, 1, 112)
    resolver = Resolver(grants_dir=str(grants), proc=str(tmp_path / "proc"), trusted_owners=(os.geteuid(),))
    assert resolver.slice_of(10) is None
    for pid, start, share in ((10, 111, 30), (11, 112, 70)):
        (grants / "new.tmp").write_text(f"CUDA_DEVICE_SM_LIMIT={share}\n")
        os.replace(grants / "new.tmp", grants / f"{pid}-{start}")
        assert resolver.slice_of(pid).compute_share == share  # within the same tick of the clock too
    (grants / "10-111").unlink()
    assert resolver.slice_of(10).compute_share == 70  # now only its user's other grant
    (grants / "11-112").unlink()
    assert resolver.slice_of(11) is None


def test_a_tenant_whose_turns_are_taken_back_is_named_once_a_minute(caplog: pytest.LogCaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from hami_arbiter import server as S

    clock = [10 ** 12]
    monkeypatch.setattr(S, "_now", lambda: clock[0])
    daemon = S.ArbiterServer("/nonexistent", lambda pid: None)
    squatter = S.Client(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET), pid=4242, uid=1234)
    try:
        with caplog.at_level("INFO", logger="hami_arbiter"):
            for _ in range(500):  # a revocation every 20 ms for 10 s
                daemon._log_revoked(squatter)
                clock[0] += 20_000_000
            clock[0] += S.REVOKED_LOG_INTERVAL_NS
            daemon._log_revoked(squatter)
    finally:
        squatter.sock.close()
    lines = [r.getMessage() for r in caplog.records if "taken back" in r.getMessage()]
    assert lines == ["pid 4242 (uid 1234) kept the GPU from others without using it: its turn was taken back "
                     "(1 time so far)",
                     "pid 4242 (uid 1234) kept the GPU from others without using it: its turn was taken back "
                     "(501 times so far)"]
