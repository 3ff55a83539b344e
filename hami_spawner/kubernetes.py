"""HamiSpawner: GPU profiles as KubeSpawner profiles, a choice as HAMi pod limits.

The admin's ``c.GpuProfiles`` become KubeSpawner's ``profile_list`` (so the
stock form and jupyterhub-fancy-profiles both show them), filtered to what
the user's groups are offered.  Whatever the form or a REST body sends is
checked by :class:`~hami_spawner.choice.GpuChoiceMixin` before ``start()``;
a forged choice gets an HTTP 400 and no pod.  The chosen slice then becomes,
on the notebook container, the HAMi resources ``nvidia.com/gpu`` (count),
``nvidia.com/gpumem`` (MiB per GPU) and ``nvidia.com/gpucores`` (percent per
GPU), HAMi's GPU-type and scheduling-policy annotations, and
``schedulerName: hami-scheduler``.

With ``interceptor = "bundled"`` the pod runs our libvgpu instead of
HAMi-core: ``CUDA_DISABLE_CONTROL=true`` keeps HAMi's device plugin from
mounting its ``/etc/ld.so.preload`` (it reads the variable from the pod spec),
and ``LD_PRELOAD`` names our library, which reads the same limits.  The
single-user image must have hami-jupyter installed, with the library at
``libvgpu_path``.  With ``slice_file`` (the default) the pod also gets its
slice as a root-owned, read-only file that libvgpu trusts over the
environment: put the library in the image's ``/etc/ld.so.preload`` and a
user with a terminal can neither unset nor raise it.
"""

from __future__ import annotations

import copy
from typing import Any

from kubernetes_asyncio.client.models import (V1DownwardAPIVolumeFile, V1DownwardAPIVolumeSource,
                                               V1HostPathVolumeSource, V1ObjectFieldSelector, V1Volume,
                                               V1VolumeMount)
from kubespawner import KubeSpawner
from traitlets import Bool, Dict, Enum, Integer, Unicode

from hami_kernel import preload_first
from hami_kernel.slice import GIB, MIB, Slice, format_memory
from hami_spawner.choice import GpuChoiceMixin, http_error
from hami_spawner.events import translate_progress
from hami_spawner.profiles import CUSTOM, CustomRange, GpuProfile

USE_GPUTYPE = "nvidia.com/use-gputype"
NOUSE_GPUTYPE = "nvidia.com/nouse-gputype"
GPU_POLICY = "hami.io/gpu-scheduler-policy"
NODE_POLICY = "hami.io/node-scheduler-policy"
UNLISTED = "--unlisted-choice"
# The slice as a file the user cannot change: the pod's annotation, mounted read-only
# by the kubelet where libvgpu looks for it (VGPU_TRUSTED_SLICE_FILE, csrc/src/trusted.h).
SLICE_ANNOTATION = "hami-jupyter.io/slice"
SLICE_FILE_DIR, SLICE_FILE_NAME = "/etc/hami-jupyter", "slice"
SLICE_VOLUME = "hami-jupyter-slice"
ARBITER_VOLUME = "hami-jupyter-arbiter"
ARBITER_SOCKET_NAME = "arbiter.sock"
# What parse_memory accepts, for the browser's check of a free-form size.
MEMORY_REGEX = r"^\s*[0-9]+(\.[0-9]+)?\s*([KkMmGgTt]([Ii][Bb]?)?|[Bb])?\s*$"


def slice_file_text(size: Slice, region_path: str = "", arbiter_socket: str = "") -> str:
    """The slice file's NAME=VALUE lines (csrc/src/trusted.h): the limits libvgpu
    holds the pod to, in the environment's language, its region, and the node's
    arbiter daemon (hami-arbiter), through which it takes its turns on the GPU."""
    values = size.to_env()
    if region_path:
        values["CUDA_DEVICE_MEMORY_SHARED_CACHE"] = region_path
    if arbiter_socket:
        values["LIBVGPU_ARBITER_SOCKET"] = arbiter_socket
    return ("# The GPU slice of this pod, from HamiSpawner; the environment may only tighten it.\n"
            + "".join(f"{name}={value}\n" for name, value in sorted(values.items())))


def memory_key(nbytes: int) -> str:
    """A choice key for a size: exact, short, and parseable ("8GiB", "1536MiB")."""
    if nbytes % GIB == 0:
        return f"{nbytes // GIB}GiB"
    return f"{nbytes // MIB}MiB" if nbytes % MIB == 0 else str(nbytes)


