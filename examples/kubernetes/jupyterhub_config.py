# JupyterHub on Kubernetes with HAMi: users pick a GPU slice, HAMi places it,
# libvgpu (from hami-jupyter, installed in the single-user image) enforces it.
#
# Works as a plain jupyterhub_config.py, or pasted into z2jh's hub.extraConfig
# (see README.md here).  The hub needs `pip install 'hami-jupyter[kubernetes]'`.
c = get_config()  # noqa: F821

c.JupyterHub.spawner_class = "hami_spawner.kubernetes.HamiSpawner"

# The sizes users may choose.  memory and cores are per GPU; a profile without
# memory and cores is a whole GPU.  gpu_types / avoid_gpu_types are substrings
# of the card model HAMi reports (nvidia.com/use-gputype, nouse-gputype);
# policy is HAMi's per-GPU placement (binpack fills a card before the next).
c.GpuProfiles.profiles = [
    {"name": "small", "display_name": "Small GPU slice",
     "description": "4 GiB of VRAM and 25% of a GPU's compute: teaching, small models",
     "memory": "4GiB", "cores": 25, "default": True},
    {"name": "medium", "display_name": "Medium GPU slice",
     "description": "16 GiB of VRAM and half a GPU",
     "memory": "16GiB", "cores": 50, "avoid_gpu_types": ["T4"]},
    {"name": "a100-40", "display_name": "A100: 40 GiB",
     "description": "Half an A100 80GB, all its compute when free",
     "memory": "40GiB", "gpu_types": ["A100"], "groups": ["research"]},
    {"name": "h100-whole", "display_name": "A whole H100",
     "description": "One H100, unshared", "gpu_types": ["H100"],
     "policy": "spread", "groups": ["research"]},
    {"name": "two-gpus", "display_name": "Two whole GPUs",
     "description": "For multi-GPU training", "count": 2, "groups": ["research"]},
]
# A size of one's own, for the "power" group: 2-32 GiB in 2 GiB steps, 5-100% in 5% steps.
c.GpuProfiles.custom = {
    "memory_min": "2GiB", "memory_max": "32GiB", "memory_step": "2GiB",
    "cores_min": 5, "cores_max": 100, "cores_step": 5, "groups": ["power"],
}
c.GpuProfiles.max_gpu_servers_per_user = 1  # with named servers: one GPU server each
c.GpuProfiles.cpu_profile_name = "cpu"      # also offer a server without a GPU

# The library that enforces slices: ours (bundled) or HAMi's own (hami-core).
c.HamiSpawner.interceptor = "bundled"
# Where the single-user image has libvgpu.so (see README.md: one line in its Dockerfile).
c.HamiSpawner.libvgpu_path = "/usr/local/lib/hami-jupyter/libvgpu.so"
c.HamiSpawner.gpu_scheduler_name = "hami-scheduler"
c.HamiSpawner.node_scheduler_policy = "binpack"  # fill GPU nodes one by one
# GPU servers run an image with hami-jupyter inside (build it with the Dockerfile in
# README.md and push it; this name is a placeholder that fails to pull until you do).
# The CPU choice keeps c.KubeSpawner.image.
GPU_IMAGE = "registry.example.org/jupyter/pytorch-notebook-hami:cuda12-python-3.12"
c.HamiSpawner.kubespawner_overrides = {
    name: {"image": GPU_IMAGE}
    for name in ("small", "medium", "a100-40", "h100-whole", "two-gpus", "custom")
}

c.KubeSpawner.image = "quay.io/jupyter/scipy-notebook:python-3.12"
c.KubeSpawner.cpu_limit = 4
c.KubeSpawner.mem_limit = "16G"
c.KubeSpawner.start_timeout = 600  # a first pull of a CUDA image is slow
