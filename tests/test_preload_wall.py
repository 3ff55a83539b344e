"""Kubernetes: a wall, not an agreement. With the image's arrangement
(libvgpu in /etc/ld.so.preload, the slice in a root-owned file), a user's
process gets exactly its slice whatever its environment: LD_PRELOAD unset,
the limit variables raised, the region pointed elsewhere, the region file
(the user's own) rewritten.

Reproduced in a private mount namespace (as root, as CI runs): /etc gets an
overlay holding ld.so.preload and hami-jupyter/slice, and the processes run
as a throwaway unprivileged uid, over the fake driver (plain build: an
ASan runtime cannot be preloaded through ld.so.preload).
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from cbuild import build_tests

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="a private mount namespace needs root and unshare (CI runs as root)")


class Wall:
    """The arrangement, and a way to run a process as the user inside it."""

    def __init__(self, build: Path, shared: Path, user: int):
        self.build = build
        self.shared = shared
        self.user = user
        self.library = build / "csrc" / "libvgpu.so"
        self.region = shared / "slice.region"
        self.state = shared / "fake.state"
        self.state.touch()
        self.state.chmod(0o666)
        self.slice_text = f"# the pod's slice\nCUDA_DEVICE_MEMORY_LIMIT=1g\nCUDA_DEVICE_MEMORY_SHARED_CACHE={self.region}\n"
        self.slice_mode = 0o644
        self.slice_owner = 0

    def run(self, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """Runs argv as the user with exactly env (plus PATH and the fake driver)."""
        full = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(self.build / "fakedrv"),
                "FAKE_CUDA_STATE": str(self.state), **env}
        setup = self.shared / "etc-upper"
        script = f"""
