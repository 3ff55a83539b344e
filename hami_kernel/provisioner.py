"""The kernel provisioner: kernels started from a GPU kernelspec run in their slice.

A kernelspec names it in its metadata::

    "kernel_provisioner": {"provisioner_name": "hami-provisioner",
                           "config": {"memory": "4GiB", "cores": 25}}

It launches the kernel as jupyter_client's local provisioner does, with
libvgpu first on LD_PRELOAD, the server's slice (HAMi's variables, set by
Kubernetes or by the single-machine spawner) passed on, the kernel id as the
process's identity in the shared region, and the kernelspec's sub-slice as
the kernel's own cap inside that slice. ``hami-kernel install`` writes such
kernelspecs.
"""
from __future__ import annotations

import os
from typing import Any

from jupyter_client.provisioning import LocalProvisioner
from traitlets import Bool, Integer, Unicode

from . import LibraryNotFound, library_path, preload_first
from .kernel_slice import CPU_ONLY, IDENTITY_ENV, PROCESS_CORES_ENV, PROCESS_MEMORY_ENV, REGION_ENV, SubSlice, \
    SubSliceError, cpu_only, region_path, server_limits

MAGIC_ARGUMENT = "--InteractiveShellApp.extra_extensions=hami_kernel"


class HamiProvisioner(LocalProvisioner):  # type: ignore[misc]
    """Starts a local kernel under libvgpu, inside the server's GPU slice."""

    memory = Unicode("", config=True, help="""The kernel's own VRAM cap on each GPU, such as "4GiB";
        empty for as much as the server's slice allows.""")

    cores = Integer(0, config=True, help="""The kernel's own compute share in percent of each GPU
        (1-100); 0 for as much as the server's slice allows.""")

    load_magic = Bool(True, config=True, help="""Load the %vgpu magic into Python kernels at start.""")

    def sub_slice(self) -> SubSlice:
        return SubSlice.parse(self.memory, self.cores)

    def slice_env(self, env: dict[str, str]) -> dict[str, str]:
        """The variables this kernel gets on top of ``env`` (the server's).

        A CPU-only server's kernels get none: there is no GPU to limit (and
        ``%vgpu`` says so), but a GPU kernelspec is refused there.
        """
        sub = self.sub_slice()
        if cpu_only(env):
            if sub.memory is not None or sub.cores is not None:
                raise SubSliceError(f"this kernel asks for a GPU slice ({sub.describe()}), but {CPU_ONLY}")
            return {}
        sub.check_within(server_limits(env))
        try:
            library = str(library_path())
        except LibraryNotFound as exc:
            # Starting the kernel without it would start it with no limits at all.
            raise RuntimeError(f"cannot start a GPU kernel: {exc}") from None
        out = {
            "LD_PRELOAD": preload_first(library, env.get("LD_PRELOAD")),
            REGION_ENV: region_path(env),
            IDENTITY_ENV: self.kernel_id or "",
        }
        out.update(sub.to_env())
        return out

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        # Refused before anything is written (connection file, ports), with a
        # message JupyterLab shows in its "Error Starting Kernel" dialog. The
        # env is composed again below, from the final env: the kernelspec's own
        # env (an LD_PRELOAD of its own, say) is only applied by super().
        self.slice_env(dict(kwargs.get("env", os.environ)))
        kwargs = await super().pre_launch(**kwargs)
        env = kwargs["env"]  # already the kernel's own copy: the server's env is untouched
        for stale in (PROCESS_MEMORY_ENV, PROCESS_CORES_ENV):
            env.pop(stale, None)  # only this kernelspec's sub-slice applies
        env.update(self.slice_env(env))
        cmd = kwargs.get("cmd")
        if self.load_magic and cmd and self._is_ipython_kernel(cmd) and MAGIC_ARGUMENT not in cmd:
            kwargs["cmd"] = [*cmd, MAGIC_ARGUMENT]
        if cpu_only(env):
            self.log.info("kernel %s: this server has no GPU, so it runs without libvgpu", self.kernel_id)
        else:
            self.log.info("GPU kernel %s: %s, region %s", self.kernel_id, self.sub_slice().describe(),
                          env[REGION_ENV])
        return kwargs

    def _is_ipython_kernel(self, cmd: list[str]) -> bool:
        return "ipykernel_launcher" in " ".join(cmd) or "ipykernel" in cmd
