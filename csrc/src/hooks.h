/*
 * Hook routing: the one table of wrapped entry points, built from the
 * X-macro lists in driver_abi.h, and the ways a program can reach them:
 * linking (the wrappers are exported under the driver's names), dlsym, and
 * cuGetProcAddress.
 */
#ifndef VGPU_HOOKS_H
#define VGPU_HOOKS_H

#include "driver_abi.h"

#define VGPU_EXPORT __attribute__((visibility("default")))

/* Prototypes of the wrappers, exported under the driver's own names. */
#define VGPU_DECLARE_CU_WRAPPER(name, params, args) VGPU_EXPORT CUresult name params;
#define VGPU_DECLARE_NVML_WRAPPER(name, params, args) VGPU_EXPORT nvmlReturn_t name params;
VGPU_CUDA_HOOKS(VGPU_DECLARE_CU_WRAPPER)
VGPU_NVML_HOOKS(VGPU_DECLARE_NVML_WRAPPER)
#undef VGPU_DECLARE_CU_WRAPPER
#undef VGPU_DECLARE_NVML_WRAPPER

/* The wrapper standing in for a real entry point the driver handed out, or
 * NULL if that entry point is not wrapped. */
void *vgpu_wrapper_for_real(const void *real);

/* The wrapper exported under a name, or NULL. */
void *vgpu_wrapper_for_name(const char *name);

/* 1 if some version of this base name ("cuMemAlloc") is wrapped. */
int vgpu_base_name_wrapped(const char *base);

#endif