set -e
mount --make-rprivate /
top=$(mktemp -d)
mount -t tmpfs none "$top"
mkdir -p "$top/up/hami-jupyter" "$top/work"
printf '%s\\n' {shlex.quote(str(self.library))} > "$top/up/ld.so.preload"
cp {shlex.quote(str(setup))} "$top/up/hami-jupyter/slice"
chown {self.slice_owner} "$top/up/hami-jupyter/slice"
chmod {self.slice_mode:o} "$top/up/hami-jupyter/slice"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$top/up,workdir=$top/work" /etc
exec setpriv --reuid={self.user} --regid={self.user} --clear-groups env -i {' '.join(shlex.quote(f'{k}={v}') for k, v in full.items())} {' '.join(shlex.quote(a) for a in argv)}
"""
        setup.write_text(self.slice_text)
        return subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=120)

    def case(self, case: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return self.run([str(self.build / "csrc" / "tests" / "test_wall"), case], env)


@pytest.fixture
def wall() -> Iterator[Wall]:
    build = build_tests("plain")
    shared = Path(tempfile.mkdtemp(prefix="hami-wall-"))
    shared.chmod(0o1777)
    user = 63_000 + os.getpid() % 2_000  # below 65534: containers may map only 65536 uids
    yield Wall(build, shared, user)
    shutil.rmtree(shared, ignore_errors=True)
    shutil.rmtree(f"/tmp/libvgpu.{user}", ignore_errors=True)


def _passed(done: subprocess.CompletedProcess[str], case: str) -> None:
    assert done.returncode == 0 and f"PASS {case}" in done.stdout, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"


@pytest.mark.parametrize("env", [
    {},  # no LD_PRELOAD at all: ld.so.preload loads libvgpu anyway
    {"LD_PRELOAD": ""},
    {"CUDA_DEVICE_MEMORY_LIMIT": "80g", "CUDA_DEVICE_MEMORY_LIMIT_0": "80g"},
    {"CUDA_DEVICE_MEMORY_SHARED_CACHE": "ELSEWHERE"},
], ids=["no-preload-variable", "preload-emptied", "limits-raised", "region-elsewhere"])
def test_the_slice_holds_whatever_the_environment(wall: Wall, env: dict[str, str]) -> None:
    elsewhere = wall.shared / "mine.region"
    env = {k: str(elsewhere) if v == "ELSEWHERE" else v for k, v in env.items()}
    _passed(wall.case("sees_slice", {"VGPU_TEST_EXPECT_MIB": "1024", **env}), "sees_slice")
    assert wall.region.stat().st_uid == wall.user  # the slice's region, the one root named
    assert not elsewhere.exists()


def test_a_rewritten_region_cannot_lift_the_slice(wall: Wall) -> None:
    # The region is the user's own file: raising its limit in place changes nothing.
    _passed(wall.case("sees_slice", {"VGPU_TEST_EXPECT_MIB": "1024", "VGPU_TEST_TAMPER_REGION": str(wall.region)}),
            "sees_slice")


def test_the_environment_may_tighten_the_slice(wall: Wall) -> None:
    # A kernel's sub-slice: smaller than the pod's, so it applies.
    _passed(wall.case("sees_slice", {"VGPU_TEST_EXPECT_MIB": "512", "CUDA_DEVICE_MEMORY_LIMIT": "512m"}),
            "sees_slice")


@pytest.mark.parametrize("owner,mode,words", [(65_533, 0o644, "must belong to root"),
                                              (0, 0o666, "must belong to root and be writable by nobody else")])
def test_a_slice_file_the_user_could_change_fails_closed(wall: Wall, owner: int, mode: int, words: str) -> None:
    wall.slice_owner, wall.slice_mode = owner, mode
    done = wall.case("fails_closed", {})
    _passed(done, "fails_closed")
    lines = [line for line in done.stderr.splitlines() if line.startswith("libvgpu[")]
    assert len(lines) == 1 and words in lines[0] and "/etc/hami-jupyter/slice" in lines[0], done.stderr


def test_a_malformed_slice_file_fails_closed(wall: Wall) -> None:
    wall.slice_text = "CUDA_DEVICE_MEMORY_LIMIT=lots\n"
    done = wall.case("fails_closed", {})
    _passed(done, "fails_closed")
    assert "line 1: malformed value" in done.stderr, done.stderr


def test_processes_that_never_touch_cuda_pay_nothing(wall: Wall) -> None:
    # A shell, ls: libvgpu is loaded into them, reads no file and makes no
    # directory or region, and says nothing (bench/preload_cost.py times them).
    done = wall.run(["sh", "-c", "ls / > /dev/null && cat /etc/ld.so.preload"], {})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.strip() == str(wall.library)
    assert not Path(f"/tmp/libvgpu.{wall.user}").exists() and not wall.region.exists()


def _libraries(maps: str) -> set[str]:
    return {Path(line.split()[-1]).name for line in maps.splitlines() if ".so" in line.split()[-1]}


def test_libvgpu_brings_no_other_library_into_such_processes(wall: Wall) -> None:
    # Loading costs are per library: what a `cat` maps with libvgpu preloaded is
    # what it maps without it, plus libvgpu alone (no libm for one cube root).
    with_it = wall.run(["cat", "/proc/self/maps"], {})
    assert with_it.returncode == 0, with_it.stderr
    without = subprocess.run(["cat", "/proc/self/maps"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert _libraries(with_it.stdout) - _libraries(without.stdout) == {"libvgpu.so"}


def test_the_slice_file_hamispawner_writes_is_the_one_libvgpu_holds_to(wall: Wall) -> None:
    # The text of the pod's hami-jupyter.io/slice annotation, as the kubelet mounts it.
    from hami_kernel.slice import Slice
    from hami_spawner.kubernetes import slice_file_text
    wall.slice_text = slice_file_text(Slice(1536 << 20, 25, 1), str(wall.region))
    _passed(wall.case("sees_slice", {"VGPU_TEST_EXPECT_MIB": "1536", "CUDA_DEVICE_MEMORY_LIMIT": "80g"}),
            "sees_slice")
