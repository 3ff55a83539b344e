/*
 * Contexts occupy the GPU too (hundreds of MiB on recent GPUs), so each one
 * is charged to the slice and shows as used.
 *
 * What one context costs is measured once per GPU and slice: right after the
 * first context is created, NVML reports this process's real usage on the
 * GPU, and the difference to what libvgpu has charged is the context. The
 * result is kept in the region so later processes (and many starting at
 * once) pay no measurement. LIBVGPU_CONTEXT_SIZE overrides it.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "alloc_map.h"
#include "config.h"
#include "hooks.h"
#include "limiter.h"
#include "log.h"
#include "real_driver.h"
#include "runtime.h"

/* Used when nothing can be measured (NVML missing, or the process is in a PID
 * namespace NVML does not see into): about what a CUDA 12/13 context with
 * lazy module loading takes on a Hopper GPU. */
#define VGPU_FALLBACK_CONTEXT_SIZE (384ull << 20)

static pthread_mutex_t g_primary_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_primary_refs[VGPU_MAX_DEVICES];
static uint64_t g_primary_bytes[VGPU_MAX_DEVICES];

void vgpu_context_reset_after_fork(void)
{
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    g_primary_lock = fresh;
    memset(g_primary_refs, 0, sizeof g_primary_refs);
    memset(g_primary_bytes, 0, sizeof g_primary_bytes);
}

/* This process's real usage on a GPU according to NVML, or 0 if unknown. */
static uint64_t nvml_process_usage(int ordinal)
{
    nvmlDevice_t dev;
    if (vgpu_real_nvml_device(vgpu_rt.uuid_of_ordinal[ordinal], &dev) != 0 ||
        !vgpu_real.nvmlDeviceGetComputeRunningProcesses_v3)
        return 0;
    nvmlProcessInfo_t infos[64];
    unsigned int count = 64;
    if (vgpu_real.nvmlDeviceGetComputeRunningProcesses_v3(dev, &count, infos) != NVML_SUCCESS)
        return 0;
    for (unsigned int i = 0; i < count && i < 64; i++)
        if (infos[i].pid == (unsigned int)getpid())
            return infos[i].usedGpuMemory;
    return 0;
}

/* Once this process has a context, the driver lists it: under our own pid,
 * or (in a PID namespace) under one we cannot know. Only a pid the driver
 * is known to use lets a reclaimer wait for exactly this process's memory
 * to be freed (vgpu_region.h). */
static void note_driver_pid(int ordinal)
{
    struct vgpu_proc *me = &vgpu_rt.region.map->procs[vgpu_rt.region.slot];
    if (atomic_load(&me->driver_pid) == 0 && nvml_process_usage(ordinal) > 0)
        atomic_store(&me->driver_pid, (int32_t)getpid());
}

/* A context's size if already known (configured, or measured by an earlier
 * process of the slice), else 0. */
static uint64_t known_context_size(int entry)
{
    const struct vgpu_config *cfg = vgpu_config();
    if (cfg->context_size)
        return cfg->context_size;
    return atomic_load(&vgpu_rt.region.map->devices[entry].context_size);
}

/* Measures a context that has just been created, and records it for the
 * slice. Falls back to an estimate when NVML cannot see this process. */
static uint64_t measure_context_size(int ordinal, int entry, uint64_t provisional)
{
    struct vgpu_device *d = &vgpu_rt.region.map->devices[entry];
    /* What libvgpu had charged before this context (its own charge aside). */
    uint64_t charged = atomic_load(&vgpu_rt.region.map->procs[vgpu_rt.region.slot].used[entry]) - provisional;
    uint64_t usage = nvml_process_usage(ordinal);
    if (usage <= charged) {
        VGPU_INFO("GPU %d: cannot measure a context's size; charging %llu MiB", ordinal,
                  VGPU_FALLBACK_CONTEXT_SIZE >> 20);
        return VGPU_FALLBACK_CONTEXT_SIZE;
    }
    uint64_t zero = 0;
    atomic_compare_exchange_strong(&d->context_size, &zero, usage - charged);
    VGPU_DEBUG("GPU %d: a context takes %llu bytes", ordinal, (unsigned long long)(usage - charged));
    return atomic_load(&d->context_size);
}

