"""The README's first ten minutes, as a new user meets them.

The README's first command (a hub with GPU-slice profiles on this machine) is
run as it is written: as the user running the tests (root, in CI) from this
checkout, and as an unprivileged user from a fresh copy of it, with a fresh
virtual environment and ``pip install`` from the package index.  Each time the
test logs in with the password the hub prints, spawns a server and runs a
cell in a kernel there, over HTTP and websockets as a browser would.  On a
machine without a GPU (CI) it also meets the dead ends a new user meets there.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("jupyterhub", reason="needs JupyterHub: .venv/bin/pip install '.[test]' (the README's test command)")

from hub_harness import ROOT, Browser, Hub, free_port, wait_for  # noqa: E402

from hami_spawner import discover_gpus  # noqa: E402

README = ROOT / "README.md"
PASSWORD_RE = re.compile(r"log in with any user name and the password '([^']+)'")

# Runs in a kernel of the spawned server: the cell, then %vgpu as a user of a
# CPU server meets it (each magic's output or error, one block each).
CELL = r"""
print("cell:", 6 * 7)
from IPython.utils.capture import capture_output
ip = get_ipython()
for line in ("", "check", "set memory=1GiB"):
    with capture_output() as cap:
        try:
            ip.run_line_magic("vgpu", line)
        except Exception as exc:
            print(f"{type(exc).__name__}: {exc}")
    shown = cap.stdout + "".join(o.data.get("text/plain", "") for o in cap.outputs)
    print(f"--- %vgpu {line}\n{shown.strip()}")
"""


def readme_commands() -> list[str]:
    """The command lines of the README's first bash block, comments left out."""
    block = re.search(r"```bash\n(.*?)```", README.read_text(), re.S)
    assert block, "README.md has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def port_args(hub: Hub) -> list[str]:
    """Free ports instead of 8000/8001/8081, so that tests never meet a running hub."""
    hub.port, hub.url = free_port(), None
    hub.url = f"http://127.0.0.1:{hub.port}"
    return [f"--JupyterHub.bind_url={hub.url}", f"--JupyterHub.hub_port={free_port()}",
            f"--ConfigurableHTTPProxy.api_url=http://127.0.0.1:{free_port()}"]


def test_ci_runs_the_readmes_test_command() -> None:
    hub_line, test_line = readme_commands()[:2]
    assert hub_line.endswith("jupyterhub -f examples/local/jupyterhub_config.py")
    assert test_line in (ROOT / ".ci" / "run").read_text().splitlines()


def use_the_hub(hub: Hub, user: str) -> str:
    """Log in with the printed password, spawn the default server from the form, run CELL
    in a kernel there; returns the cell's output."""
    printed = PASSWORD_RE.search(hub.log_path.read_text())
    assert printed, f"the hub printed no password:\n{hub.log()}"
    browser = Browser(hub.url)
    status, page = browser.open("/hub/login")
    assert status == 200 and "Sign in" in page
    browser.login(user, printed.group(1))
    status, form = browser.open("/hub/spawn")
    assert status == 200, form
    if not discover_gpus():
        assert "This machine has no NVIDIA GPU; only CPU servers are offered." in form
        # A GPU profile named anyway: can never start here, so 400, not "full now" (409).
        status, body = browser.api("POST", f"/hub/api/users/{user}/server", {"profile": "quarter"})
        assert status == 400, body
        assert body["message"] == ("This machine has no NVIDIA GPU, so the 'Quarter GPU' slice can "
                                   "never be placed here. Choose “CPU only (no GPU)” instead "
                                   "(profile 'cpu').")
    token = browser.token(user)
    status, _ = browser.post_form("/hub/spawn", {"profile": "cpu"})
    assert status == 200, hub.log()

    def ready() -> bool:
        server = hub.get(f"/hub/api/users/{user}", token=token)[1]["servers"].get("")
        return bool(server and server["ready"])
    wait_for(f"{user}'s server", ready, 120)
    try:
        return hub.run_in_kernel(user, CELL, timeout=90, token=token)
    finally:
        assert hub.request("DELETE", f"/hub/api/users/{user}/server", token=token)[0] in (202, 204)
        wait_for(f"{user}'s server to stop",
                 lambda: not hub.get(f"/hub/api/users/{user}", token=token)[1]["servers"], 60)


