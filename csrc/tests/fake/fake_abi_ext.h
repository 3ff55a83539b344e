/*
 * What the fake driver needs beyond ../../src/driver_abi.h.
 *
 * driver_abi.h declares the types and the X-macro lists of entry points but
 * no prototypes, and only the constants libvgpu itself uses. This header adds
 * (1) prototypes for every entry point in those lists, (2) the few extra
 * driver/NVML entry points the fake exports so that programs can get a
 * context, a pool or a device handle, and (3) the constants those need.
 * Values mirror the public CUDA 12/13 and NVML headers.
 */
#ifndef FAKE_ABI_EXT_H
#define FAKE_ABI_EXT_H

#include "driver_abi.h"

/* The libraries are built with -fvisibility=hidden; only what is declared
 * with FAKE_EXPORT is part of the fake's ABI. */
#define FAKE_EXPORT __attribute__((visibility("default")))

/* ---- extra constants ---------------------------------------------------- */

enum {
    CU_MEM_ATTACH_GLOBAL = 0x1, /* cuMemAllocManaged flags */
    CU_MEM_ATTACH_HOST = 0x2,
    CU_MEM_ALLOCATION_TYPE_PINNED = 0x1, /* CUmemAllocationProp.type */
    CU_EVENT_BLOCKING_SYNC = 0x1,        /* cuEventCreate flags, beside */
    CU_EVENT_INTERPROCESS = 0x4,         /* driver_abi.h's CU_EVENT_DISABLE_TIMING */
};

enum {
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
};

#define NVML_VALUE_NOT_AVAILABLE 0xFFFFFFFFu      /* gpu/compute instance id outside MIG */
#define NVML_DEVICE_UUID_BUFFER_SIZE 80
#define NVML_DEVICE_NAME_V2_BUFFER_SIZE 96

/* ---- prototypes of the entry points listed in driver_abi.h -------------- */

#define FAKE_DECLARE_CU(name, params, args) FAKE_EXPORT CUresult name params;
#define FAKE_DECLARE_NVML(name, params, args) FAKE_EXPORT nvmlReturn_t name params;
VGPU_CUDA_HOOKS(FAKE_DECLARE_CU)
VGPU_CUDA_HELPERS(FAKE_DECLARE_CU)
VGPU_NVML_HOOKS(FAKE_DECLARE_NVML)
VGPU_NVML_HELPERS(FAKE_DECLARE_NVML)
#undef FAKE_DECLARE_CU
#undef FAKE_DECLARE_NVML

/* ---- extra CUDA driver entry points (same ABI as the real ones) --------- */

FAKE_EXPORT CUresult cuDriverGetVersion(int *version);
FAKE_EXPORT CUresult cuGetErrorName(CUresult error, const char **str);
FAKE_EXPORT CUresult cuGetErrorString(CUresult error, const char **str);
FAKE_EXPORT CUresult cuDeviceGetName(char *name, int len, CUdevice dev);
FAKE_EXPORT CUresult cuCtxSetCurrent(CUcontext ctx);
FAKE_EXPORT CUresult cuCtxGetCurrent(CUcontext *pctx);
FAKE_EXPORT CUresult cuCtxPushCurrent_v2(CUcontext ctx);
FAKE_EXPORT CUresult cuCtxPopCurrent_v2(CUcontext *pctx);
/* props is a CUmemPoolProps in the real ABI; the fake ignores it. */
FAKE_EXPORT CUresult cuMemPoolCreate(CUmemoryPool *pool, const void *props);
FAKE_EXPORT CUresult cuMemPoolDestroy(CUmemoryPool pool);

/* ---- extra NVML entry points -------------------------------------------- */

FAKE_EXPORT nvmlReturn_t nvmlInit(void);
FAKE_EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags);
FAKE_EXPORT nvmlReturn_t nvmlShutdown(void);
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *count);
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count);
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device);
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device);
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device);
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index);
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length);
FAKE_EXPORT const char *nvmlErrorString(nvmlReturn_t result);

#endif
