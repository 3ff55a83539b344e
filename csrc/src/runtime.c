#include "runtime.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "alloc_map.h"
#include "hooks.h"
#include "config.h"
#include "limiter.h"
#include "log.h"
#include "monitor.h"
#include "real_driver.h"
#include "safe_file.h"
#include "trusted.h"

struct vgpu_runtime vgpu_rt = {.region = {.fd = -1, .slot = -1}};

static pthread_mutex_t g_init_lock = PTHREAD_MUTEX_INITIALIZER;

void vgpu_context_reset_after_fork(void); /* context.c */


void vgpu_fail(const char *reason)
{
    int was = atomic_exchange(&vgpu_rt.state, VGPU_STATE_BROKEN);
    if (was != VGPU_STATE_BROKEN)
        VGPU_ERROR("%s; CUDA calls will fail until this is fixed", reason);
}

/* A shared file was truncated under us (map_guard.h); runs in a signal
 * handler, so it only flips the state: every CUDA call fails from now on. */
void vgpu_mapping_lost(void) { atomic_store(&vgpu_rt.state, VGPU_STATE_BROKEN); }

/* The driver's per-process view (vgpu_region_h's reclaim rule): is process
 * pid still listed on the GPU with this UUID? */
static int driver_holds(int32_t pid, const unsigned char uuid[16])
{
    nvmlDevice_t dev;
    if (vgpu_real_nvml_device(uuid, &dev) != 0 || !vgpu_real.nvmlDeviceGetComputeRunningProcesses_v3)
        return -1;
    nvmlProcessInfo_t infos[256];
    unsigned int count = 256;
    if (vgpu_real.nvmlDeviceGetComputeRunningProcesses_v3(dev, &count, infos) != NVML_SUCCESS)
        return -1;
    for (unsigned int i = 0; i < count && i < 256; i++)
        if (infos[i].pid == (unsigned int)pid)
            return 1;
    return 0;
}

static CUresult device_uuid(CUdevice dev, unsigned char out[16])
{
    CUuuid uuid;
    CUresult r = vgpu_real.cuDeviceGetUuid_v2 ? vgpu_real.cuDeviceGetUuid_v2(&uuid, dev)
                                              : vgpu_real.cuDeviceGetUuid(&uuid, dev);
    if (r == CUDA_SUCCESS)
        memcpy(out, uuid.bytes, 16);
    return r;
}

/* Registers every device this process can see, with its limits, by UUID. */
static int map_devices(char *err, size_t errlen)
{
    const struct vgpu_config *cfg = vgpu_config();
    struct vgpu_region *r = vgpu_rt.region.map;
    struct vgpu_proc *me = &r->procs[vgpu_rt.region.slot];
    int count = 0;
    CUresult rc = vgpu_real.cuDeviceGetCount(&count);
    if (rc != CUDA_SUCCESS) {
        snprintf(err, errlen, "cuDeviceGetCount failed with CUDA error %d", rc);
        return -1;
    }
    if (count > VGPU_MAX_DEVICES) {
        snprintf(err, errlen, "this process sees %d GPUs; libvgpu handles at most %d", count,
                 VGPU_MAX_DEVICES);
        return -1;
    }
    for (int e = 0; e < VGPU_MAX_DEVICES; e++) {
        vgpu_rt.ceiling_of_entry[e] = VGPU_UNLIMITED;
        vgpu_rt.sm_ceiling_of_entry[e] = 0;
    }
    for (int i = 0; i < count; i++) {
        CUdevice dev;
        if ((rc = vgpu_real.cuDeviceGet(&dev, i)) != CUDA_SUCCESS ||
            (rc = device_uuid(dev, vgpu_rt.uuid_of_ordinal[i])) != CUDA_SUCCESS) {
            snprintf(err, errlen, "cannot identify GPU %d (CUDA error %d)", i, rc);
            return -1;
        }
        int entry = vgpu_region_device(r, vgpu_rt.uuid_of_ordinal[i], cfg->memory_limit[i], cfg->sm_limit[i]);
        if (entry < 0) {
            snprintf(err, errlen, "the shared region already holds %d other GPUs", VGPU_MAX_DEVICES);
            return -1;
        }
        vgpu_rt.entry_of_ordinal[i] = entry;
        vgpu_rt.ceiling_of_entry[entry] = cfg->memory_ceiling[i];
        vgpu_rt.sm_ceiling_of_entry[entry] = cfg->sm_ceiling[i];
        uint64_t slice = atomic_load(&r->devices[entry].memory_limit);
        if (slice != cfg->memory_limit[i])
            VGPU_INFO("GPU %d: the slice's limit in the region (%llu bytes) stands over this "
                      "process's CUDA_DEVICE_MEMORY_LIMIT (%llu bytes)",
                      i, (unsigned long long)slice, (unsigned long long)cfg->memory_limit[i]);
        atomic_store(&me->memory_limit[entry], cfg->process_memory_limit[i]);
        atomic_store(&me->sm_limit[entry], cfg->process_sm_limit[i]);
    }
    vgpu_rt.device_count = count;
    return 0;
}

static void after_fork_in_child(void)
{
    /* The child shares the parent's open file description, hence its slot
     * lock; it must not account in the parent's slot. Drop everything and
     * attach afresh if the child uses CUDA itself. Closing our descriptor
     * does not release the parent's lock: the parent still holds one. */
    if (vgpu_rt.region.map)
        vgpu_region_close(&vgpu_rt.region);
    vgpu_alloc_reset();
    vgpu_context_reset_after_fork();
    vgpu_limiter_reset_after_fork();
    vgpu_monitor_reset_after_fork();
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    g_init_lock = fresh;
    if (atomic_load(&vgpu_rt.state) == VGPU_STATE_READY)
        atomic_store(&vgpu_rt.state, VGPU_STATE_NEW);
}