class HamiSpawner(GpuChoiceMixin, KubeSpawner):
    """KubeSpawner whose profiles are the admin's GPU slices, scheduled by HAMi."""

    interceptor = Enum(["bundled", "hami-core"], default_value="bundled", help="""
        Which library enforces the slice inside the pod.  "bundled": our
        libvgpu (LD_PRELOAD=libvgpu_path, CUDA_DISABLE_CONTROL=true so HAMi's
        device plugin does not preload HAMi-core).  "hami-core": HAMi's own
        library, as HAMi sets it up; no LD_PRELOAD or CUDA_DISABLE_CONTROL.
        """).tag(config=True)
    libvgpu_path = Unicode("/usr/local/lib/hami-jupyter/libvgpu.so", help="""
        Path of libvgpu.so inside the single-user image (bundled interceptor).
        The image must have hami-jupyter installed; link its library here, e.g.
        ln -s "$(python -c 'import hami_kernel; print(hami_kernel.library_path())')" \\
        /usr/local/lib/hami-jupyter/libvgpu.so, or set this to that path.  It is
        also passed as LIBVGPU_LIBRARY, so a wrong path makes GPU kernels refuse
        to start instead of running unlimited.
        """).tag(config=True)
    region_path = Unicode("/tmp/libvgpu.region", help="""
        CUDA_DEVICE_MEMORY_SHARED_CACHE for the bundled interceptor: where the
        processes of the pod share their usage.  The default keeps our region
        out of HAMi's cache directory, whose files HAMi's monitor reads (and
        writes) in HAMi-core's layout.  Empty: keep the path HAMi sets.
        """).tag(config=True)
    slice_file = Bool(True, help="""
        Bundled interceptor: also give GPU pods their slice as a read-only file,
        /etc/hami-jupyter/slice (the pod's hami-jupyter.io/slice annotation,
        mounted by the kubelet through the downward API, owned by root).
        libvgpu takes the slice's limits and region from that file and lets the
        environment only tighten them, so with libvgpu in the single-user
        image's /etc/ld.so.preload a user with a terminal cannot lift the slice
        by unsetting LD_PRELOAD or raising the variables.  Off: the slice is
        only in the environment, which its user can change.
        """).tag(config=True)
    arbiter_socket_dir = Unicode("/run/hami-jupyter/arbiter", help="""
        Bundled interceptor: the node's directory of the hami-arbiter socket
        (the DaemonSet in examples/kubernetes/arbiter-daemonset.yaml).  GPU pods
        mount it read-only (a hostPath, at the same path), and their slice file
        names its arbiter.sock, so that all capped processes on a GPU, whatever
        pod they run in, take turns at their slices' shares.  The directory
        must exist on the node (a hostPath of type Directory: the DaemonSet
        creates it), or GPU pods do not start.  "" turns the mount and the
        line off: each pod then paces only its own processes.
        """).tag(config=True)
    gpu_scheduler_name = Unicode("hami-scheduler", help="""
        schedulerName of pods with a GPU slice (HAMi's scheduler).  Empty: keep
        KubeSpawner's scheduler_name.  CPU-only pods always keep it.
        """).tag(config=True)
    node_scheduler_policy = Enum(["", "binpack", "spread"], default_value="", help="""
        hami.io/node-scheduler-policy of GPU pods: pack GPU pods onto few nodes
        (binpack) or spread them; empty leaves HAMi's configured default.  The
        per-GPU policy comes from each profile's "policy".
        """).tag(config=True)
    resource_names = Dict(
        default_value={"gpu": "nvidia.com/gpu", "gpumem": "nvidia.com/gpumem",
                       "gpucores": "nvidia.com/gpucores"}, help="""
        HAMi's resource names (its resourceCountName, resourceMemoryName and
        resourceCoreName), for clusters that renamed them.
        """).tag(config=True)
    hide_gpus_from_cpu_pods = Bool(True, help="""
        Set NVIDIA_VISIBLE_DEVICES=none in CPU-only pods, so an image that sets
        it to "all" (CUDA base images do) sees no GPU on a GPU node.
        """).tag(config=True)
    custom_max_choices = Integer(64, help="""
        The custom size's memory menu lists every allowed size when there are
        at most this many; otherwise some, plus a free-form field (checked on
        the server like every value).
        """).tag(config=True)
    kubespawner_overrides = Dict(help="""
        Extra KubeSpawner settings per profile name (the CPU choice and
        "custom" included), as KubeSpawner's kubespawner_override, e.g.
        {"large": {"image": "quay.io/jupyter/pytorch-notebook:cuda12-latest"}}.
        GPU resources, annotations and scheduler are set by HamiSpawner itself.
        """).tag(config=True)

    _overridden: dict[str, Any] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.profile_list:
            self.log.warning("HamiSpawner builds profile_list from c.GpuProfiles; "
                             "ignoring the configured KubeSpawner.profile_list")
        self.profile_list = self.gpu_profile_list

    # ---- the form: GpuProfiles as KubeSpawner profiles -------------------------------------
    def gpu_profile_list(self, spawner: Any = None) -> list[dict[str, Any]]:
        """KubeSpawner profiles for what this user's groups are offered (KubeSpawner
        calls it with the spawner, which is this one)."""
        profiles, groups, admin = self.gpu_profiles, self.user_group_names(), self.user_is_admin()
        default = self.default_choice()["profile"] if (
            profiles.offered_to(groups, admin) or profiles.cpu_profile_name) else None
        result = [self._profile(p.name, p.display_name, p.description) for p in
                  profiles.offered_to(groups, admin)]
        bounds = profiles.custom_range()
        if profiles.custom_offered_to(groups, admin) and bounds is not None:
            result.append(self._custom_profile(bounds))
        if profiles.cpu_profile_name:
            result.append(self._profile(profiles.cpu_profile_name,
                                        profiles.cpu_profile_display_name, "No GPU"))
        for entry in result:
            entry["default"] = entry["slug"] == default
        return result

    def _profile(self, slug: str, display_name: str, description: str) -> dict[str, Any]:
        return {"slug": slug, "display_name": display_name, "description": description,
                "kubespawner_override": dict(self.kubespawner_overrides.get(slug, {}))}

    def _custom_profile(self, bounds: CustomRange) -> dict[str, Any]:
        sizes = list(range(bounds.memory_min, bounds.memory_max + 1, bounds.memory_step))
        free_form = len(sizes) > self.custom_max_choices > 0
        if free_form:
            stride = -(-len(sizes) // self.custom_max_choices)
            sizes = sizes[::stride]
        fmt = format_memory
        memory: dict[str, Any] = {
            "display_name": "GPU memory",
            "choices": {memory_key(n): {"display_name": fmt(n)} for n in sizes}}
        if free_form:
            memory["unlisted_choice"] = {
                "enabled": True, "display_name": "GPU memory (e.g. 12GiB)",
                "display_name_in_choices": "Other size...",
                "validation_regex": MEMORY_REGEX,
                "validation_message": f"a size from {fmt(bounds.memory_min)} to "
                                      f"{fmt(bounds.memory_max)} in steps of "
                                      f"{fmt(bounds.memory_step)}, such as 12GiB"}
        options = {"memory": memory, "cores": {
            "display_name": "Compute share",
            "choices": {str(c): {"display_name": f"{c}%"} for c in
                        range(bounds.cores_min, bounds.cores_max + 1, bounds.cores_step)}}}
        if bounds.count_max > 1:
            options["count"] = {"display_name": "GPUs", "choices": {
                str(n): {"display_name": str(n)} for n in range(1, bounds.count_max + 1)}}
        entry = self._profile(CUSTOM, "Custom GPU slice",
                              f"Choose VRAM ({fmt(bounds.memory_min)} to "
                              f"{fmt(bounds.memory_max)}) and a compute share")
        entry["profile_options"] = options
        return entry

    # ---- the choice ----------------------------------------------------------------------
    def gpu_choice(self) -> dict[str, Any]:
        """KubeSpawner's user_options ({"profile", option, option--unlisted-choice}) as
        our choice.  Every field is passed on, so resolve() refuses what it does not take."""
        options = dict(self.user_options or {})
        choice: dict[str, Any] = {}
        for key, value in options.items():
            if not isinstance(key, str):
                raise http_error(400, f"GPU choice field {key!r} must be a string")
            base = key[:-len(UNLISTED)] if key.endswith(UNLISTED) else key
            if base != key and options.get(base, "unlisted-choice") != "unlisted-choice":
                raise http_error(400, f"GPU choice field {base!r} is given twice")
            if base == key and value == "unlisted-choice" and key + UNLISTED in options:
                continue  # the form's "Other..." entry; the free-form field holds the value
            choice[base] = value
        return choice

    def resolve_gpu_choice(self) -> GpuProfile | None:
        profile = super().resolve_gpu_choice()
        if profile is not None:
            try:
                profile.slice.to_pod_resources()
            except ValueError as exc:
                raise http_error(400, f"this size cannot be a HAMi slice: {exc}") from None
        return profile

    async def load_user_options(self) -> None:
        """Apply only the resolved profile's overrides (the GPU fields were checked in
        the pre-spawn hook and carry none), after undoing the previous spawn's: the
        spawner object lives on, so "cpu" after "small" must not keep small's image."""
        for key, value in self._overridden.items():
            setattr(self, key, value)
        options = self.user_options
        slug = self.gpu_profile.name if self.gpu_profile else self.gpu_profiles.cpu_profile_name
        self._overridden = {key: copy.deepcopy(getattr(self, key))
                            for key in self.kubespawner_overrides.get(slug, {})}
        self.user_options = {"profile": slug} if slug else {}
        try:
            await super().load_user_options()
        finally:
            self.user_options = options

    # ---- the pod -------------------------------------------------------------------------
    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        if self.gpu_profile is None:
            if self.hide_gpus_from_cpu_pods:
                env["NVIDIA_VISIBLE_DEVICES"] = "none"
            return env
        if self.interceptor == "bundled":
            env.update({"CUDA_DISABLE_CONTROL": "true", "LIBVGPU_LIBRARY": self.libvgpu_path,
                        "LD_PRELOAD": preload_first(self.libvgpu_path, env.get("LD_PRELOAD"))})
            env.update(self.gpu_profile.slice.to_env())
            if self.region_path:
                env["CUDA_DEVICE_MEMORY_SHARED_CACHE"] = self.region_path
            if self.arbiter_socket:
                env["LIBVGPU_ARBITER_SOCKET"] = self.arbiter_socket
        return env

    @property
    def arbiter_socket(self) -> str:
        """The arbiter's socket as GPU pods see it; "" when it is off."""
        return f"{self.arbiter_socket_dir.rstrip('/')}/{ARBITER_SOCKET_NAME}" if self.arbiter_socket_dir else ""

    def gpu_resources(self, size: Slice) -> dict[str, str]:
        """HAMi limits of a slice, under this cluster's resource names."""
        return {self.resource_names.get(key.split("/", 1)[1], key): value
                for key, value in size.to_pod_resources().items()}

    def gpu_annotations(self, profile: GpuProfile) -> dict[str, str]:
        annotations = {GPU_POLICY: profile.policy}
        if profile.gpu_types:
            annotations[USE_GPUTYPE] = ",".join(profile.gpu_types)
        if profile.avoid_gpu_types:
            annotations[NOUSE_GPUTYPE] = ",".join(profile.avoid_gpu_types)
        if self.node_scheduler_policy:
            annotations[NODE_POLICY] = self.node_scheduler_policy
        return annotations

    async def get_pod_manifest(self):  # type: ignore[no-untyped-def]
        pod = await super().get_pod_manifest()
        if self.gpu_profile is None:
            return pod
        limits = self.gpu_resources(self.gpu_profile.slice)
        container = next(c for c in pod.spec.containers if c.name == "notebook")
        container.resources.limits = {**(container.resources.limits or {}), **limits}
        requests = container.resources.requests or {}
        container.resources.requests = {k: v for k, v in requests.items() if k not in limits}
        pod.metadata.annotations = {**(pod.metadata.annotations or {}),
                                    **self.gpu_annotations(self.gpu_profile)}
        if self.gpu_scheduler_name:
            pod.spec.scheduler_name = self.gpu_scheduler_name
        if self.interceptor == "bundled" and self.arbiter_socket_dir:
            pod.spec.volumes = [*(pod.spec.volumes or []), V1Volume(
                name=ARBITER_VOLUME, host_path=V1HostPathVolumeSource(path=self.arbiter_socket_dir,
                                                                      type="Directory"))]
            container.volume_mounts = [*(container.volume_mounts or []), V1VolumeMount(
                name=ARBITER_VOLUME, mount_path=self.arbiter_socket_dir, read_only=True)]
        if self.interceptor == "bundled" and self.slice_file:
            pod.metadata.annotations[SLICE_ANNOTATION] = slice_file_text(self.gpu_profile.slice,
                                                                         self.region_path, self.arbiter_socket)
            pod.spec.volumes = [*(pod.spec.volumes or []), V1Volume(
                name=SLICE_VOLUME, downward_api=V1DownwardAPIVolumeSource(default_mode=0o444, items=[
                    V1DownwardAPIVolumeFile(path=SLICE_FILE_NAME, field_ref=V1ObjectFieldSelector(
                        field_path=f"metadata.annotations['{SLICE_ANNOTATION}']"))]))]
            container.volume_mounts = [*(container.volume_mounts or []), V1VolumeMount(
                name=SLICE_VOLUME, mount_path=SLICE_FILE_DIR, read_only=True)]
        return pod

    # ---- state and progress --------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.gpu_profile is not None:
            state["hami_gpu"] = {"profile": self.gpu_profile.name,
                                 "resources": self.gpu_profile.slice.to_pod_resources()}
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        saved = state.get("hami_gpu")
        if saved:
            size = Slice.from_pod_resources(saved["resources"])
            self.gpu_profile = GpuProfile(name=saved["profile"], display_name=saved["profile"],
                                          description=size.describe(), slice=size)

    def clear_state(self) -> None:
        super().clear_state()
        self.gpu_profile = None

    async def progress(self):  # type: ignore[no-untyped-def]
        """KubeSpawner's events, each with a plain sentence (raw text kept as detail)."""
        async for event in super().progress():
            yield translate_progress(event)
