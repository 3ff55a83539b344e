/*
 * The real driver: libcuda.so.1 and libnvidia-ml.so.1, opened with dlopen at
 * run time (libvgpu never links against them), and the entry points libvgpu
 * forwards to. A missing entry point stays NULL.
 */
#ifndef VGPU_REAL_DRIVER_H
#define VGPU_REAL_DRIVER_H

#include "driver_abi.h"

struct vgpu_real {
#define VGPU_REAL_SLOT(name, params, args) cu_fn_##name name;
    VGPU_CUDA_HOOKS(VGPU_REAL_SLOT)
    VGPU_CUDA_HELPERS(VGPU_REAL_SLOT)
    VGPU_NVML_HOOKS(VGPU_REAL_SLOT)
    VGPU_NVML_HELPERS(VGPU_REAL_SLOT)
#undef VGPU_REAL_SLOT
};

extern struct vgpu_real vgpu_real;

/* Both return 0 once the library is open and its entry points resolved. */
int vgpu_real_cuda_load(void);
int vgpu_real_nvml_load(void);

/* NVML's handle of the GPU with this CUDA UUID; 0 on success, -1 when NVML
 * is missing or does not know the GPU. */
int vgpu_real_nvml_device(const unsigned char uuid[16], nvmlDevice_t *dev);

/* libc's own dlsym, which the dlsym override forwards to. */
void *vgpu_libc_dlsym(void *handle, const char *name);

#endif