/* Room left for this process on a device: under the slice and under its own cap. */
static uint64_t room(int entry)
{
    uint64_t free_bytes = UINT64_MAX, total = UINT64_MAX;
    vgpu_slice_view(entry, &free_bytes, &total);
    return free_bytes;
}

/* Creates a context through `create` with its memory charged to the slice
 * before the driver is asked, so that processes starting together cannot
 * overshoot the slice. A context of unknown size is charged an estimate
 * first (the fallback, or what room is left if less, but never under a
 * quarter of it) and settled to its measured size right after. */
static CUresult charged_create(int ordinal, int entry, CUresult (*create)(void *), void (*destroy)(void *),
                               void *arg, uint64_t *bytes)
{
    uint64_t known = known_context_size(entry);
    uint64_t charged = known;
    if (!known) {
        uint64_t left = room(entry);
        if (left < VGPU_FALLBACK_CONTEXT_SIZE / 4)
            return CUDA_ERROR_OUT_OF_MEMORY;
        charged = left < VGPU_FALLBACK_CONTEXT_SIZE ? left : VGPU_FALLBACK_CONTEXT_SIZE;
    }
    CUresult r = vgpu_charge(entry, charged);
    if (r != CUDA_SUCCESS)
        return r;
    r = create(arg);
    if (r != CUDA_SUCCESS) {
        vgpu_uncharge(entry, charged);
        return r;
    }
    note_driver_pid(ordinal);
    *bytes = known ? known : measure_context_size(ordinal, entry, charged);
    if (*bytes < charged) {
        vgpu_uncharge(entry, charged - *bytes);
    } else if (*bytes > charged && vgpu_charge(entry, *bytes - charged) != CUDA_SUCCESS) {
        destroy(arg); /* no room in the slice for the context itself */
        vgpu_uncharge(entry, charged);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    return CUDA_SUCCESS;
}

/* ---- primary contexts (what the CUDA runtime and PyTorch use) ----------- */

struct retain_args {
    CUcontext *pctx;
    CUdevice dev;
};

static CUresult retain_call(void *p)
{
    struct retain_args *a = p;
    return vgpu_real.cuDevicePrimaryCtxRetain(a->pctx, a->dev);
}

static void retain_undo(void *p)
{
    vgpu_real.cuDevicePrimaryCtxRelease_v2(((struct retain_args *)p)->dev);
}

CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    CUresult r = vgpu_ready();
    if (r != CUDA_SUCCESS)
        return r;
    int entry = vgpu_entry_of_ordinal(dev);
    if (entry < 0)
        return vgpu_real.cuDevicePrimaryCtxRetain(pctx, dev);
    pthread_mutex_lock(&g_primary_lock);
    if (g_primary_refs[dev] > 0) {
        /* Already alive in this process: only the driver's count moves. */
        r = vgpu_real.cuDevicePrimaryCtxRetain(pctx, dev);
        g_primary_refs[dev] += r == CUDA_SUCCESS;
    } else {
        struct retain_args a = {pctx, dev};
        r = charged_create(dev, entry, retain_call, retain_undo, &a, &g_primary_bytes[dev]);
        g_primary_refs[dev] = r == CUDA_SUCCESS;
        if (r == CUDA_SUCCESS)
            vgpu_limiter_device_active(entry);
    }
    pthread_mutex_unlock(&g_primary_lock);
    return r;
}

static void primary_dropped(CUdevice dev, int all)
{
    int entry = vgpu_entry_of_ordinal(dev);
    if (entry < 0 || g_primary_refs[dev] == 0)
        return;
    g_primary_refs[dev] = all ? 0 : g_primary_refs[dev] - 1;
    if (g_primary_refs[dev] == 0) {
        vgpu_uncharge(entry, g_primary_bytes[dev]);
        g_primary_bytes[dev] = 0;
    }
}

static CUresult primary_release(cu_fn_cuDevicePrimaryCtxRelease_v2 call, CUdevice dev, int all)
{
    if (!call)
        return CUDA_ERROR_NOT_SUPPORTED;
    pthread_mutex_lock(&g_primary_lock);
    CUresult r = call(dev);
    if (r == CUDA_SUCCESS && vgpu_is_ready())
        primary_dropped(dev, all);
    pthread_mutex_unlock(&g_primary_lock);
    return r;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev)
{
    return primary_release(vgpu_real.cuDevicePrimaryCtxRelease_v2, dev, 0);
}

