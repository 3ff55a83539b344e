/*
 * The part of the CUDA driver API and NVML that libvgpu touches, declared here
 * so that neither libvgpu nor its test double needs a CUDA toolkit to build.
 *
 * Every layout and constant below mirrors the public ABI of libcuda.so.1 and
 * libnvidia-ml.so.1 (CUDA 12 and 13). Only what is used is declared; adding a
 * hook means adding its prototype here first.
 */
#ifndef VGPU_DRIVER_ABI_H
#define VGPU_DRIVER_ABI_H

#include <stddef.h>
#include <stdint.h>

/* ---- CUDA driver ------------------------------------------------------- */

typedef int CUresult;
enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_DEINITIALIZED = 4,
    CUDA_ERROR_NO_DEVICE = 100,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_UNKNOWN = 999,
};

typedef int CUdevice;
typedef unsigned long long CUdeviceptr;      /* the _v2 (64-bit) pointer */
typedef unsigned int CUdeviceptr_v1;         /* legacy 32-bit ABI */
typedef unsigned long long cuuint64_t;
typedef unsigned long long CUmemGenericAllocationHandle;

typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef struct CUfunc_st *CUfunction;
typedef struct CUarray_st *CUarray;
typedef struct CUmipmappedArray_st *CUmipmappedArray;
typedef struct CUmemPoolHandle_st *CUmemoryPool;
typedef struct CUgraphExec_st *CUgraphExec;

typedef struct CUuuid_st {
    unsigned char bytes[16];
} CUuuid;

/* cuGetProcAddress flags and query result */
enum {
    CU_GET_PROC_ADDRESS_DEFAULT = 0,
    CU_GET_PROC_ADDRESS_LEGACY_STREAM = 1,
    CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM = 2,
};
typedef int CUdriverProcAddressQueryResult;
enum {
    CU_GET_PROC_ADDRESS_SUCCESS = 0,
    CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND = 1,
    CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT = 2,
};

/* Arrays */
typedef int CUarray_format;
enum {
    CU_AD_FORMAT_UNSIGNED_INT8 = 0x01,
    CU_AD_FORMAT_UNSIGNED_INT16 = 0x02,
    CU_AD_FORMAT_UNSIGNED_INT32 = 0x03,
    CU_AD_FORMAT_SIGNED_INT8 = 0x08,
    CU_AD_FORMAT_SIGNED_INT16 = 0x09,
    CU_AD_FORMAT_SIGNED_INT32 = 0x0a,
    CU_AD_FORMAT_HALF = 0x10,
    CU_AD_FORMAT_FLOAT = 0x20,
};

typedef struct CUDA_ARRAY_DESCRIPTOR_st {
    size_t Width;
    size_t Height;
    CUarray_format Format;
    unsigned int NumChannels;
} CUDA_ARRAY_DESCRIPTOR;

typedef struct CUDA_ARRAY3D_DESCRIPTOR_st {
    size_t Width;
    size_t Height;
    size_t Depth;
    CUarray_format Format;
    unsigned int NumChannels;
    unsigned int Flags;
} CUDA_ARRAY3D_DESCRIPTOR;

enum {
    CUDA_ARRAY3D_LAYERED = 0x01,
    CUDA_ARRAY3D_CUBEMAP = 0x04,
};

/* Virtual memory management (cuMemCreate) */
typedef int CUmemLocationType;
enum {
    CU_MEM_LOCATION_TYPE_INVALID = 0,
    CU_MEM_LOCATION_TYPE_DEVICE = 1,
    CU_MEM_LOCATION_TYPE_HOST = 2,
    CU_MEM_LOCATION_TYPE_HOST_NUMA = 3,
    CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT = 4,
};

typedef struct CUmemLocation_st {
    CUmemLocationType type;
    int id;
} CUmemLocation;

typedef struct CUmemAllocationProp_st {
    int type;                   /* CUmemAllocationType */
    int requestedHandleTypes;   /* CUmemAllocationHandleType */
    CUmemLocation location;
    void *win32HandleMetaData;
    struct {
        unsigned char compressionType;
        unsigned char gpuDirectRDMACapable;
        unsigned short usage;
        unsigned char reserved[4];
    } allocFlags;
} CUmemAllocationProp;

typedef struct CUevent_st *CUevent;
enum {
    CUDA_ERROR_NOT_READY = 600,
    CU_EVENT_DISABLE_TIMING = 0x2,
    CU_STREAM_CAPTURE_STATUS_NONE = 0,
};
typedef int CUstreamCaptureStatus;

