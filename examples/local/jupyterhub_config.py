"""JupyterHub on this machine, handing out slices of its GPUs.

    python3 -m venv .venv && .venv/bin/pip install '.[hub]' && .venv/bin/jupyterhub -f examples/local/jupyterhub_config.py

then open http://127.0.0.1:8000 and log in with any user name and the
password printed at start.

Who logs in, and as whom servers run:

- by default (as root or not): any user name with the shared password
  (HAMI_HUB_PASSWORD, else one made up at the first start and kept); user
  "admin" logs in with the admin password (HAMI_HUB_ADMIN_PASSWORD, 32+
  characters).  Every server runs as the hub's own user, in
  <data directory>/homes/<name>.  For yourself, or people who share your
  account anyway; started as root, whoever has the password acts as root.
- HAMI_HUB_SYSTEM_USERS=1 (the hub must run as root): the machine's own
  accounts log in with their system passwords (PAM), and each server runs as
  that account in its home directory.  Admins: HAMI_HUB_ADMINS="alice,bob".
  The hub's Python must be one every user can run (not a venv in root's home).

The hub's database, cookie secret and passwords live in its data directory
(HAMI_HUB_DATA_DIR; default /var/lib/hami-jupyter for root,
~/.local/share/hami-jupyter otherwise), not in the directory it starts from.
It listens on 127.0.0.1 only; put it behind a TLS proxy before opening it to
a network.
"""
import os
import sys
from pathlib import Path

from hami_spawner import discover_gpus
from hami_spawner.quickstart import (ADMIN_PASSWORD_ENV, MIN_ADMIN_PASSWORD, MIN_PASSWORD,
                                     PASSWORD_ENV, SYSTEM_USERS_ENV, SetupError, data_dir,
                                     password, prepare_data_dir, system_users)

c = get_config()  # noqa: F821 (provided by JupyterHub)


def _say(line: str) -> None:
    print(f"hami-jupyter: {line}", file=sys.stderr, flush=True)


try:
    _system_users = system_users(os.environ, os.geteuid())
    _data = prepare_data_dir(data_dir(os.environ, os.geteuid()))
    if not _system_users:
        _password, _from = password(os.environ, PASSWORD_ENV, _data / "password", MIN_PASSWORD)
        _admin_password, _admin_from = password(os.environ, ADMIN_PASSWORD_ENV,
                                                _data / "admin-password", MIN_ADMIN_PASSWORD)
        if _password == _admin_password:
            raise SetupError(f"{PASSWORD_ENV} and {ADMIN_PASSWORD_ENV} must differ")
except SetupError as _exc:
    _say(f"error: {_exc}")
    sys.exit(2)

c.JupyterHub.bind_url = "http://127.0.0.1:8000"
# State in the data directory, not in the directory the hub was started from.
c.JupyterHub.db_url = f"sqlite:///{_data / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(_data / "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.pid_file = str(_data / "jupyterhub-proxy.pid")
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
if _system_users:
    c.JupyterHub.spawner_class = "hami-local"
    c.JupyterHub.authenticator_class = "pam"
    c.Authenticator.allow_all = True  # every account that can log in to this machine
    c.Authenticator.admin_users = {u for u in os.environ.get("HAMI_HUB_ADMINS", "").split(",") if u}
    _say("log in with your account on this machine (PAM); each server runs as its user.")
else:
    c.JupyterHub.spawner_class = "hami-local-simple"
    c.SimpleLocalGpuSpawner.home_dir_template = str(_data / "homes" / "{username}")
    if os.geteuid() == 0:
        c.Spawner.args = ["--allow-root"]
    c.JupyterHub.authenticator_class = "shared-password"
    c.Authenticator.allow_all = True
    c.Authenticator.admin_users = {"admin"}
    c.SharedPasswordAuthenticator.user_password = _password
    c.SharedPasswordAuthenticator.admin_password = _admin_password
    _say(f"log in with any user name and the password {_password!r} "
         f"({'from ' + PASSWORD_ENV if _from == PASSWORD_ENV else 'kept in ' + _from}); "
         f"as 'admin' with {_admin_password!r}.")
    _say(f"servers run as {'root' if os.geteuid() == 0 else 'you'}, each in "
         f"{_data / 'homes'}/<name>; {SYSTEM_USERS_ENV}=1 (as root) uses the machine's accounts.")

# -- idle GPU memory, hub-wide (optional) ------------------------------------------------------
# HAMI_HUB_IDLE_SERVICE=1: admins see who holds GPU memory idle at /services/vgpu-idle/.
if os.environ.get("HAMI_HUB_IDLE_SERVICE") == "1":
    from hami_idle import service_config

    _idle_service, _idle_role = service_config(args=["--proxy-url=http://127.0.0.1:8000", "--action=off"])
    c.JupyterHub.services.append(_idle_service)
    c.JupyterHub.load_roles.append(_idle_role)
    _say("idle GPU memory, for admins: http://127.0.0.1:8000/services/vgpu-idle/")

_say(f"hub state in {_data} (HAMI_HUB_DATA_DIR chooses another directory).")
_say("GPUs: " + ("; ".join(f"{g.index}: {g.name}, {g.memory >> 30} GiB" for g in _gpus)
                 or "none found, so only CPU servers are offered"))