CUresult cuDevicePrimaryCtxRelease(CUdevice dev)
{
    return primary_release(vgpu_real.cuDevicePrimaryCtxRelease, dev, 0);
}

CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev)
{
    return primary_release(vgpu_real.cuDevicePrimaryCtxReset_v2, dev, 1);
}

CUresult cuDevicePrimaryCtxReset(CUdevice dev)
{
    return primary_release(vgpu_real.cuDevicePrimaryCtxReset, dev, 1);
}

/* ---- contexts created explicitly ----------------------------------------- */

struct create_args {
    CUcontext *pctx;
    unsigned int flags;
    CUdevice dev;
    void *params;
    int num_params;
    int abi; /* 1, 2, 3 or 4: which cuCtxCreate */
};

static CUresult create_call(void *p)
{
    struct create_args *a = p;
    switch (a->abi) {
    case 1: return vgpu_real.cuCtxCreate(a->pctx, a->flags, a->dev);
    case 2: return vgpu_real.cuCtxCreate_v2(a->pctx, a->flags, a->dev);
    case 3: return vgpu_real.cuCtxCreate_v3(a->pctx, a->params, a->num_params, a->flags, a->dev);
    default: return vgpu_real.cuCtxCreate_v4(a->pctx, a->params, a->flags, a->dev);
    }
}

static void create_undo(void *p)
{
    struct create_args *a = p;
    vgpu_real.cuCtxDestroy_v2(*a->pctx);
    *a->pctx = NULL;
}

static CUresult create_context(struct create_args *a)
{
    CUresult r = vgpu_ready();
    if (r != CUDA_SUCCESS)
        return r;
    int entry = vgpu_entry_of_ordinal(a->dev);
    if (entry < 0)
        return create_call(a);
    uint64_t bytes = 0;
    r = charged_create(a->dev, entry, create_call, create_undo, a, &bytes);
    if (r == CUDA_SUCCESS)
        vgpu_limiter_device_active(entry);
    if (r == CUDA_SUCCESS && vgpu_alloc_put(VGPU_KIND_CONTEXT, (uint64_t)(uintptr_t)*a->pctx, bytes, entry) != 0)
        VGPU_WARN("out of host memory while recording a context; it stays charged");
    return r;
}

CUresult cuCtxCreate(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    struct create_args a = {pctx, flags, dev, NULL, 0, 1};
    return create_context(&a);
}

CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    struct create_args a = {pctx, flags, dev, NULL, 0, 2};
    return create_context(&a);
}

CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *params, int numParams, unsigned int flags,
                        CUdevice dev)
{
    struct create_args a = {pctx, flags, dev, params, numParams, 3};
    return create_context(&a);
}

CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *params, unsigned int flags, CUdevice dev)
{
    struct create_args a = {pctx, flags, dev, params, 0, 4};
    return create_context(&a);
}

static CUresult destroyed(CUresult r, CUcontext ctx, const struct vgpu_alloc *a, int had)
{
    if (!had)
        return r;
    if (r == CUDA_SUCCESS)
        vgpu_uncharge(a->device, a->bytes);
    else
        vgpu_alloc_put(VGPU_KIND_CONTEXT, (uint64_t)(uintptr_t)ctx, a->bytes, a->device);
    return r;
}

CUresult cuCtxDestroy_v2(CUcontext ctx)
{
    struct vgpu_alloc a;
    int had = vgpu_is_ready() && vgpu_alloc_take(VGPU_KIND_CONTEXT, (uint64_t)(uintptr_t)ctx, &a);
    return destroyed(vgpu_real.cuCtxDestroy_v2(ctx), ctx, &a, had);
}

CUresult cuCtxDestroy(CUcontext ctx)
{
    struct vgpu_alloc a;
    int had = vgpu_is_ready() && vgpu_alloc_take(VGPU_KIND_CONTEXT, (uint64_t)(uintptr_t)ctx, &a);
    return destroyed(vgpu_real.cuCtxDestroy(ctx), ctx, &a, had);
}
