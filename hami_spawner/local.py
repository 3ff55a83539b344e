"""The single-machine spawner: slices of this host's GPUs, no Kubernetes.

:class:`LocalGpuSpawner` is JupyterHub's ``LocalProcessSpawner`` (servers run
as the users' system accounts) plus GPU slices:

- the spawn form offers the admin's profiles (``c.GpuProfiles``), shows those
  that do not fit now as disabled, with why;
- the chosen profile is checked (:class:`GpuChoiceMixin`), then placed by the
  one hub-wide :class:`Allocator` (binpack or spread, GPU models); when nothing
  fits the spawn is refused with HTTP 409 and the allocator's message, before
  any process starts;
- the server starts with the slice's env: ``CUDA_VISIBLE_DEVICES`` (UUIDs),
  ``CUDA_DEVICE_MEMORY_LIMIT`` / ``CUDA_DEVICE_SM_LIMIT``, the slice's shared
  region in a private per-user directory, and ``hami-provisioner`` as the
  default kernel provisioner, which puts libvgpu on every kernel's
  LD_PRELOAD (the server itself is not preloaded unless ``preload_server``);
- the placement is freed when the server stops or fails to start, and kept
  across hub restarts in the spawner's state.

:class:`SimpleLocalGpuSpawner` runs every server as the hub's own user (no
system accounts), for a personal or trusted machine.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import stat
from pathlib import Path
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner, SimpleLocalProcessSpawner
from traitlets import Bool, Enum, Unicode, default

from hami_kernel import library_path, preload_first
from hami_kernel.backstop_events import EVENTS_DIR_ENV
from hami_kernel.kernel_slice import REGION_ENV
from hami_kernel.slice import Slice
from hami_spawner.arbiter import ArbiterSupervisor, supervisor
from hami_spawner.accounts import AccountError, cannot_run_message, lookup, why_cannot_run
from hami_spawner.allocator import (STATE_VERSION, Allocator, NeverFits, NoCapacity, Placement,
                                   discover_gpus)
from hami_spawner.choice import GpuChoiceMixin, _quoted, http_error
from hami_spawner.form import Offer, choice_from_form, describe_size, render_form
from hami_spawner.profiles import CUSTOM, CustomRange, GpuProfile

STATE_KEY = "hami_gpu"
PROVISIONER_ENV = "JUPYTER_DEFAULT_PROVISIONER_NAME"
# 409 Conflict, not 400 or 503: the request is valid, but conflicts with the
# GPUs' current use; it succeeds once other servers stop, or with a smaller
# choice.  503 would read as a hub fault (and invite automatic retries).
FULL_STATUS = 409
# 400: a slice this machine could not hold even with every GPU idle (no GPU,
# none of the type, none large enough).  Unlike 409, waiting never helps.
NEVER_STATUS = 400
# 403: this user's account cannot run a server here (none, or the server
# command is closed to it).  The admin can fix it; retrying cannot.
FORBIDDEN_STATUS = 403
# 503: the hub itself is misconfigured for every user (a missing server
# command, a region directory it cannot prepare).
UNAVAILABLE_STATUS = 503

_log = logging.getLogger(__name__)
_allocator: Allocator | None = None


def shared_allocator() -> Allocator:
    """The hub's one allocator, over the GPUs NVML reports (created at first use)."""
    global _allocator
    if _allocator is None:
        gpus = discover_gpus()
        _log.info("hami: GPUs for local slices: %s", "; ".join(
            f"{g.index}: {g.name} {g.uuid} ({g.memory >> 20} MiB)" for g in gpus) or "none")
        _allocator = Allocator(gpus)
    return _allocator


def set_shared_allocator(allocator: Allocator | None) -> None:
    """Replace the hub's allocator (tests, or a hub that builds its own inventory);
    None makes the next use discover the GPUs again."""
    global _allocator
    _allocator = allocator