/* cuLaunchKernelEx's configuration: libvgpu reads only the stream. */
typedef struct CUlaunchAttribute_st CUlaunchAttribute;
typedef struct CUlaunchConfig_st {
    unsigned int gridDimX, gridDimY, gridDimZ;
    unsigned int blockDimX, blockDimY, blockDimZ;
    unsigned int sharedMemBytes;
    CUstream hStream;
    CUlaunchAttribute *attrs;
    unsigned int numAttrs;
} CUlaunchConfig;

/* Opaque to libvgpu: only passed through. */
typedef struct CUexecAffinityParam_st CUexecAffinityParam;
typedef struct CUctxCreateParams_st CUctxCreateParams;

/* ---- NVML --------------------------------------------------------------- */

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_UNKNOWN = 999,
};

typedef struct nvmlDevice_st *nvmlDevice_t;

typedef struct nvmlMemory_st {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct nvmlMemory_v2_st {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

#define NVML_STRUCT_VERSION(size, ver) ((unsigned int)(size) | ((unsigned int)(ver) << 24U))
#define nvmlMemory_v2 NVML_STRUCT_VERSION(sizeof(nvmlMemory_v2_t), 2)

typedef struct nvmlProcessInfo_st {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

typedef struct nvmlProcessUtilizationSample_st {
    unsigned int pid;
    unsigned long long timeStamp; /* CPU time of the sample, microseconds */
    unsigned int smUtil;          /* percent of the period the process had SMs busy */
    unsigned int memUtil;
    unsigned int encUtil;
    unsigned int decUtil;
} nvmlProcessUtilizationSample_t;

#define NVML_DEVICE_UUID_V2_BUFFER_SIZE 96

/* ---- Prototypes --------------------------------------------------------- */

/* The X-macro lists below are the single list of driver entry points libvgpu
 * wraps. VGPU_CUDA_HOOKS(X) expands X(name, params, args) once per symbol,
 * VGPU_NVML_HOOKS likewise. Each versioned symbol is listed on its own, with
 * its own ABI: routing never substitutes one version for another. */
#define VGPU_CUDA_HOOKS(X)                                                                 \
    X(cuInit, (unsigned int flags), (flags))                                               \
    X(cuGetProcAddress, (const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags), \
      (symbol, pfn, cudaVersion, flags))                                                   \
    X(cuGetProcAddress_v2,                                                                 \
      (const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,                  \
       CUdriverProcAddressQueryResult *symbolStatus),                                      \
      (symbol, pfn, cudaVersion, flags, symbolStatus))                                     \
    /* contexts */                                                                         \
    X(cuDevicePrimaryCtxRetain, (CUcontext * pctx, CUdevice dev), (pctx, dev))             \
    X(cuDevicePrimaryCtxRelease, (CUdevice dev), (dev))                                    \
    X(cuDevicePrimaryCtxRelease_v2, (CUdevice dev), (dev))                                 \
    X(cuDevicePrimaryCtxReset, (CUdevice dev), (dev))                                      \
    X(cuDevicePrimaryCtxReset_v2, (CUdevice dev), (dev))                                   \
    X(cuCtxCreate, (CUcontext * pctx, unsigned int flags, CUdevice dev), (pctx, flags, dev)) \
    X(cuCtxCreate_v2, (CUcontext * pctx, unsigned int flags, CUdevice dev), (pctx, flags, dev)) \
    X(cuCtxCreate_v3,                                                                      \
      (CUcontext * pctx, CUexecAffinityParam * params, int numParams, unsigned int flags,  \
       CUdevice dev),                                                                      \
      (pctx, params, numParams, flags, dev))                                               \
    X(cuCtxCreate_v4,                                                                      \
      (CUcontext * pctx, CUctxCreateParams * params, unsigned int flags, CUdevice dev),    \
      (pctx, params, flags, dev))                                                          \
    X(cuCtxDestroy, (CUcontext ctx), (ctx))                                                \
    X(cuCtxDestroy_v2, (CUcontext ctx), (ctx))                                             \
    /* linear memory */                                                                    \
    X(cuMemAlloc, (CUdeviceptr_v1 * dptr, unsigned int bytesize), (dptr, bytesize))        \
    X(cuMemAlloc_v2, (CUdeviceptr * dptr, size_t bytesize), (dptr, bytesize))              \
    X(cuMemAllocPitch,                                                                     \
      (CUdeviceptr_v1 * dptr, unsigned int *pPitch, unsigned int width, unsigned int height, \
       unsigned int elementSize),                                                          \
      (dptr, pPitch, width, height, elementSize))                                          \
    X(cuMemAllocPitch_v2,                                                                  \
      (CUdeviceptr * dptr, size_t *pPitch, size_t width, size_t height,                    \
       unsigned int elementSize),                                                          \
      (dptr, pPitch, width, height, elementSize))                                          \
    X(cuMemAllocManaged, (CUdeviceptr * dptr, size_t bytesize, unsigned int flags),        \
      (dptr, bytesize, flags))                                                             \
    X(cuMemFree, (CUdeviceptr_v1 dptr), (dptr))                                            \
    X(cuMemFree_v2, (CUdeviceptr dptr), (dptr))                                            \
    /* stream-ordered memory */                                                            \
    X(cuMemAllocAsync, (CUdeviceptr * dptr, size_t bytesize, CUstream stream),             \
      (dptr, bytesize, stream))                                                            \
    X(cuMemAllocAsync_ptsz, (CUdeviceptr * dptr, size_t bytesize, CUstream stream),        \
      (dptr, bytesize, stream))                                                            \
    X(cuMemAllocFromPoolAsync,                                                             \
      (CUdeviceptr * dptr, size_t bytesize, CUmemoryPool pool, CUstream stream),           \
      (dptr, bytesize, pool, stream))                                                      \
    X(cuMemAllocFromPoolAsync_ptsz,                                                        \
      (CUdeviceptr * dptr, size_t bytesize, CUmemoryPool pool, CUstream stream),           \
      (dptr, bytesize, pool, stream))                                                      \
    X(cuMemFreeAsync, (CUdeviceptr dptr, CUstream stream), (dptr, stream))                 \
    X(cuMemFreeAsync_ptsz, (CUdeviceptr dptr, CUstream stream), (dptr, stream))            \
    /* arrays */                                                                           \
    X(cuArrayCreate, (CUarray * arr, const void *desc_v1), (arr, desc_v1))                 \
    X(cuArrayCreate_v2, (CUarray * arr, const CUDA_ARRAY_DESCRIPTOR *desc), (arr, desc))   \
    X(cuArray3DCreate, (CUarray * arr, const void *desc_v1), (arr, desc_v1))               \
    X(cuArray3DCreate_v2, (CUarray * arr, const CUDA_ARRAY3D_DESCRIPTOR *desc), (arr, desc)) \
    X(cuArrayDestroy, (CUarray arr), (arr))                                                \
    X(cuMipmappedArrayCreate,                                                              \
      (CUmipmappedArray * arr, const CUDA_ARRAY3D_DESCRIPTOR *desc, unsigned int levels),  \
      (arr, desc, levels))                                                                 \
    X(cuMipmappedArrayDestroy, (CUmipmappedArray arr), (arr))                              \
    /* virtual memory management */                                                        \
    X(cuMemCreate,                                                                         \
      (CUmemGenericAllocationHandle * handle, size_t size, const CUmemAllocationProp *prop, \
       unsigned long long flags),                                                          \
      (handle, size, prop, flags))                                                         \
    X(cuMemRelease, (CUmemGenericAllocationHandle handle), (handle))                       \
    /* what programs are told */                                                           \
    X(cuMemGetInfo, (unsigned int *free_bytes, unsigned int *total_bytes),                 \
      (free_bytes, total_bytes))                                                           \
    X(cuMemGetInfo_v2, (size_t *free_bytes, size_t *total_bytes), (free_bytes, total_bytes)) \
    X(cuDeviceTotalMem, (unsigned int *bytes, CUdevice dev), (bytes, dev))                 \
    X(cuDeviceTotalMem_v2, (size_t *bytes, CUdevice dev), (bytes, dev))                    \
    /* launches */                                                                         \
    X(cuLaunchKernel,                                                                      \
      (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,   \
       unsigned int by, unsigned int bz, unsigned int shmem, CUstream stream, void **params, \
       void **extra),                                                                      \
      (f, gx, gy, gz, bx, by, bz, shmem, stream, params, extra))                           \
    X(cuLaunchKernel_ptsz,                                                                 \
      (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,   \
       unsigned int by, unsigned int bz, unsigned int shmem, CUstream stream, void **params, \
       void **extra),                                                                      \
      (f, gx, gy, gz, bx, by, bz, shmem, stream, params, extra))                           \
    X(cuLaunchKernelEx,                                                                    \
      (const CUlaunchConfig *config, CUfunction f, void **params, void **extra),           \
      (config, f, params, extra))                                                          \
    X(cuLaunchKernelEx_ptsz,                                                               \
      (const CUlaunchConfig *config, CUfunction f, void **params, void **extra),           \
      (config, f, params, extra))                                                          \
    X(cuLaunchCooperativeKernel,                                                           \
      (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,   \
       unsigned int by, unsigned int bz, unsigned int shmem, CUstream stream, void **params), \
      (f, gx, gy, gz, bx, by, bz, shmem, stream, params))                                  \
    X(cuLaunchCooperativeKernel_ptsz,                                                      \
      (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,   \
       unsigned int by, unsigned int bz, unsigned int shmem, CUstream stream, void **params), \
      (f, gx, gy, gz, bx, by, bz, shmem, stream, params))                                  \
    X(cuGraphLaunch, (CUgraphExec exec, CUstream stream), (exec, stream))                  \
    X(cuGraphLaunch_ptsz, (CUgraphExec exec, CUstream stream), (exec, stream))

#define VGPU_NVML_HOOKS(X)                                                                 \
    X(nvmlDeviceGetMemoryInfo, (nvmlDevice_t device, nvmlMemory_t * memory), (device, memory)) \
    X(nvmlDeviceGetMemoryInfo_v2, (nvmlDevice_t device, nvmlMemory_v2_t * memory),         \
      (device, memory))

/* Driver entry points libvgpu calls but does not wrap. */
#define VGPU_CUDA_HELPERS(X)                                                               \
    X(cuDeviceGetCount, (int *count), (count))                                             \
    X(cuDeviceGet, (CUdevice * dev, int ordinal), (dev, ordinal))                          \
    X(cuDeviceGetUuid, (CUuuid * uuid, CUdevice dev), (uuid, dev))                         \
    X(cuDeviceGetUuid_v2, (CUuuid * uuid, CUdevice dev), (uuid, dev))                      \
    X(cuCtxGetDevice, (CUdevice * dev), (dev))                                             \
    X(cuCtxSynchronize, (void), ())                                                        \
    X(cuEventCreate, (CUevent * event, unsigned int flags), (event, flags))                \
    X(cuEventDestroy_v2, (CUevent event), (event))                                         \
    X(cuEventRecord, (CUevent event, CUstream stream), (event, stream))                    \
    X(cuEventRecord_ptsz, (CUevent event, CUstream stream), (event, stream))               \
    X(cuEventQuery, (CUevent event), (event))                                              \
    X(cuEventSynchronize, (CUevent event), (event))                                        \
    X(cuEventElapsedTime, (float *ms, CUevent start, CUevent end), (ms, start, end))       \
    X(cuStreamIsCapturing, (CUstream stream, CUstreamCaptureStatus * status), (stream, status)) \
    X(cuStreamIsCapturing_ptsz, (CUstream stream, CUstreamCaptureStatus * status), (stream, status))

#define VGPU_NVML_HELPERS(X)                                                               \
    X(nvmlInit_v2, (void), ())                                                             \
    X(nvmlDeviceGetHandleByUUID, (const char *uuid, nvmlDevice_t *device), (uuid, device)) \
    X(nvmlDeviceGetUUID, (nvmlDevice_t device, char *uuid, unsigned int length),           \
      (device, uuid, length))                                                              \
    X(nvmlDeviceGetComputeRunningProcesses_v3,                                             \
      (nvmlDevice_t device, unsigned int *count, nvmlProcessInfo_t *infos),                \
      (device, count, infos))                                                              \
    X(nvmlDeviceGetTotalEnergyConsumption, (nvmlDevice_t device, unsigned long long *mj),  \
      (device, mj))                                                                        \
    X(nvmlDeviceGetEnforcedPowerLimit, (nvmlDevice_t device, unsigned int *mw), (device, mw)) \
    X(nvmlDeviceGetPowerUsage, (nvmlDevice_t device, unsigned int *mw), (device, mw))   \
    X(nvmlDeviceGetProcessUtilization,                                                     \
      (nvmlDevice_t device, nvmlProcessUtilizationSample_t *samples, unsigned int *count,  \
       unsigned long long last_seen_us),                                                   \
      (device, samples, count, last_seen_us))

/* Function-pointer types, one per entry point: cu_fn_cuMemAlloc_v2 and so on. */
#define VGPU_DECLARE_CU_TYPE(name, params, args) typedef CUresult(*cu_fn_##name) params;
#define VGPU_DECLARE_NVML_TYPE(name, params, args) typedef nvmlReturn_t(*cu_fn_##name) params;
VGPU_CUDA_HOOKS(VGPU_DECLARE_CU_TYPE)
VGPU_CUDA_HELPERS(VGPU_DECLARE_CU_TYPE)
VGPU_NVML_HOOKS(VGPU_DECLARE_NVML_TYPE)
VGPU_NVML_HELPERS(VGPU_DECLARE_NVML_TYPE)
#undef VGPU_DECLARE_CU_TYPE
#undef VGPU_DECLARE_NVML_TYPE

#endif
