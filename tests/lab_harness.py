"""A real Jupyter server (or JupyterLab) process for tests, in a GPU slice over the fake driver.

The server gets the env a spawner gives a server in a slice (HAMi's variables,
the shared region) plus the fake CUDA driver and the plain test build of
libvgpu; its kernels start from hami-provisioner kernelspecs, so they run
under the real libvgpu and write the real region. The server imports this
checkout's hami_kernel, and takes its extensions from the installed config
(``etc/jupyter/jupyter_server_config.d``), as after ``pip install``.
Shared by tests/test_server_extension.py and tests/test_lab_browser.py.
"""
from __future__ import annotations

import http.cookiejar
import json
import os
import secrets
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from jupyter_client import BlockingKernelClient

from cbuild import ROOT
from hub_harness import free_port, wait_for
from kernel_code import ALLOCATOR

MiB = 1 << 20
CONTEXT = 16 * MiB  # FAKE_CUDA_CONTEXT_SIZE below


def slice_env(build: Path, tmp: Path, memory: str = "1g", cores: str = "50") -> dict[str, str]:
    """A server's env in a slice of ``memory`` and ``cores``% on one fake GPU."""
    env = {
        "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(tmp / "slice.region"),
        "LIBVGPU_LIBRARY": str(build / "csrc" / "libvgpu.so"),
        "LD_LIBRARY_PATH": str(build / "fakedrv"),
        "FAKE_CUDA_STATE": str(tmp / "fake.state"),
        "FAKE_CUDA_CONTEXT_SIZE": str(CONTEXT),
        "LIBVGPU_ARBITER_DIR": str(tmp / "arbiter"),
    }
    if memory:
        env["CUDA_DEVICE_MEMORY_LIMIT"] = memory
    if cores:
        env["CUDA_DEVICE_SM_LIMIT"] = cores
    return env


def install_spec(data_dir: Path, name: str, config: dict[str, object]) -> None:
    spec_dir = data_dir / "kernels" / name
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python 3 ({name})",
        "language": "python",
        "metadata": {"kernel_provisioner": {"provisioner_name": "hami-provisioner", "config": config}},
    }))


class HttpError(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body

    def json(self) -> Any:
        return json.loads(self.body)


class Server:
    """One ``jupyter server`` or ``jupyter lab`` process, its REST API and its kernels."""

    def __init__(self, tmp: Path, env: dict[str, str], app: str = "jupyter_server",
                 base_url: str = "/user/alice/", extra_args: list[str] | None = None):
        self.dir = tmp
        self.root = tmp / "notebooks"
        self.root.mkdir(parents=True, exist_ok=True)
        self.data = tmp / "jupyter-data"
        self.runtime = tmp / "runtime"
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.base_url = base_url
        self.url = f"http://127.0.0.1:{self.port}{base_url}"
        self.log_path = tmp / f"{app}.log"
        self.env = {
            **os.environ,
            "JUPYTER_DATA_DIR": str(self.data),
            "JUPYTER_RUNTIME_DIR": str(self.runtime),
            "JUPYTER_CONFIG_DIR": str(tmp / "jupyter-config"),
            "JUPYTER_PLATFORM_DIRS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            **env,
        }
        self.args = [
            sys.executable, "-m", app, "--no-browser", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", f"--ServerApp.token={self.token}",
            f"--ServerApp.base_url={base_url}", f"--ServerApp.root_dir={self.root}", "--ServerApp.allow_root=True",
            "--SliceMonitor.sample_interval=0.25", *(extra_args or []),
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.clients: list[BlockingKernelClient] = []

    def start(self) -> Server:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        wait_for("the jupyter server to answer", self._up, timeout=90)
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the server exited {self.proc.returncode}:\n{self.log()}")
        try:
            self.get("api/status")
            return True
        except (OSError, HttpError):
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        for client in self.clients:
            client.stop_channels()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)

    # ---- REST --------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, token: str | None = "",
                headers: dict[str, str] | None = None, opener: urllib.request.OpenerDirector | None = None,
                raw: bool = False) -> Any:
        """A request as the server's user (token auth), or with ``token=None`` as nobody."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if token is not None:
            req.add_header("Authorization", f"token {token or self.token}")
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        try:
            with (opener or urllib.request.build_opener()).open(req, timeout=30) as reply:
                payload = reply.read().decode()
                return (reply.status, reply.headers, payload) if raw else (json.loads(payload) if payload else None)
        except urllib.error.HTTPError as e:
            raise HttpError(e.code, e.read().decode(errors="replace")) from None

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any, **kw: Any) -> Any:
        return self.request("POST", path, body, **kw)

    def usage(self) -> dict[str, Any]:
        return self.get("api/vgpu/v1/usage")  # type: ignore[no-any-return]

    def cookie_session(self) -> tuple[urllib.request.OpenerDirector, http.cookiejar.CookieJar]:
        """A browser-like session: logged in once with the token in the URL, then cookies only."""
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        with opener.open(f"{self.url}api/status?token={self.token}", timeout=30):
            pass
        with opener.open(f"{self.url}login", timeout=30):  # sets the _xsrf cookie
            pass
        return opener, jar

    # ---- kernels ----------------------------------------------------------------------

    def open_notebook(self, path: str, kernel: str) -> str:
        """A notebook session as JupyterLab opens one; returns its kernel id."""
        (self.root / path).parent.mkdir(parents=True, exist_ok=True)
        session = self.post("api/sessions", {"path": path, "name": Path(path).name, "type": "notebook",
                                             "kernel": {"name": kernel}})
        return session["kernel"]["id"]  # type: ignore[no-any-return]

    def client(self, kernel_id: str) -> BlockingKernelClient:
        client = BlockingKernelClient(connection_file=str(self.runtime / f"kernel-{kernel_id}.json"))
        client.load_connection_file()
        client.start_channels()
        client.wait_for_ready(timeout=60)
        self.clients.append(client)
        return client

    def execute(self, kernel_id: str, code: str, result: str = "None") -> Any:
        client = next((c for c in self.clients if kernel_id in c.connection_file), None) or self.client(kernel_id)
        reply = client.execute_interactive(f"{code}\n_result = {result}", user_expressions={"out": "_result"},
                                           timeout=60, output_hook=lambda msg: None)
        content = reply["content"]
        assert content["status"] == "ok", content
        return eval(content["user_expressions"]["out"]["data"]["text/plain"])

    def allocate(self, kernel_id: str, mib: int) -> int:
        """Has the kernel allocate ``mib`` MiB through the fake driver; the CUDA result."""
        code = ALLOCATOR if not self.execute(kernel_id, "", "'alloc' in globals()") else ""
        return self.execute(kernel_id, code, f"alloc({mib})")  # type: ignore[no-any-return]