def _safe_name(name: str) -> str:
    """A file name for a user or server name: [A-Za-z0-9._-] kept, the rest hex-escaped."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", lambda m: "".join(f"_{b:02x}" for b in m.group().encode()),
                  name)
    return "_" + safe if safe.startswith(".") or not safe else safe


class LocalGpuSpawner(GpuChoiceMixin, LocalProcessSpawner):
    """Starts each user's server on this machine, inside the GPU slice they chose."""

    region_root = Unicode(config=True, help="""
        Directory holding one private directory per user (mode 0700, owned by
        the user when the hub runs as root) for the shared regions of their
        servers' slices.  The root itself must be owned by the hub's user and
        is kept at mode 0711; the hub refuses to start servers if it is not.
        Default: /tmp/hami-jupyter-<hub uid>.
        """)

    default_provisioner = Unicode("hami-provisioner", config=True, help="""
        Kernel provisioner for kernels of GPU servers whose kernelspec names
        none (set as JUPYTER_DEFAULT_PROVISIONER_NAME).  hami-provisioner puts
        libvgpu on each kernel's LD_PRELOAD, inside the server's slice.  Empty
        leaves kernels alone: only `hami-kernel` kernelspecs are then limited.
        """)

    preload_server = Bool(False, config=True, help="""
        Also put libvgpu on the LD_PRELOAD of the server process itself, so
        that everything it starts (terminals included, not only kernels)
        counts against the slice.  Off by default: kernels get it from the
        kernel provisioner.
        """)

    arbiter = Bool(True, config=True, help="""
        Start and supervise this hub's ``hami-arbiter`` (restarted if it dies),
        through which every capped process on this machine takes its turns on
        the GPUs at its server's slice, whatever user it runs as.  Servers get
        LIBVGPU_ARBITER_SOCKET; each GPU server's slice is registered with the
        daemon (a grant, keyed by the server's pid and start time).  Off:
        each user's processes take turns only among themselves.
        """)

    arbiter_socket_dir = Unicode(config=True, help="""
        Directory of the arbiter's socket (made 0755, the socket 0666).
        Default: <region_root>/arbiter.  Its grants are kept beside it, in
        <region_root>/arbiter-grants (mode 0700, the hub's user only).
        """)

    arbiter_backstop = Enum(["kill", "report", "off"], default_value="kill", config=True, help="""
        The arbiter's memory backstop: a process of a slice found over its
        memory limit on the GPU is killed ("kill"), reported, or left alone.
        """)

    _placement: Placement | None = None
    _arbiter: ArbiterSupervisor | None = None
    _granted_pid = 0

    @default("arbiter_socket_dir")
    def _default_arbiter_socket_dir(self) -> str:
        return str(Path(self.region_root) / "arbiter")

    @default("region_root")
    def _default_region_root(self) -> str:
        return f"/tmp/hami-jupyter-{os.getuid()}"

    @default("options_form")
    def _default_options_form(self) -> Any:
        return self._render_options_form

    @default("options_from_form")
    def _default_options_from_form(self) -> Any:
        return self._choice_from_form

    @property
    def allocator(self) -> Allocator:
        return shared_allocator()

    @property
    def placement(self) -> Placement | None:
        return self._placement

    @property
    def placement_key(self) -> str:
        return f"{self.user.name}:{self.name}" if self.name else self.user.name

    # -- the form ---------------------------------------------------------------

    def _render_options_form(self, spawner: Any = None) -> str:
        groups, admin = self.user_group_names(), self.user_is_admin()
        profiles, allocator = self.gpu_profiles, self.allocator
        no_gpu = not allocator.gpus
        offers = [] if no_gpu else [self._offer(p) for p in profiles.offered_to(groups, admin)]
        if profiles.cpu_profile_name:
            offers.append(Offer(profiles.cpu_profile_name, profiles.cpu_profile_display_name))
        custom, custom_unavailable = None, ""
        if not no_gpu and profiles.custom_offered_to(groups, admin):
            custom = profiles.custom_range()
            try:
                allocator.check(_smallest(custom), custom.policy, label="smallest custom")
            except NoCapacity as exc:
                custom_unavailable = str(exc)
        return render_form(offers, custom, custom_unavailable, no_gpu=no_gpu)

    def _offer(self, profile: GpuProfile) -> Offer:
        eligible = [g for g in self.allocator.gpus
                    if (not profile.gpu_types or _matches(g.name, profile.gpu_types))
                    and not _matches(g.name, profile.avoid_gpu_types)]
        try:
            self.allocator.check(profile.slice, profile.policy, profile.gpu_types,
                                 profile.avoid_gpu_types, label=profile.display_name)
            why = ""
        except NoCapacity as exc:
            why = str(exc)
        models = ", ".join(dict.fromkeys(g.name for g in eligible))
        memory = max((g.memory for g in eligible), default=None)
        description = "" if profile.description == profile.slice.describe() else profile.description
        return Offer(profile.name, profile.display_name, description,
                     describe_size(profile.slice, memory), models, why, profile.default)

    def _choice_from_form(self, form_data: dict[str, Any]) -> dict[str, str]:
        return choice_from_form(form_data)

    def default_choice(self) -> dict[str, str]:
        """On a machine without a GPU, a request that chose nothing gets the CPU choice
        (the only one the form offers there), not a GPU default that can never start."""
        if not self.allocator.gpus and self.gpu_profiles.cpu_profile_name:
            return {"profile": self.gpu_profiles.cpu_profile_name}
        return super().default_choice()

    def options_from_query(self, query_data: dict[str, Any]) -> dict[str, Any]:
        """``/hub/spawn?profile=half`` chooses like the form does.

        Query arguments without ``profile`` are kept as they are, so that the
        choice check refuses them instead of starting the default.
        """
        return choice_from_form(query_data) if "profile" in query_data else dict(query_data)

    # -- the slice's env and its private directory --------------------------------

    def region_owner(self) -> tuple[int, int] | None:
        """(uid, gid) that owns the user's region directory; None: the hub's own user."""
        if os.geteuid() != 0:
            return None
        entry = lookup(self.user.name)
        return entry.pw_uid, entry.pw_gid

    def region_dir(self) -> Path:
        return Path(self.region_root) / _safe_name(self.user.name)

    def region_path(self) -> Path:
        file = f"server-{_safe_name(self.name)}.region" if self.name else "server.region"
        return self.region_dir() / file

    def prepare_region(self) -> Path:
        """Create the private directory and remove a region left by an earlier server.

        A stale region would keep the earlier slice's limit: the limit in a
        region stands over the env of processes that attach to it.
        """
        root = Path(self.region_root)
        _private_dir(root, 0o711, None)
        _private_dir(self.region_dir(), 0o700, self.region_owner())
        path = self.region_path()
        _remove(path)
        return path

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        for key in [k for k in env if k.startswith(("CUDA_DEVICE_MEMORY_LIMIT", "CUDA_DEVICE_SM_LIMIT"))]:
            del env[key]  # only the placement's limits apply
        if self._placement is None:
            env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU server sees no GPU
            if self.default_provisioner:
                env[PROVISIONER_ENV] = self.default_provisioner  # %vgpu says there is no slice
            return env
        env.update(self._placement.to_env())
        env[REGION_ENV] = str(self.region_path())
        if self.arbiter:
            env["LIBVGPU_ARBITER_SOCKET"] = str(Path(self.arbiter_socket_dir) / "arbiter.sock")
            # The backstop's events live beside the socket; %vgpu reads them there.
            env[EVENTS_DIR_ENV] = str(Path(self.arbiter_socket_dir) / "events")
        if self.default_provisioner:
            env[PROVISIONER_ENV] = self.default_provisioner
        if self.preload_server:
            env["LD_PRELOAD"] = preload_first(str(library_path()), env.get("LD_PRELOAD"))
        return env

    # -- start, stop and state ----------------------------------------------------

    async def start(self) -> Any:
        profile = self.gpu_profile
        self.release_placement()
        try:
            self.check_account()
        except AccountError as exc:
            raise http_error(FORBIDDEN_STATUS, str(exc)) from None
        if profile is not None:
            self._placement = self._place(profile)
            try:
                self.prepare_region()
            except OSError as exc:
                self.release_placement()
                raise http_error(UNAVAILABLE_STATUS,
                                 f"The hub cannot prepare the GPU slice's directory ({exc}); "
                                 f"ask the administrator.") from None
            self.log.info("GPU slice for %s: %s on %s", self._log_name, profile.slice.describe(),
                          ", ".join(self._placement.gpus))
            if self.arbiter:
                self._arbiter = supervisor(self.arbiter_socket_dir, str(Path(self.region_root) / "arbiter-grants"),
                                           self.arbiter_backstop)
        try:
            started = await super().start()
            if self._arbiter is not None and self._placement is not None and self.pid:
                self._arbiter.grant(self.pid, self._placement.to_env())
                self._granted_pid = self.pid
            return started
        except PermissionError:
            self.release_placement()
            raise http_error(FORBIDDEN_STATUS, self._cannot_run_message()) from None
        except FileNotFoundError as exc:
            self.release_placement()
            raise http_error(UNAVAILABLE_STATUS,
                             f"The server command {exc.filename or self.cmd[0]} does not exist on "
                             f"this machine; ask the administrator to check c.Spawner.cmd.") from None
        except BaseException:
            self.release_placement()
            raise

    def _place(self, profile: GpuProfile) -> Placement:
        """The profile's slice on this machine's GPUs, or the HTTP answer that says why not."""
        try:
            return self.allocator.place(
                self.placement_key, profile.slice, profile.policy, profile.gpu_types,
                profile.avoid_gpu_types, label=profile.display_name)
        except NeverFits as exc:
            profiles = self.gpu_profiles
            hint = (f" Choose {_quoted(profiles.cpu_profile_display_name)} instead (profile "
                    f"{profiles.cpu_profile_name!r})." if profiles.cpu_profile_name else "")
            raise http_error(NEVER_STATUS, f"{exc}{hint}") from None
        except NoCapacity as exc:
            raise http_error(FULL_STATUS, str(exc)) from None

    def run_as(self) -> pwd.struct_passwd:
        """The system account the server runs as: the user's own (AccountError if none)."""
        return lookup(self.user.name)

    def check_account(self) -> None:
        """AccountError unless the server's account exists and can run ``cmd``."""
        account = self.run_as()
        reason = why_cannot_run(self.cmd[0], account) if self.cmd else None
        if reason:
            raise AccountError(cannot_run_message(account.pw_name, self.cmd[0], reason))

    def _cannot_run_message(self) -> str:
        """Why starting the server command was refused by the system (EACCES)."""
        command = self.cmd[0] if self.cmd else "the server command"
        try:
            account = self.run_as()
        except AccountError as exc:
            return str(exc)
        reason = why_cannot_run(command, account) or "permission was denied"
        return cannot_run_message(account.pw_name, command, reason)

    async def stop(self, now: bool = False) -> None:
        await super().stop(now=now)
        self.release_placement()

    def release_placement(self) -> None:
        """Free this server's GPUs and remove its region (it has no processes left)."""
        if self._arbiter is not None and self._granted_pid:
            self._arbiter.revoke(self._granted_pid)
            self._granted_pid = 0
        if self._placement is not None:
            released = self.allocator.release(self.placement_key)
            if released is not None:
                self.log.info("GPU slice of %s released (%s)", self._log_name,
                              ", ".join(released.gpus))
            self._placement = None
            _remove(self.region_path())

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self._placement is not None:
            p, profile = self._placement, self.gpu_profile
            state[STATE_KEY] = {
                "profile": profile.name if profile else CUSTOM,
                "display_name": profile.display_name if profile else p.slice.describe(),
                "gpus": list(p.gpus), "memory": p.memory, "cores": p.cores,
            }
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        """After a hub restart: take this running server's placement back."""
        super().load_state(state)
        saved = state.get(STATE_KEY)
        if not saved:
            return
        try:
            placement = Placement(self.placement_key, tuple(saved["gpus"]), saved["memory"],
                                  saved["cores"])
            size = placement.slice
        except (KeyError, TypeError, ValueError) as exc:
            self.log.error("GPU slice of %s: unreadable saved state %r (%s); not restored",
                           self._log_name, saved, exc)
            return
        current = self.allocator.get(self.placement_key)
        if current != placement:
            skipped = self.allocator.restore({"version": STATE_VERSION, "placements": [
                {"key": placement.key, "gpus": list(placement.gpus), "memory": placement.memory,
                 "cores": placement.cores}]})
            for _, reason in skipped:
                self.log.error(
                    "GPU slice of %s (%s on %s) is not restored: %s. Its server keeps running "
                    "outside the hub's accounting; stop it to start it again on a slice.",
                    self._log_name, size.describe(), ", ".join(placement.gpus), reason)
                return
        self._placement = placement
        self.gpu_profile = GpuProfile(name=str(saved.get("profile", CUSTOM)),
                                      display_name=str(saved.get("display_name", size.describe())),
                                      description=size.describe(), slice=size)
        self.log.info("GPU slice of %s restored: %s on %s", self._log_name, size.describe(),
                      ", ".join(placement.gpus))

    def clear_state(self) -> None:
        """The server is gone (stopped, died, or a new start begins)."""
        super().clear_state()
        self.release_placement()
        self.gpu_profile = None


