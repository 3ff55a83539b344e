"""The files processes share (a slice's region, the GPU's turn files): nobody
else can plant, read, fill or truncate them, and a bad file fails closed.

libvgpu (over the fake driver, plain and under ASan + UBSan) and
hami_kernel.region are held to the same rules: no link followed, no FIFO or
device opened, only regular files that this user or root owns and nobody
else may write; a file truncated while in use gives one error line (C) or a
RegionError (Python), never a signal or a hang.

Tests that need a second user run as root (as CI does) and act as two
throwaway uids that exist nowhere else: the victim and the attacker.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from cbuild import Runner
from hami_kernel import region as region_mod

SLICE_1G = {"CUDA_DEVICE_MEMORY_LIMIT": "1g"}
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="acting as two other users needs root (CI runs as root)")


def _libvgpu_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("libvgpu[")]


def _fails_closed_with(runner: Runner, env: dict[str, str], *words: str,
                       user: int | None = None) -> str:
    """Runs the fails_closed case (every CUDA call must fail, nothing reach the
    driver) and checks its one line of stderr."""
    done = _run_as(runner, "fails_closed", env, user)
    assert done.returncode == 0 and "PASS fails_closed" in done.stdout, done.stdout + done.stderr
    lines = _libvgpu_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _become(user: int):  # type: ignore[no-untyped-def]
    """A preexec_fn that drops every privilege and becomes uid:gid user:user."""
    def become() -> None:
        os.setgroups([])
        os.setgid(user)
        os.setuid(user)
    return become


def _run_as(runner: Runner, case: str, env: dict[str, str], user: int | None,
            timeout: float = 60, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([runner.binary, case], env=runner.env(env), capture_output=True, text=True,
                          timeout=timeout, input=stdin, preexec_fn=None if user is None else _become(user))


# ---- odd files at the region's path -------------------------------------------


def _valid_region(runner: Runner, path: Path) -> None:
    """A real region, made by libvgpu itself."""
    runner.run("unlimited", {"CUDA_DEVICE_MEMORY_SHARED_CACHE": str(path)})
    assert path.stat().st_size == region_mod.REGION_SIZE


def test_region_behind_a_symbolic_link_is_refused(runner: Runner) -> None:
    real = runner.tmp / "real.region"
    _valid_region(runner, real)
    runner.region.symlink_to(real)
    _fails_closed_with(runner, SLICE_1G, str(runner.region), "symbolic link")


def test_region_that_is_a_fifo_fails_closed_without_hanging(runner: Runner) -> None:
    os.mkfifo(runner.region, 0o600)
    _fails_closed_with(runner, SLICE_1G, str(runner.region), "is a FIFO")  # _run_as has a timeout


def test_region_that_is_a_device_is_refused(runner: Runner) -> None:
    _fails_closed_with(runner, {**SLICE_1G, "CUDA_DEVICE_MEMORY_SHARED_CACHE": "/dev/null"},
                       "/dev/null", "is a device")


@pytest.mark.parametrize("mode,who", [(0o666, "others"), (0o620, "its group")])
def test_region_that_others_may_write_is_refused(runner: Runner, mode: int, who: str) -> None:
    _valid_region(runner, runner.region)
    runner.region.chmod(mode)
    _fails_closed_with(runner, SLICE_1G, str(runner.region), f"writable by {who}")


def test_turn_file_that_others_may_write_is_refused(runner: Runner) -> None:
    # A capped process opens its GPU's turn file at the first launch.
    turns = runner.tmp / "turns"
    env = {**SLICE_1G, "CUDA_DEVICE_SM_LIMIT": "30", "GPU_CORE_UTILIZATION_POLICY": "force",
           "LIBVGPU_ARBITER_DIR": str(turns), "VGPU_TEST_LAUNCHES": "1"}
    held = runner.start("hold", env)
    assert held.stdout.readline() == "ready\n"
    held.communicate(timeout=60)
    (turn_file,) = turns.glob("GPU-*.arbiter")
    assert stat.S_IMODE(turn_file.stat().st_mode) == 0o600
    turn_file.chmod(0o666)
    done = _run_as(runner, "hold", env, None, stdin="")
    assert done.returncode != 0
    lines = _libvgpu_lines(done.stderr)
    assert len(lines) == 1 and "turn file" in lines[0] and "writable by others" in lines[0], done.stderr


def test_turn_file_that_is_a_fifo_fails_closed_without_hanging(runner: Runner) -> None:
    turns = runner.tmp / "turns"
    turns.mkdir(mode=0o700)
    os.mkfifo(turns / "GPU-face0000-1020-3040-5060-708090a0b0c0.arbiter", 0o600)
    env = {**SLICE_1G, "CUDA_DEVICE_SM_LIMIT": "30", "GPU_CORE_UTILIZATION_POLICY": "force",
           "LIBVGPU_ARBITER_DIR": str(turns), "VGPU_TEST_LAUNCHES": "1"}
    done = _run_as(runner, "hold", env, None, stdin="")  # _run_as has a timeout
    assert done.returncode != 0
    lines = _libvgpu_lines(done.stderr)
    assert len(lines) == 1 and "turn file" in lines[0] and "is a FIFO" in lines[0], done.stderr


# ---- truncation while in use ----------------------------------------------------


def _truncate_while_held(runner: Runner, env: dict[str, str], victim: Path | None) -> None:
    held = runner.start("hold", {**env, "VGPU_TEST_EXPECT_BROKEN": "1"})
    assert held.stdout.readline() == "ready\n"
    target = victim or runner.region
    os.truncate(target, 0)
    out, err = held.communicate(timeout=60)
    assert held.returncode == 0 and "PASS hold" in out, f"exit {held.returncode}\n{out}\n{err}"
    lines = _libvgpu_lines(err)
    assert any("was truncated while in use" in line and str(target) in line for line in lines), err


def test_region_truncated_while_mapped_fails_closed_without_a_signal(runner: Runner) -> None:
    # The process touches the region again at its next allocation (and its
    # statistics thread twice a second): no SIGBUS, CUDA calls fail from then on.
    _truncate_while_held(runner, SLICE_1G, None)


def test_turn_file_truncated_while_mapped_fails_closed_without_a_signal(runner: Runner) -> None:
    turns = runner.tmp / "turns"
    env = {**SLICE_1G, "CUDA_DEVICE_SM_LIMIT": "30", "GPU_CORE_UTILIZATION_POLICY": "force",
           "LIBVGPU_ARBITER_DIR": str(turns), "VGPU_TEST_LAUNCHES": "1"}
    # Make the turn file first, so that it can be named before the process starts.
    first = runner.start("hold", env)
    first.communicate(input="", timeout=60)
    assert first.returncode == 0
    _truncate_while_held(runner, env, next(turns.glob("GPU-*.arbiter")))


def test_log_lines_escape_control_characters(runner: Runner) -> None:
    # A value with a newline cannot add a line that looks like libvgpu's own.
    done = _run_as(runner, "fails_closed", {"CUDA_DEVICE_MEMORY_LIMIT": "1g\nlibvgpu[1] info: all fine"}, None)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("libvgpu[") and "\\x0alibvgpu[1] info" in lines[0], done.stderr


# ---- the same rules in Python ------------------------------------------------------


def _python_refuses(path: Path | str, *words: str) -> None:
    with pytest.raises(region_mod.RegionError) as info:
        region_mod.read_region(path)
    for word in words:
        assert word in str(info.value)


def test_reader_refuses_links_fifos_devices_and_writable_files(runner: Runner, tmp_path: Path) -> None:
    real = tmp_path / "real.region"
    _valid_region(runner, real)
    region_mod.read_region(real)  # the control: the real file reads
    link = tmp_path / "link.region"
    link.symlink_to(real)
    _python_refuses(link, "symbolic link")
    fifo = tmp_path / "fifo.region"
    os.mkfifo(fifo, 0o600)
    _python_refuses(fifo, "is a FIFO")  # promptly: the FIFO is never opened
    _python_refuses("/dev/null", "is a device")
    real.chmod(0o646)
    _python_refuses(real, "writable by others")
    with pytest.raises(region_mod.RegionError, match="writable by others"):
        region_mod.set_memory_limit(real, "GPU-face0000-1020-3040-5060-708090a0b0c0", 1 << 30)


def test_reader_truncation_during_a_read_is_a_region_error(runner: Runner, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "slice.region"
    _valid_region(runner, path)
    checked = region_mod._check_header

    def then_truncate(where: str, head: bytes, size: int) -> None:
        checked(where, head, size)
        os.truncate(path, 4096)  # after the checks, before the data is read or mapped
    monkeypatch.setattr(region_mod, "_check_header", then_truncate)
    with pytest.raises(region_mod.RegionError, match="truncated while it was read"):
        region_mod.read_region(path)
    path.unlink()
    _valid_region(runner, path)
    with pytest.raises(region_mod.RegionError, match="cannot map the shared region"):
        region_mod.set_memory_limit(path, "GPU-face0000-1020-3040-5060-708090a0b0c0", 1 << 30)


# ---- a second user --------------------------------------------------------------------


@pytest.fixture
def two_users() -> Iterator[tuple[int, int, Path]]:
    """(victim uid, attacker uid, a sticky world-writable directory like /tmp),
    uids that no account uses, and their default directories removed after."""
    # Below 65534, so that they exist in containers that map only 65536 uids.
    base = 61_000 + (os.getpid() % 1_000) * 2
    victim, attacker = base, base + 1
    shared = Path(tempfile.mkdtemp(prefix="hami-shared-"))
    shared.chmod(0o1777)
    yield victim, attacker, shared
    shutil.rmtree(shared, ignore_errors=True)
    for uid in (victim, attacker):
        shutil.rmtree(f"/tmp/libvgpu.{uid}", ignore_errors=True)


def _as_user(user: int, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=60,
                          preexec_fn=_become(user))


def _read_region_as(user: int, path: Path) -> str:
    """What hami_kernel.region.read_region says to another user, in a forked child."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            _become(user)()
            try:
                region_mod.read_region(path)
                message = "read"
            except region_mod.RegionError as e:
                message = str(e)
            os.write(w, message.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as pipe:
        message = pipe.read()
    os.waitpid(child, 0)
    return message


def _shareable(runner: Runner, env: dict[str, str], shared: Path) -> dict[str, str]:
    """The runner's env with the fake driver's state where both users can write it."""
    state = shared / "fake.state"
    if not state.exists():
        state.touch()
        state.chmod(0o666)
    return {**env, "FAKE_CUDA_STATE": str(state)}


@needs_root
def test_default_paths_work_for_an_unprivileged_user(runner: Runner, two_users: tuple[int, int, Path]) -> None:
    victim, _, shared = two_users
    env = _shareable(runner, SLICE_1G, shared)
    done = _run_as(runner, "info", {**env, "CUDA_DEVICE_MEMORY_SHARED_CACHE": ""}, victim)
    assert done.returncode == 0 and "PASS info" in done.stdout, done.stdout + done.stderr
    home = Path(f"/tmp/libvgpu.{victim}")
    st = home.stat()
    assert st.st_uid == victim and stat.S_IMODE(st.st_mode) == 0o700
    region = home / "region"
    assert region.stat().st_uid == victim and stat.S_IMODE(region.stat().st_mode) == 0o600


@needs_root
def test_another_user_cannot_plant_the_default_directory(runner: Runner, two_users: tuple[int, int, Path]) -> None:
    victim, attacker, shared = two_users
    planted = Path(f"/tmp/libvgpu.{victim}")
    assert _as_user(attacker, "mkdir", "-m", "0777", str(planted)).returncode == 0
    env = _shareable(runner, SLICE_1G, shared)
    line = _fails_closed_with(runner, {**env, "CUDA_DEVICE_MEMORY_SHARED_CACHE": ""}, str(planted),
                              f"belongs to uid {attacker}", user=victim)
    assert "refusing it" in line


@needs_root
def test_another_user_cannot_plant_read_fill_or_truncate_a_region(runner: Runner,
                                                                   two_users: tuple[int, int, Path]) -> None:
    victim, attacker, shared = two_users
    path = shared / "victim.region"
    env = _shareable(runner, {**SLICE_1G, "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(path)}, shared)
    # Planted: the attacker makes a real region there first, open to all.
    done = _run_as(runner, "info", env, attacker)
    assert done.returncode == 0, done.stderr
    os.chmod(path, 0o666)  # as its owner could
    _fails_closed_with(runner, env, str(path), f"belongs to uid {attacker}", user=victim)
    path.unlink()
    # The victim's own region: the attacker's libvgpu refuses to account in
    # it (no filling its slots), Python refuses to read it, and it cannot be
    # truncated.
    done = _run_as(runner, "info", env, victim)
    assert done.returncode == 0 and path.stat().st_uid == victim, done.stderr
    _fails_closed_with(runner, env, str(path), f"belongs to uid {victim}", user=attacker)
    assert f"belongs to uid {victim}" in _read_region_as(attacker, path)
    truncate = _as_user(attacker, "truncate", "-s", "0", str(path))
    assert truncate.returncode != 0 and path.stat().st_size == region_mod.REGION_SIZE


@needs_root
def test_another_user_cannot_plant_a_turn_file(runner: Runner, two_users: tuple[int, int, Path]) -> None:
    victim, attacker, shared = two_users
    turns = shared / "turns"
    env = _shareable(runner, {**SLICE_1G, "CUDA_DEVICE_SM_LIMIT": "30", "GPU_CORE_UTILIZATION_POLICY": "force",
                              "LIBVGPU_ARBITER_DIR": str(turns), "VGPU_TEST_LAUNCHES": "1",
                              "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(shared / "attacker.region")}, shared)
    done = _run_as(runner, "hold", env, attacker, stdin="")
    assert done.returncode == 0, done.stderr
    os.chmod(turns, 0o1777)  # the attacker shares the directory, and its files with it
    for turn_file in turns.glob("GPU-*.arbiter"):
        os.chmod(turn_file, 0o666)
    env["CUDA_DEVICE_MEMORY_SHARED_CACHE"] = str(shared / "victim.region")
    done = _run_as(runner, "hold", env, victim, stdin="")
    assert done.returncode != 0
    lines = _libvgpu_lines(done.stderr)
    assert len(lines) == 1 and "turn file" in lines[0] and f"belongs to uid {attacker}" in lines[0], done.stderr


@needs_root
def test_another_user_cannot_join_read_or_truncate_a_turn_file(runner: Runner,
                                                               two_users: tuple[int, int, Path]) -> None:
    victim, attacker, shared = two_users
    turns = shared / "turns"
    turns.mkdir()
    turns.chmod(0o1777)  # a directory both may write, as a shared one would be
    env = _shareable(runner, {**SLICE_1G, "CUDA_DEVICE_SM_LIMIT": "30", "GPU_CORE_UTILIZATION_POLICY": "force",
                              "LIBVGPU_ARBITER_DIR": str(turns), "VGPU_TEST_LAUNCHES": "1",
                              "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(shared / "victim.region")}, shared)
    assert _run_as(runner, "hold", env, victim, stdin="").returncode == 0
    (turn_file,) = turns.glob("GPU-*.arbiter")
    assert turn_file.stat().st_uid == victim and stat.S_IMODE(turn_file.stat().st_mode) == 0o600
    env["CUDA_DEVICE_MEMORY_SHARED_CACHE"] = str(shared / "attacker.region")
    done = _run_as(runner, "hold", env, attacker, stdin="")
    lines = _libvgpu_lines(done.stderr)
    assert done.returncode != 0 and len(lines) == 1 and f"belongs to uid {victim}" in lines[0], done.stderr
    assert _as_user(attacker, "cat", str(turn_file)).returncode != 0
    assert _as_user(attacker, "truncate", "-s", "0", str(turn_file)).returncode != 0
    assert turn_file.stat().st_size > 0
