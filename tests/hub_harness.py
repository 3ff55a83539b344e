"""A real JupyterHub process for tests: config in a temporary directory, free ports,
sqlite, the pip-installed configurable-http-proxy, and a REST client with an
admin token.  Shared by tests/test_local_hub.py (fake NVML) and
tests/gpu/test_local_hub_gpu.py (a real GPU).
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import html
import http.cookiejar
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
PR_SET_CHILD_SUBREAPER = 36


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proxy_command() -> str:
    """The configurable-http-proxy next to this Python (pip's pure-Python port)."""
    near = Path(sys.executable).parent / "configurable-http-proxy"
    found = str(near) if near.exists() else shutil.which("configurable-http-proxy")
    if not found:
        raise RuntimeError("configurable-http-proxy is missing: pip install '.[hub]'")
    return found


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def process_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def become_subreaper(on: bool = True) -> None:
    """Servers outlive a hub that is restarted; orphaned, they become our children
    (not init's, which may not reap them in a container), so that :func:`reap`
    can collect them once they exit.  ``on=False`` ends that."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


def reap(pid: int) -> None:
    """Collect ``pid`` in the background when it exits (if it is our child)."""
    def wait() -> None:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    threading.Thread(target=wait, daemon=True).start()


def send(open_request: Callable[..., Any], req: urllib.request.Request) -> tuple[int, Any]:
    """(status, JSON body, or the text when it is not JSON) of one HTTP request."""
    try:
        with open_request(req, timeout=60) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def fake_driver_dir(build: Path) -> Path:
    """The directory of the fake libcuda.so.1 and libnvidia-ml.so.1 (pynvml loads the latter)."""
    return build / "fakedrv"


class Hub:
    """One JupyterHub process; ``start`` again after ``stop`` restarts it on the same db."""

    def __init__(self, workdir: Path, config: str, env: dict[str, str] | None = None,
                 config_file: Path | None = None, args: list[str] | None = None,
                 command: list[str] | None = None, cwd: Path | None = None,
                 preexec_fn: Callable[[], None] | None = None):
        """``command`` replaces ``python -m jupyterhub -f <config> <args>`` (a README line run
        by a shell, say), run in ``cwd`` (default: ``workdir``) after ``preexec_fn``."""
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.command, self.cwd, self.preexec_fn = command, cwd or workdir, preexec_fn
        self.port, self.hub_port, self.api_port = free_port(), free_port(), free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "hub.log"
        self.marker = str(self.dir)  # HAMI_TEST_HUB in every server's env: finds its processes
        self.config_file = config_file or self.dir / "jupyterhub_config.py"
        if config_file is None:
            self.config_file.write_text(self.base_config() + "\n" + config)

    def base_config(self) -> str:
        d = self.dir
        return f"""
import os, sys
c = get_config()  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {self.port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {self.hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.api_port}"
c.ConfigurableHTTPProxy.command = [{proxy_command()!r}]
c.ConfigurableHTTPProxy.pid_file = {str(d / "proxy.pid")!r}
c.JupyterHub.pid_file = {str(d / "hub.pid")!r}
c.JupyterHub.db_url = "sqlite:///{d / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = {str(d / "cookie_secret")!r}
c.JupyterHub.cleanup_servers = False
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.services = [{{"name": "tester", "api_token": {self.token!r}}}]
c.JupyterHub.load_roles = [{{"name": "tester", "services": ["tester"],
                            "scopes": ["admin:users", "admin:servers", "access:servers",
                                       "tokens", "admin:groups", "list:users"]}}]
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
c.Spawner.args = ["--allow-root"] if os.geteuid() == 0 else []
c.Spawner.start_timeout = 90
c.Spawner.http_timeout = 90
c.Spawner.environment = {{"HAMI_TEST_HUB": {self.marker!r},
                         "JUPYTER_RUNTIME_DIR": {str(d / "runtime")!r}}}
"""

    # -- the process ------------------------------------------------------------

    def start(self, timeout: float = 90) -> None:
        log = open(self.log_path, "ab")
        command = self.command or [sys.executable, "-m", "jupyterhub", "-f", str(self.config_file),
                                   *self.args]
        self.proc = subprocess.Popen(command, cwd=self.cwd, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, preexec_fn=self.preexec_fn,
                                     start_new_session=self.command is not None)
        log.close()
        wait_for("the hub to answer", self._up, timeout)

    @contextlib.contextmanager
    def running(self, *users: str) -> Iterator[Hub]:
        """Started, with ``users`` created; afterwards stopped, and its servers killed."""
        self.start()
        try:
            for user in users:
                self.create_user(user)
            yield self
        finally:
            self.stop()
            self.kill_servers()

    def _up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the hub exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return self.get("/hub/api/")[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM and wait; the servers keep running (cleanup_servers = False)."""
        if self.proc is not None and self.proc.poll() is None:
            if self.command is not None:  # a shell line: the hub is its child, in its session
                os.killpg(self.proc.pid, signal.SIGTERM)
            else:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def server_processes(self, user: str | None = None) -> list[int]:
        """Live processes started for this hub (optionally for one user)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                env = process_env(int(entry.name))
                if (Path(f"/proc/{entry.name}/stat").read_text().split(") ")[-1][0] == "Z"):
                    continue
            except OSError:
                continue
            if env.get("HAMI_TEST_HUB") == self.marker and (user is None or env.get("JUPYTERHUB_USER") == user):
                pids.append(int(entry.name))
        return pids

    def kill_servers(self) -> None:
        for pid in self.server_processes():
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            reap(pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    # -- REST -------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, token: str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"token {token or self.token}", **(headers or {})})
        return send(urllib.request.urlopen, req)

    def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        return self.request("GET", path, **kw)

    def create_user(self, name: str) -> None:
        status, body = self.request("POST", f"/hub/api/users/{name}")
        assert status in (201, 409), (status, body)

    def user_token(self, name: str) -> str:
        status, body = self.request("POST", f"/hub/api/users/{name}/tokens", {"note": "test"})
        assert status == 201, (status, body)
        return body["token"]

    def server(self, user: str, name: str = "") -> dict[str, Any] | None:
        status, body = self.get(f"/hub/api/users/{user}")
        assert status == 200, (status, body)
        return (body.get("servers") or {}).get(name)

    def spawn(self, user: str, options: Any, name: str = "", timeout: float = 90) -> tuple[int, Any]:
        """POST the server; on success wait until it is ready. Returns (status, body)."""
        path = f"/hub/api/users/{user}/servers/{name}" if name else f"/hub/api/users/{user}/server"
        status, body = self.request("POST", path, options)
        if status in (201, 202):
            wait_for(f"{user}'s server to be ready", lambda: self._ready(user, name), timeout)
        return status, body

    def _ready(self, user: str, name: str) -> bool:
        server = self.server(user, name)
        if server is None:
            raise AssertionError(f"{user}'s server went away while starting:\n{self.log()}")
        return bool(server.get("ready"))

    def stop_server(self, user: str, name: str = "", timeout: float = 60) -> None:
        path = f"/hub/api/users/{user}/servers/{name}" if name else f"/hub/api/users/{user}/server"
        status, body = self.request("DELETE", path)
        assert status in (202, 204), (status, body)
        wait_for(f"{user}'s server to stop", lambda: self.server(user, name) is None, timeout)

    def server_pid(self, user: str, name: str = "") -> int:
        server = self.server(user, name)
        assert server is not None and server.get("state", {}).get("pid"), server
        return int(server["state"]["pid"])

    # -- kernels of a user's server -----------------------------------------------

    def run_in_kernel(self, user: str, code: str, timeout: float = 60, token: str | None = None) -> str:
        """Start a python3 kernel in the user's server, run ``code``, return its stdout."""
        base = f"/user/{user}/api/kernels"
        status, kernel = self.request("POST", base, {"name": "python3"}, token=token)
        assert status == 201, (status, kernel)
        try:
            return asyncio.run(self._execute(f"{base}/{kernel['id']}/channels", code, timeout,
                                             token or self.token))
        finally:
            self.request("DELETE", f"{base}/{kernel['id']}", token=token)

    async def _execute(self, path: str, code: str, timeout: float, token: str) -> str:
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        request = HTTPRequest(self.url.replace("http", "ws", 1) + path,
                              headers={"Authorization": f"token {token}"})
        conn = await asyncio.wait_for(websocket_connect(request), timeout)
        msg_id = uuid.uuid4().hex
        conn.write_message(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": uuid.uuid4().hex,
                       "username": "test", "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}}))
        out, error = [], None
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while True:
                left = deadline - asyncio.get_running_loop().time()
                raw = await asyncio.wait_for(conn.read_message(), max(left, 0.01))
                if raw is None:
                    raise AssertionError("the kernel's websocket closed")
                msg = json.loads(raw)
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = msg["header"]["msg_type"], msg["content"]
                if kind == "stream":
                    out.append(content["text"])
                elif kind == "error":
                    error = "\n".join(content.get("traceback", [])) or content.get("evalue")
                elif kind == "status" and content.get("execution_state") == "idle":
                    break
        finally:
            conn.close()
        if error:
            raise AssertionError(f"the kernel raised:\n{error}\nstdout:\n{''.join(out)}")
        return "".join(out)


class Browser:
    """A logged-in browser session (JupyterHub's pages take cookies, not tokens)."""

    def __init__(self, url: str):
        self.url = url
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A REST call with this session's cookie, as JupyterHub's own pages make it."""
        xsrf = next((c.value for c in self.cookies if c.name == "_xsrf"), "")
        req = urllib.request.Request(self.url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"X-XSRFToken": xsrf, "Content-Type": "application/json"})
        return send(self.opener.open, req)

    def token(self, user: str) -> str:
        """An API token of the logged-in ``user``, made through the hub's own REST API."""
        status, body = self.api("POST", f"/hub/api/users/{user}/tokens", {"note": "test"})
        assert status == 201, (status, body)
        return body["token"]

    def open(self, path: str, fields: dict[str, str] | None = None) -> tuple[int, str]:
        data = None if fields is None else urllib.parse.urlencode(fields).encode()
        try:
            with self.opener.open(self.url + path, data, timeout=60) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def post_form(self, path: str, fields: dict[str, str]) -> tuple[int, str]:
        """Submit the form of the page at ``path`` with ``fields`` (and its _xsrf token)."""
        status, page = self.open(path)
        field = re.search(r'name="_xsrf"[^>]*value="([^"]+)"', page)
        if field:
            return self.open(path, {**fields, "_xsrf": field.group(1)})
        action = re.search(r'<form[^>]*action="([^"]*_xsrf=[^"]*)"', page)  # the spawn form
        assert action, f"no _xsrf token on {path} ({status}):\n{page[:2000]}"
        return self.open(html.unescape(action.group(1)), fields)

    def login(self, user: str, password: str = "any") -> None:
        status, page = self.post_form("/hub/login", {"username": user, "password": password})
        assert status == 200 and "Sign in" not in page, f"login as {user} failed ({status})"
