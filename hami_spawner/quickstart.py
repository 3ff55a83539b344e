"""The choices of the example hub on one machine (examples/local/jupyterhub_config.py).

Kept here, not in the config file, so they can be tested:

- **who logs in**: a shared password (the default, as root or not), or the
  machine's own accounts (``HAMI_HUB_SYSTEM_USERS=1``, root only);
- **where the hub keeps its state** (database, cookie secret, the passwords it
  made up, the shared-password mode's homes): a private data directory, never
  the directory the hub was started from;
- **the passwords**: from the environment, else the ones made up at the first
  start and kept in the data directory, so a restart keeps them.

Every mistake in the environment is a :class:`SetupError` whose message the
config prints as one line before exiting with status 2.
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Mapping

SYSTEM_USERS_ENV = "HAMI_HUB_SYSTEM_USERS"
DATA_DIR_ENV = "HAMI_HUB_DATA_DIR"
PASSWORD_ENV = "HAMI_HUB_PASSWORD"
ADMIN_PASSWORD_ENV = "HAMI_HUB_ADMIN_PASSWORD"
ROOT_DATA_DIR = Path("/var/lib/hami-jupyter")
# JupyterHub's SharedPasswordAuthenticator refuses shorter ones.
MIN_PASSWORD, MIN_ADMIN_PASSWORD = 8, 32


class SetupError(Exception):
    """The environment asks for something this hub cannot do; the message says what to change."""


def system_users(env: Mapping[str, str], euid: int) -> bool:
    """Log in with the machine's accounts (True) or with a shared password (False)?"""
    value = env.get(SYSTEM_USERS_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise SetupError(f"{SYSTEM_USERS_ENV} must be 0 (a shared password, the default) or 1 "
                         f"(the machine's own accounts), not {value!r}")
    if value == "1" and euid != 0:
        raise SetupError(f"{SYSTEM_USERS_ENV}=1 needs the hub to run as root, since it starts "
                         f"each server as its user's own account; start it as root, or unset "
                         f"{SYSTEM_USERS_ENV} to log in with a shared password")
    return value == "1"


def data_dir(env: Mapping[str, str], euid: int) -> Path:
    """``$HAMI_HUB_DATA_DIR``; else /var/lib/hami-jupyter for root,
    ``$XDG_DATA_HOME/hami-jupyter`` (``~/.local/share/hami-jupyter``) for anyone else."""
    chosen = env.get(DATA_DIR_ENV, "").strip()
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_absolute():
            raise SetupError(f"{DATA_DIR_ENV} must be an absolute path, not {chosen!r}")
        return path
    if euid == 0:
        return ROOT_DATA_DIR
    base = env.get("XDG_DATA_HOME", "").strip()
    if not base or not Path(base).is_absolute():
        home = env.get("HOME", "").strip() or os.path.expanduser("~")
        if not home or not Path(home).is_absolute():
            raise SetupError(f"no home directory to keep the hub's state in; set {DATA_DIR_ENV}")
        base = str(Path(home) / ".local" / "share")
    return Path(base) / "hami-jupyter"


def prepare_data_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700); refuse a link or a directory someone else owns."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise SetupError(f"cannot create the hub's data directory {path}: {exc.strerror}; "
                         f"set {DATA_DIR_ENV} to a directory you can write") from None
    if not stat.S_ISDIR(info.st_mode):
        raise SetupError(f"the hub's data directory {path} is not a directory (a link?); "
                         f"remove it or set {DATA_DIR_ENV}")
    if info.st_uid != os.geteuid():
        raise SetupError(f"the hub's data directory {path} belongs to uid {info.st_uid}, not to "
                         f"you (uid {os.geteuid()}); remove it or set {DATA_DIR_ENV}")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)  # it holds the cookie secret and the passwords
    return path


def password(env: Mapping[str, str], name: str, keep_in: Path, min_length: int) -> tuple[str, str]:
    """(password, where it came from): ``$name``, else the one kept in ``keep_in``,
    else a new one, written there (mode 0600) for the next start."""
    given = env.get(name, "")
    if given:
        if len(given) < min_length or given != given.strip() or "\n" in given:
            raise SetupError(f"{name} must be at least {min_length} characters, without "
                             f"surrounding spaces or line breaks")
        return given, name
    try:
        kept = _read_private(keep_in)
    except FileNotFoundError:
        kept = ""
    if len(kept) >= min_length:
        return kept, str(keep_in)
    made = secrets.token_urlsafe(max(12, (min_length * 3 + 3) // 4))
    fd = os.open(keep_in, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(made + "\n")
    return made, str(keep_in)


def _read_private(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd) as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise SetupError(f"{path} must be a file of yours that only you can read "
                             f"(chmod 600 {path}, or remove it to get a new password)")
        return file.read(4096).strip()