class SimpleLocalGpuSpawner(LocalGpuSpawner, SimpleLocalProcessSpawner):
    """LocalGpuSpawner that runs every server as the hub's own user.

    For one person's machine, or users who trust each other: no system
    accounts are needed, and there is no isolation between users' files.
    Homes are ``home_dir_template`` (default ``/tmp/{username}``).
    """

    def region_owner(self) -> tuple[int, int] | None:
        return None

    def run_as(self) -> pwd.struct_passwd:
        return pwd.getpwuid(os.geteuid())


def _matches(name: str, patterns: Any) -> bool:
    return any(p.lower() in name.lower() for p in patterns)


def _smallest(bounds: CustomRange) -> Slice:
    return Slice(bounds.memory_min, bounds.cores_min, 1)


def _private_dir(path: Path, mode: int, owner: tuple[int, int] | None) -> None:
    """Make ``path`` a real directory with ``mode``, owned by ``owner`` (default: us).

    Refuses a symlink or a directory someone else made (say, in /tmp).
    """
    try:
        path.mkdir(mode=mode, parents=owner is None)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise OSError(f"{path} is not a directory (a symlink?); remove it")
    expected = os.geteuid() if owner is None else owner[0]
    if info.st_uid not in (os.geteuid(), expected):
        raise OSError(f"{path} belongs to uid {info.st_uid}, not to the hub (uid "
                      f"{os.geteuid()}); remove it or set LocalGpuSpawner.region_root")
    if owner is not None and (info.st_uid, info.st_gid) != owner:
        os.chown(path, *owner, follow_symlinks=False)
    if stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
