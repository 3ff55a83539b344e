"""The check every spawn passes, for both spawners: is this slice offered to this user?

JupyterHub sets ``spawner.user_options`` from the form or from the REST body
(``POST /hub/api/users/{name}/server``), then calls ``run_pre_spawn_hook()``
and only then ``start()``.  An ``HTTPError`` raised in between is relayed to
the caller as it is, so doing the check there answers a forged or stale
request with a 400 and its reason, before any pod or process exists.
"""

from __future__ import annotations

from typing import Any, Mapping

from jupyterhub.utils import maybe_future
from tornado import web

from hami_spawner.profiles import ChoiceError, GpuProfile, GpuProfiles


class GpuChoiceMixin:
    """Mixed into a JupyterHub Spawner, before the Spawner class.

    After the pre-spawn hook, ``self.gpu_profile`` is the slice this server
    may have (``None`` = no GPU).  Subclasses override :meth:`gpu_choice` when
    their form posts other field names than ``profile``/``memory``/``cores``.
    """

    gpu_profile: GpuProfile | None = None
    _gpu_profiles: GpuProfiles | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # JupyterHub >= 5.3 warns about user_options that no apply_user_options hook
        # takes; the GPU choice is taken (or refused with a 400) by run_pre_spawn_hook,
        # which runs right after. An admin's own hook is left as it is.
        if self.apply_user_options is None:
            self.apply_user_options = _taken_by_the_pre_spawn_hook

    @property
    def gpu_profiles(self) -> GpuProfiles:
        """The admin's profiles (``c.GpuProfiles``), read once per spawner."""
        if self._gpu_profiles is None:
            self._gpu_profiles = GpuProfiles(parent=self)
        return self._gpu_profiles

    def user_group_names(self) -> set[str]:
        return {group.name for group in getattr(self.user, "groups", None) or ()}

    def user_is_admin(self) -> bool:
        return bool(getattr(self.user, "admin", False))

    def gpu_choice(self) -> Mapping[str, Any]:
        """The request's choice as ``{"profile": name[, "memory", "cores", "count"]}``."""
        return dict(self.user_options or {})

    def default_choice(self) -> dict[str, str]:
        """What a request that chose nothing gets: the admin's default, else the first offer."""
        offered = self.gpu_profiles.offered_to(self.user_group_names(), self.user_is_admin())
        for profile in offered:
            if profile.default:
                return {"profile": profile.name}
        if offered:
            return {"profile": offered[0].name}
        if self.gpu_profiles.cpu_profile_name:
            return {"profile": self.gpu_profiles.cpu_profile_name}
        raise http_error(400, "no GPU profile is offered to you and there is no CPU-only "
                              "choice; ask your administrator")

    def other_gpu_servers(self) -> list[str]:
        """Names of this user's other servers that run (or start) with a GPU slice."""
        others = getattr(self.user, "spawners", {}) or {}
        return [name or "default" for name, spawner in others.items()
                if spawner is not self and getattr(spawner, "gpu_profile", None) is not None
                and (spawner.active or getattr(spawner, "pending", None))]

    def resolve_gpu_choice(self) -> GpuProfile | None:
        choice = self.gpu_choice() or self.default_choice()
        try:
            profile = self.gpu_profiles.resolve(
                {k: v if isinstance(v, str) else _one_string(k, v) for k, v in choice.items()},
                self.user_group_names(), self.user_is_admin())
        except ChoiceError as exc:
            raise http_error(400, str(exc)) from None
        limit = self.gpu_profiles.max_gpu_servers_per_user
        if profile is not None and limit:
            running = self.other_gpu_servers()
            if len(running) >= limit:
                raise http_error(
                    400, f"you already run {len(running)} GPU server(s) ({', '.join(sorted(running))}); "
                         f"at most {limit} are allowed per user: stop one first, or choose "
                         f"{_quoted(self.gpu_profiles.cpu_profile_display_name) if self.gpu_profiles.cpu_profile_name else 'a CPU-only server'}")
        return profile

    async def run_pre_spawn_hook(self):
        self.gpu_profile = self.resolve_gpu_choice()
        return await maybe_future(super().run_pre_spawn_hook())


def _taken_by_the_pre_spawn_hook(spawner: Any, options: Mapping[str, Any]) -> None:
    """apply_user_options for GPU spawners: the choice is applied by run_pre_spawn_hook."""


def _one_string(key: str, value: Any) -> str:
    """Form data arrives as lists of strings; a choice field holds exactly one."""
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    raise http_error(400, f"GPU choice field {key!r} must be one string, not {value!r}")


def http_error(status: int, message: str) -> web.HTTPError:
    """An HTTPError whose message JupyterHub shows as it is.

    The REST API answers ``{"status": ..., "message": message}``; the spawn
    page shows ``message`` above the form (without ``jupyterhub_message`` it
    would show "HTTP 400: Bad Request (message)").
    """
    error = web.HTTPError(status, "%s", message)
    error.jupyterhub_message = message
    return error


def _quoted(name: str) -> str:
    return f"\u201c{name}\u201d"
