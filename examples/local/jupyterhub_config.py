"""JupyterHub on this machine, handing out slices of its GPUs.

    pip install '.[hub]' && jupyterhub -f examples/local/jupyterhub_config.py

then open http://127.0.0.1:8000.  The hub keeps its database and cookie
secret in the directory it is started from.

Who logs in, and as whom servers run:

- started as a normal user (the default for a first run): any user name with
  the shared password printed at start (or HAMI_HUB_PASSWORD); user "admin"
  logs in with the admin password (or HAMI_HUB_ADMIN_PASSWORD, 32+
  characters).  Every server runs as you, with its files under ./homes/<name>.
  Fine for yourself or people who share your account anyway.
- started as root: the machine's own accounts log in with their system
  passwords (PAM), and each server runs as that account in its home
  directory.  Admins: HAMI_HUB_ADMINS="alice,bob".
  HAMI_HUB_SYSTEM_USERS=0 or 1 chooses explicitly.

The hub listens on 127.0.0.1 only; put it behind a TLS proxy before opening it
to a network.
"""
import os
import secrets
import sys
from pathlib import Path

from hami_spawner import discover_gpus

c = get_config()  # noqa: F821 (provided by JupyterHub)

c.JupyterHub.bind_url = "http://127.0.0.1:8000"
# The pure-Python configurable-http-proxy that pip installed next to this Python: no npm.
_proxy = Path(sys.executable).with_name("configurable-http-proxy")
c.ConfigurableHTTPProxy.command = [str(_proxy) if _proxy.exists() else "configurable-http-proxy"]
# Servers run on this Python too, where hami-jupyter (and its kernel provisioner) is installed.
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]

# -- GPU slices -------------------------------------------------------------------------------
# Sizes relative to this machine's smallest GPU (the form shows them in GiB); a profile may
# also name fixed sizes ("8GiB"), GPU models (gpu_types) and groups.  See hami_spawner/profiles.py.
_MIB = 1 << 20
_gpus = discover_gpus()
_card = min((g.memory for g in _gpus), default=80 << 30)


def _part(fraction: float) -> str:
    return f"{int(_card * fraction) // _MIB}MiB"


c.GpuProfiles.profiles = [
    {"name": "quarter", "display_name": "Quarter GPU", "memory": _part(1 / 4), "cores": 25,
     "description": "Notebooks, small models", "default": True},
    {"name": "half", "display_name": "Half GPU", "memory": _part(1 / 2), "cores": 50,
     "description": "Training mid-size models"},
    {"name": "whole", "display_name": "Whole GPU", "description": "All of one GPU"},
]
c.GpuProfiles.cpu_profile_name = "cpu"          # "CPU only (no GPU)" is offered too
c.GpuProfiles.max_gpu_servers_per_user = 1      # with named servers on, at most one on a GPU
c.JupyterHub.allow_named_servers = True

# -- users ------------------------------------------------------------------------------------
_system_users = os.environ.get("HAMI_HUB_SYSTEM_USERS", "1" if os.geteuid() == 0 else "0") == "1"

if _system_users:
    c.JupyterHub.spawner_class = "hami_spawner.local.LocalGpuSpawner"
    c.JupyterHub.authenticator_class = "pam"
    c.Authenticator.allow_all = True  # every account that can log in to this machine
    c.Authenticator.admin_users = {u for u in os.environ.get("HAMI_HUB_ADMINS", "").split(",") if u}
else:
    c.JupyterHub.spawner_class = "hami_spawner.local.SimpleLocalGpuSpawner"
    c.SimpleLocalGpuSpawner.home_dir_template = str(Path.cwd() / "homes" / "{username}")
    if os.geteuid() == 0:
        c.Spawner.args = ["--allow-root"]
    c.JupyterHub.authenticator_class = "shared-password"
    c.Authenticator.allow_all = True
    c.Authenticator.admin_users = {"admin"}
    _password = os.environ.get("HAMI_HUB_PASSWORD") or secrets.token_urlsafe(12)
    _admin_password = os.environ.get("HAMI_HUB_ADMIN_PASSWORD") or secrets.token_urlsafe(32)
    c.SharedPasswordAuthenticator.user_password = _password
    c.SharedPasswordAuthenticator.admin_password = _admin_password
    print("hami-jupyter: log in with any user name and the password "
          f"{_password!r} (set HAMI_HUB_PASSWORD to choose it); as 'admin' with "
          f"{_admin_password!r} (HAMI_HUB_ADMIN_PASSWORD).", file=sys.stderr, flush=True)

print("hami-jupyter: GPUs: " + ("; ".join(f"{g.index}: {g.name}, {g.memory >> 30} GiB" for g in _gpus)
                                 or "none found, so only CPU servers are offered"),
      file=sys.stderr, flush=True)
