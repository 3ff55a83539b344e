"""Servers that run as the users' own system accounts: the two ways that fails.

:class:`~hami_spawner.local.LocalGpuSpawner` starts each server as the
user's account.  Two conditions make that impossible, and both are the
admin's to fix, so the user gets a sentence that says what is wrong and whom
to ask, rather than a bare HTTP 500:

- there is no account of that name on this machine;
- the account cannot run the server command, typically because the hub's
  Python lives somewhere only the admin can enter (a virtual environment in
  root's home, mode 0700).

Nothing here needs JupyterHub.
"""
from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path


class AccountError(RuntimeError):
    """The account cannot run its server; the message is for the user and the admin."""


def lookup(name: str) -> pwd.struct_passwd:
    """The system account ``name``, or AccountError that says there is none."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise AccountError(
            f"There is no system account named {name!r} on this machine, and this hub starts "
            f"each server as its user's own account. Ask the administrator to create it (or to "
            f"run the hub with a shared password, HAMI_HUB_SYSTEM_USERS=0).") from None


def _may(info: os.stat_result, uid: int, gids: set[int], bit: int) -> bool:
    """Does ``uid`` (in ``gids``) have permission ``bit`` (4 read, 1 search/execute)?"""
    if uid == 0:  # root searches every directory and runs a file with any x bit
        return bit != 1 or stat.S_ISDIR(info.st_mode) or bool(info.st_mode & 0o111)
    if info.st_uid == uid:
        return bool(info.st_mode & (bit << 6))
    if info.st_gid in gids:
        return bool(info.st_mode & (bit << 3))
    return bool(info.st_mode & bit)


def _describe(path: Path, info: os.stat_result) -> str:
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = f"uid {info.st_uid}"
    return f"{path} (mode {stat.S_IMODE(info.st_mode):04o}, owner {owner})"


def _closed_in(path: Path, uid: int, gids: set[int]) -> str | None:
    """The first directory on the way to ``path`` that ``uid`` may not enter, or
    ``path`` itself when it may not be run; None when the way is open."""
    parts = path.parts
    for i in range(1, len(parts)):
        directory = Path(*parts[:i])
        try:
            info = os.stat(directory)
        except OSError:
            return None  # reported as missing elsewhere
        if not _may(info, uid, gids, 1):
            return f"the directory {_describe(directory, info)} is closed to it"
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not _may(info, uid, gids, 1):
        return f"{_describe(path, info)} is not executable for it"
    return None


def why_cannot_run(command: str, account: pwd.struct_passwd) -> str | None:
    """Why ``account`` cannot execute ``command`` (a path, or a name looked up on
    the hub's PATH), or None when nothing in the file modes stops it.

    Both the path as written and the file it links to are checked, since a
    virtual environment's ``bin/python`` is a link into the base interpreter.
    Access lists are not read: None is no promise, but a reason is certain.
    """
    found = command if os.sep in command else _which(command)
    if found is None:
        return f"the command {command!r} is not found on the hub's PATH"
    path = Path(os.path.abspath(found))
    if not path.exists():
        return f"{path} does not exist"
    gids = set(os.getgrouplist(account.pw_name, account.pw_gid))
    for candidate in dict.fromkeys((path, Path(os.path.realpath(path)))):
        reason = _closed_in(candidate, account.pw_uid, gids)
        if reason:
            return reason
    return None


def cannot_run_message(user: str, command: str, reason: str) -> str:
    """The sentence a user sees when their account cannot start the server command."""
    return (f"The server for {user!r} cannot start: the account {user!r} cannot run "
            f"{command} because {reason}. Ask the administrator to install hami-jupyter in a "
            f"Python environment every user can run (for example a virtual environment under "
            f"/opt) and to start the hub from there, or to set c.Spawner.cmd.")


def _which(name: str) -> str | None:
    from shutil import which
    return which(name)
