"""The kernel provisioner, with real kernels started by jupyter_client's KernelManager.

The kernels run under the libvgpu of the plain test build over the fake CUDA
driver (tests/cbuild.py), so their allocations go through the real hooks and
the real shared region, with no GPU.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("jupyter_client", reason="needs jupyter_client: .venv/bin/pip install '.[test]'")
from jupyter_client import KernelManager  # noqa: E402
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402

from cbuild import ROOT, build_tests  # noqa: E402
from kernel_code import ALLOCATOR  # noqa: E402
from hami_kernel.kernel_slice import SubSliceError  # noqa: E402
from hami_kernel.provisioner import HamiProvisioner  # noqa: E402
from hami_kernel.redivide import set_kernel_slice  # noqa: E402
from hami_kernel.region import read_region  # noqa: E402

MiB = 1 << 20

CUDA_ERROR_OUT_OF_MEMORY = 2


@pytest.fixture(scope="module")
def plain_build() -> Path:
    return build_tests("plain")


@pytest.fixture
def server(plain_build: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A notebook server's env: a 1 GiB slice, libvgpu over the fake driver, kernelspecs in tmp."""
    env = {
        "CUDA_DEVICE_MEMORY_LIMIT": "1g",
        "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(tmp_path / "slice.region"),
        "LIBVGPU_LIBRARY": str(plain_build / "csrc" / "libvgpu.so"),
        "LD_LIBRARY_PATH": str(plain_build / "fakedrv"),
        "FAKE_CUDA_STATE": str(tmp_path / "fake.state"),
        "FAKE_CUDA_CONTEXT_SIZE": str(16 * MiB),
        "LIBVGPU_ARBITER_DIR": str(tmp_path),
        "JUPYTER_PATH": str(tmp_path / "jupyter"),
        "JUPYTER_DATA_DIR": str(tmp_path / "jupyter"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        # The kernel imports this checkout's hami_kernel (for %vgpu).
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def install_spec(name: str, config: dict[str, object]) -> None:
    spec_dir = Path(os.environ["JUPYTER_DATA_DIR"]) / "kernels" / name
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python 3 ({name})",
        "language": "python",
        "metadata": {"kernel_provisioner": {"provisioner_name": "hami-provisioner", "config": config}},
    }))


