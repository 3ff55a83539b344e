/*
 * The slice as root set it: where every process of a container must run
 * under libvgpu whatever its environment (Kubernetes: libvgpu in the
 * image's /etc/ld.so.preload), the slice's limits come from a file the user
 * cannot change, and the environment may only tighten them.
 *
 * The file (VGPU_TRUSTED_SLICE_FILE, /etc/hami-jupyter/slice unless built
 * otherwise) holds NAME=VALUE lines, '#' comments and blank lines, with the
 * names and languages of the environment: CUDA_DEVICE_MEMORY_LIMIT[_<i>],
 * CUDA_DEVICE_SM_LIMIT[_<i>], GPU_CORE_UTILIZATION_POLICY,
 * CUDA_DEVICE_MEMORY_SHARED_CACHE, LIBVGPU_ARBITER_DIR and
 * LIBVGPU_ARBITER_SOCKET (the arbiter daemon, vgpu_arbd.h). On Kubernetes it
 * is the pod's annotation written by the kubelet (a downward-API file). It
 * must be a regular file owned by root that nobody else may write; links
 * are followed (the kubelet's files are links), since only root can make
 * them in a root-owned directory.
 *
 * It is read at a process's first CUDA or NVML call, never at load, so
 * processes that never touch CUDA (shells, ls, the server) pay nothing.
 */
#ifndef VGPU_TRUSTED_H
#define VGPU_TRUSTED_H

#include <stddef.h>
#include <stdint.h>

#include "vgpu_region.h"

#ifndef VGPU_TRUSTED_SLICE_FILE
#define VGPU_TRUSTED_SLICE_FILE "/etc/hami-jupyter/slice"
#endif

struct vgpu_trusted {
    uint64_t memory_limit[VGPU_MAX_DEVICES]; /* VGPU_UNLIMITED: none */
    uint32_t sm_limit[VGPU_MAX_DEVICES];     /* 0: none */
    int policy;                              /* -1: not set, else enum vgpu_policy */
    char region_path[4096];                  /* "": not set */
    char arbiter_dir[4096];                  /* "": not set */
    char arbiter_socket[108];                /* "": not set (the trusted arbiter daemon's socket) */
};

/* Reads the file at path. Returns 1 if it was read, 0 if there is none,
 * -1 (with a one-line reason in err) if it exists but cannot be trusted or
 * read: the caller fails closed. */
int vgpu_trusted_read(const char *path, struct vgpu_trusted *t, char *err, size_t errlen);

#endif