def check_cell(out: str) -> None:
    assert "cell: 42" in out, out
    show, check, set_ = (part.split("\n", 1)[1] for part in out.split("--- %vgpu")[1:])
    no_gpu = "this server has no GPU (CUDA_VISIBLE_DEVICES is empty: a CPU-only server)"
    assert show.startswith(f"vgpu: no GPU slice: {no_gpu}"), show
    assert check.splitlines()[0].startswith(f"problem: {no_gpu}"), check
    assert check.splitlines()[-1].startswith("verdict: no GPU here"), check
    assert set_.startswith(f"UsageError: vgpu set: there is no GPU slice to re-divide: {no_gpu}"), set_


def test_readme_hub_from_this_checkout(tmp_path: Path) -> None:
    """As the user running the tests (root in CI): the README's hub command, from the
    checkout; the checkout gains no files (the state goes to the data directory)."""
    hub_line = readme_commands()[0]
    run = hub_line.split(" && ")[-1].split()
    assert run[0] == ".venv/bin/jupyterhub", hub_line
    # The README's venv is the one running these tests in CI; elsewhere, this Python's.
    command = [str(Path(sys.executable).parent / "jupyterhub"), *run[1:]]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HAMI_HUB_", "LD_"))}
    env["HAMI_HUB_DATA_DIR"] = str(tmp_path / "data")  # not /var/lib/hami-jupyter of the test machine
    before = sorted(os.listdir(ROOT))
    hub = Hub(tmp_path, "", config_file=ROOT / run[-1], cwd=ROOT)
    hub.env, hub.command = env, command + port_args(hub)
    try:
        hub.start()
        check_cell(use_the_hub(hub, "ada"))
    finally:
        hub.stop()
    assert sorted(os.listdir(ROOT)) == before
    assert {"jupyterhub.sqlite", "jupyterhub_cookie_secret", "password", "homes"} <= set(
        os.listdir(tmp_path / "data"))
    assert f"hub state in {tmp_path / 'data'}" in hub.log_path.read_text()


@pytest.fixture
def unprivileged() -> Iterator[tuple[Path, dict[str, str], object]]:
    """A fresh copy of the checkout in a directory of an unprivileged user's own, that
    user's bare login environment, and how to become them (None: we already are)."""
    if os.geteuid() == 0:
        account = pwd.getpwnam("nobody")
        uid, gid = account.pw_uid, account.pw_gid

        def become() -> None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
    else:
        uid, gid, become = os.getuid(), os.getgid(), None  # type: ignore[assignment]
    top = Path(tempfile.mkdtemp(prefix="hami-first-run-", dir="/tmp"))
    try:
        checkout, home = top / "hami-jupyter", top / "home"
        files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                                "--exclude-standard"], capture_output=True, check=True).stdout
        for name in filter(None, files.decode().split("\0")):
            if (ROOT / name).is_file():
                (checkout / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, checkout / name)
        home.mkdir()
        for path in [top, *top.rglob("*")]:
            os.chown(path, uid, gid, follow_symlinks=False)
        env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        env.update({k: v for k, v in os.environ.items() if k.startswith(("PIP_", "http_", "https_",
                                                                          "HTTP_", "HTTPS_", "NO_PROXY"))})
        yield checkout, env, become
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_readme_hub_as_an_unprivileged_user(unprivileged: tuple[Path, dict[str, str], object]) -> None:
    """As a user without root (nobody, when the tests run as root): the README's whole
    first command in a fresh copy, with a fresh venv and pip install from the index."""
    checkout, env, become = unprivileged
    work = checkout.parent / "hub-test"
    work.mkdir()
    hub = Hub(work, "", config_file=checkout / "examples" / "local" / "jupyterhub_config.py",
              cwd=checkout, preexec_fn=become)  # type: ignore[arg-type]
    hub.env = env  # the user's bare login environment, nothing of ours
    hub.command = ["bash", "-c", " ".join([readme_commands()[0], *port_args(hub)])]
    try:
        hub.start(timeout=1200)  # includes creating the venv and installing from the index
        check_cell(use_the_hub(hub, "grace"))
    finally:
        hub.stop()
    data = Path(env["HOME"]) / ".local" / "share" / "hami-jupyter"
    assert (data / "jupyterhub.sqlite").is_file() and (data / "password").is_file()
    assert not (checkout / "jupyterhub.sqlite").exists() and not (checkout / "homes").exists()