class Kernel:
    """A started kernel and a client, with code execution that returns its result."""

    def __init__(self, name: str):
        self.km = KernelManager(kernel_name=name, kernel_spec_manager=KernelSpecManager())
        self.km.start_kernel()
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def eval(self, code: str) -> object:
        reply = self.kc.execute_interactive(code, user_expressions={"out": "_result"}, timeout=60,
                                            output_hook=lambda msg: None)
        content = reply["content"]
        assert content["status"] == "ok", content
        data = content["user_expressions"]["out"]
        assert data["status"] == "ok", data
        return eval(data["data"]["text/plain"])  # reprs of plain values

    def output(self, code: str) -> str:
        """What the cell prints (streams and text results)."""
        parts: list[str] = []

        def hook(msg: dict) -> None:
            content = msg["content"]
            if msg["msg_type"] == "stream":
                parts.append(content["text"])
            elif msg["msg_type"] in ("execute_result", "display_data"):
                parts.append(content["data"].get("text/plain", ""))
            elif msg["msg_type"] == "error":
                parts.append("\n".join(content["traceback"]))
        self.kc.execute_interactive(code, timeout=60, output_hook=hook)
        return "".join(parts)

    def run(self, code: str, result: str) -> object:
        return self.eval(f"{code}\n_result = {result}")

    def restart(self) -> None:
        self.km.restart_kernel(now=True)
        self.kc.wait_for_ready(timeout=60)

    def stop(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def test_kernel_env_carries_the_slice_and_leaves_the_server_alone(server: dict[str, str]) -> None:
    install_spec("gpu-256m", {"memory": "256MiB", "cores": 25})
    before = dict(os.environ)
    kernel = Kernel("gpu-256m")
    try:
        env = kernel.run("import os", "dict(os.environ)")
        assert isinstance(env, dict)
        assert env["LD_PRELOAD"].split(":")[0] == server["LIBVGPU_LIBRARY"]
        assert env["LIBVGPU_IDENTITY"] == kernel.km.kernel_id
        assert env["LIBVGPU_PROCESS_MEMORY_LIMIT"] == "256m"
        assert env["LIBVGPU_PROCESS_SM_LIMIT"] == "25"
        assert env["CUDA_DEVICE_MEMORY_LIMIT"] == "1g"
        assert env["CUDA_DEVICE_MEMORY_SHARED_CACHE"] == server["CUDA_DEVICE_MEMORY_SHARED_CACHE"]
        # The %vgpu magic was loaded at start.
        assert kernel.run("", "'vgpu' in get_ipython().magics_manager.lsmagic()['line']") is True
    finally:
        kernel.stop()
    assert dict(os.environ) == before


def test_existing_preload_is_kept_after_libvgpu(server: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    provisioner = HamiProvisioner(kernel_id="k1", memory="256MiB")
    env = provisioner.slice_env({**server, "LD_PRELOAD": "/opt/other.so"})
    assert env["LD_PRELOAD"] == f"{server['LIBVGPU_LIBRARY']}:/opt/other.so"
    # Starting twice (a restart) does not stack libvgpu.
    again = provisioner.slice_env({**server, "LD_PRELOAD": env["LD_PRELOAD"]})
    assert again["LD_PRELOAD"] == env["LD_PRELOAD"]


def test_sub_slice_is_enforced_and_a_neighbour_is_unaffected(server: dict[str, str]) -> None:
    install_spec("gpu-256m", {"memory": "256MiB"})
    install_spec("gpu-whole", {})
    small, big = Kernel("gpu-256m"), Kernel("gpu-whole")
    try:
        assert small.run(ALLOCATOR, "alloc(200)") == 0
        assert small.run("", "alloc(100)") == CUDA_ERROR_OUT_OF_MEMORY  # past its 256 MiB
        assert big.run(ALLOCATOR, "alloc(500)") == 0  # same slice, its own room
        region = read_region(server["CUDA_DEVICE_MEMORY_SHARED_CACHE"])
        mine = region.process(small.km.kernel_id)
        assert len(mine) == 1 and mine[0].devices[0].memory_limit == 256 * MiB
        # The server's API re-divides the slice while both run.
        line = set_kernel_slice(small.km.kernel_id, memory="384MiB")
        assert "384 MiB" in line
        assert small.run("", "alloc(100)") == 0
        # ...but never beyond the server's slice: 1 GiB holds 16+200+100 and 16+500.
        assert small.run("", "alloc(200)") == CUDA_ERROR_OUT_OF_MEMORY
        with pytest.raises(SubSliceError, match="has only 1 GiB"):
            set_kernel_slice(small.km.kernel_id, memory="2GiB")
    finally:
        small.stop()
        big.stop()


def test_restart_keeps_the_limits(server: dict[str, str]) -> None:
    install_spec("gpu-256m", {"memory": "256MiB"})
    kernel = Kernel("gpu-256m")
    try:
        first_pid = kernel.run("import os", "os.getpid()")
        kernel.restart()
        assert kernel.run("import os", "os.getpid()") != first_pid
        assert kernel.run("", "os.environ['LIBVGPU_IDENTITY']") == kernel.km.kernel_id
        assert kernel.run(ALLOCATOR, "alloc(200)") == 0
        assert kernel.run("", "alloc(100)") == CUDA_ERROR_OUT_OF_MEMORY
    finally:
        kernel.stop()


def test_oversize_sub_slice_is_refused_with_a_readable_message(server: dict[str, str]) -> None:
    install_spec("gpu-2g", {"memory": "2GiB"})
    km = KernelManager(kernel_name="gpu-2g", kernel_spec_manager=KernelSpecManager())
    with pytest.raises(SubSliceError) as refused:
        km.start_kernel()
    assert str(refused.value) == ("this kernel asks for 2 GiB of GPU memory, but this server's GPU slice has only "
                                  "1 GiB; choose a smaller GPU kernel or a larger server")
    assert not km.has_kernel


def test_bad_kernelspec_config_is_refused(server: dict[str, str]) -> None:
    install_spec("gpu-bad", {"memory": "4GB"})
    km = KernelManager(kernel_name="gpu-bad", kernel_spec_manager=KernelSpecManager())
    with pytest.raises(SubSliceError, match="4GB"):
        km.start_kernel()
    assert not km.has_kernel


def test_vgpu_magic_in_a_provisioned_kernel(server: dict[str, str]) -> None:
    install_spec("gpu-256m", {"memory": "256MiB", "cores": 25})
    kernel = Kernel("gpu-256m")
    try:
        assert kernel.run(ALLOCATOR, "alloc(100)") == 0
        status = kernel.output("%vgpu")
        assert f"kernel {kernel.km.kernel_id[:8]}" in status
        assert "slice 1 GiB" in status and "cap 256 MiB" in status
        check = kernel.output("%vgpu check")
        assert "problem:" not in check, check
        assert "verdict: libvgpu is active" in check
        assert "this kernel's VRAM cap: 256 MiB" in check
        changed = kernel.output("%vgpu set memory=512MiB cores=40")
        assert "512 MiB" in changed and "40%" in changed, changed
        assert kernel.run("", "alloc(300)") == 0  # beyond the old 256 MiB, within the new 512
        mine = read_region(server["CUDA_DEVICE_MEMORY_SHARED_CACHE"]).process(kernel.km.kernel_id)[0]
        assert (mine.devices[0].memory_limit, mine.devices[0].sm_limit) == (512 * MiB, 40)
        refused = kernel.output("%vgpu set memory=4GiB")
        assert "has only 1 GiB" in refused and "Traceback" not in refused, refused
    finally:
        kernel.stop()


def test_a_cpu_only_servers_kernels_run_without_libvgpu_but_with_vgpu(server: dict[str, str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # The spawners mark a CPU-only server with an empty CUDA_VISIBLE_DEVICES and still name
    # the provisioner, so that %vgpu is there to say there is no slice.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    install_spec("plain", {})
    kernel = Kernel("plain")
    try:
        env = kernel.run("import os", "dict(os.environ)")
        assert "LD_PRELOAD" not in env and "LIBVGPU_IDENTITY" not in env
        shown = kernel.output("%vgpu")
        assert shown.startswith("vgpu: no GPU slice: this server has no GPU (CUDA_VISIBLE_DEVICES is empty"), shown
    finally:
        kernel.stop()
    # A GPU kernelspec there is refused with the reason, not started without its limits.
    install_spec("gpu-256m", {"memory": "256MiB"})
    km = KernelManager(kernel_name="gpu-256m", kernel_spec_manager=KernelSpecManager())
    with pytest.raises(SubSliceError, match=r"^this kernel asks for a GPU slice \(256 MiB\), but this server "
                                            r"has no GPU \(CUDA_VISIBLE_DEVICES is empty"):
        km.start_kernel()
    assert not km.has_kernel