CUresult vgpu_ready_slow(void)
{
    pthread_mutex_lock(&g_init_lock);
    CUresult result = CUDA_ERROR_NOT_INITIALIZED;
    int state = atomic_load(&vgpu_rt.state);
    if (state == VGPU_STATE_READY) {
        result = CUDA_SUCCESS;
        goto out;
    }
    if (state == VGPU_STATE_BROKEN)
        goto out;
    const struct vgpu_config *cfg = vgpu_config();
    vgpu_config_apply_trusted(VGPU_TRUSTED_SLICE_FILE);
    if (cfg->broken) {
        vgpu_fail(cfg->error);
        goto out;
    }
    if (vgpu_real_cuda_load() != 0) {
        vgpu_fail("the real CUDA driver could not be loaded");
        goto out;
    }
    /* Attaching needs the driver up; if it is not (no GPU, wrong driver) the
     * caller gets the driver's own error and we try again next time. */
    result = vgpu_real.cuInit(0);
    if (result != CUDA_SUCCESS)
        goto out;
    char err[512];
    if ((cfg->region_default && vgpu_private_dir(cfg->default_dir, err, sizeof err) != 0) ||
        vgpu_region_open(cfg->region_path, &vgpu_rt.region, vgpu_mapping_lost, err, sizeof err) != 0) {
        vgpu_fail(err);
        result = CUDA_ERROR_NOT_INITIALIZED;
        goto out;
    }
    vgpu_rt.region.driver_holds = driver_holds;
    if (vgpu_region_claim_slot(&vgpu_rt.region, cfg->identity) != 0) {
        vgpu_region_close(&vgpu_rt.region);
        vgpu_fail("the shared region has no free process slot");
        result = CUDA_ERROR_NOT_INITIALIZED;
        goto out;
    }
    if (map_devices(err, sizeof err) != 0) {
        vgpu_fail(err);
        result = CUDA_ERROR_NOT_INITIALIZED;
        goto out;
    }
    static int registered;
    if (!registered) {
        pthread_atfork(NULL, NULL, after_fork_in_child);
        registered = 1;
    }
    VGPU_DEBUG("attached to %s as slot %d", cfg->region_path, vgpu_rt.region.slot);
    atomic_store(&vgpu_rt.state, VGPU_STATE_READY);
    vgpu_monitor_start();
out:
    pthread_mutex_unlock(&g_init_lock);
    return result;
}

int vgpu_entry_of_ordinal(int ordinal)
{
    if (ordinal < 0 || ordinal >= vgpu_rt.device_count)
        return -1;
    return vgpu_rt.entry_of_ordinal[ordinal];
}

CUresult vgpu_current_entry(int *entry)
{
    CUdevice dev;
    CUresult r = vgpu_real.cuCtxGetDevice(&dev);
    if (r != CUDA_SUCCESS)
        return r;
    *entry = vgpu_entry_of_ordinal(dev);
    return *entry < 0 ? CUDA_ERROR_INVALID_DEVICE : CUDA_SUCCESS;
}

CUresult vgpu_charge(int entry, uint64_t bytes)
{
    switch (vgpu_region_charge(&vgpu_rt.region, entry, bytes, vgpu_rt.ceiling_of_entry[entry])) {
    case VGPU_CHARGED:
        return CUDA_SUCCESS;
    case VGPU_OVER_PROCESS:
        VGPU_INFO("refused %llu bytes: over this process's own memory cap", (unsigned long long)bytes);
        return CUDA_ERROR_OUT_OF_MEMORY;
    case VGPU_OVER_SLICE:
        VGPU_INFO("refused %llu bytes: over the slice's memory limit", (unsigned long long)bytes);
        return CUDA_ERROR_OUT_OF_MEMORY;
    default:
        vgpu_fail("the shared region was overwritten while in use");
        return CUDA_ERROR_NOT_INITIALIZED;
    }
}

void vgpu_uncharge(int entry, uint64_t bytes)
{
    if (vgpu_is_ready())
        vgpu_region_uncharge(&vgpu_rt.region, entry, bytes);
}

static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

void vgpu_slice_view(int entry, uint64_t *free_bytes, uint64_t *total_bytes)
{
    struct vgpu_region *r = vgpu_rt.region.map;
    struct vgpu_proc *me = &r->procs[vgpu_rt.region.slot];
    uint64_t limit = min_u64(atomic_load(&r->devices[entry].memory_limit), vgpu_rt.ceiling_of_entry[entry]);
    uint64_t cap = atomic_load(&me->memory_limit[entry]);
    if (limit == VGPU_UNLIMITED && cap == 0)
        return;
    /* A killed neighbour's share should show as free right away. */
    vgpu_region_reclaim(&vgpu_rt.region);
    uint64_t total = min_u64(*total_bytes, limit);
    uint64_t used = vgpu_region_used(r, entry);
    uint64_t free_slice = limit > used ? limit - used : 0;
    if (limit == VGPU_UNLIMITED)
        free_slice = *free_bytes;
    if (cap != 0) {
        uint64_t mine = atomic_load(&me->used[entry]);
        total = min_u64(total, cap);
        free_slice = min_u64(free_slice, cap > mine ? cap - mine : 0);
    }
    *total_bytes = total;
    *free_bytes = min_u64(free_slice, *free_bytes);
}

/* The driver's initialization is where a process joins its slice. */
CUresult cuInit(unsigned int flags)
{
    if (vgpu_real_cuda_load() != 0)
        return vgpu_ready_slow(); /* fails closed with the reason */
    CUresult r = vgpu_real.cuInit(flags);
    return r != CUDA_SUCCESS ? r : vgpu_ready();
}
