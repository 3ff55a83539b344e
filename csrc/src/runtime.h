/*
 * This process's place in its slice: whether libvgpu is ready, which region
 * slot it owns, and how its CUDA device ordinals map to the region's
 * UUID-keyed device entries. Attaching happens once, lazily, at the first
 * CUDA call that needs it (normally cuInit).
 */
#ifndef VGPU_RUNTIME_H
#define VGPU_RUNTIME_H

#include <stdatomic.h>
#include <stdint.h>

#include "driver_abi.h"
#include "region.h"

enum vgpu_state { VGPU_STATE_NEW = 0, VGPU_STATE_READY = 1, VGPU_STATE_BROKEN = 2 };

struct vgpu_runtime {
    _Atomic int state;
    struct vgpu_region_handle region;
    int device_count;
    int entry_of_ordinal[VGPU_MAX_DEVICES];
    /* Root's limit per device entry (trusted.h): over whatever the region says. */
    uint64_t ceiling_of_entry[VGPU_MAX_DEVICES];
    uint32_t sm_ceiling_of_entry[VGPU_MAX_DEVICES]; /* 0: none */
    unsigned char uuid_of_ordinal[VGPU_MAX_DEVICES][16];
};

extern struct vgpu_runtime vgpu_rt;

CUresult vgpu_ready_slow(void);

/* CUDA_SUCCESS once attached; the error every wrapper returns otherwise. */
static inline CUresult vgpu_ready(void)
{
    if (__builtin_expect(atomic_load_explicit(&vgpu_rt.state, memory_order_acquire) == VGPU_STATE_READY, 1))
        return CUDA_SUCCESS;
    return vgpu_ready_slow();
}

static inline int vgpu_is_ready(void)
{
    return atomic_load_explicit(&vgpu_rt.state, memory_order_acquire) == VGPU_STATE_READY;
}

/* Fails closed: from now on CUDA calls through libvgpu return an error. */
void vgpu_fail(const char *reason);

/* A shared file was truncated while mapped (map_guard.h): fails the library
 * closed. Async-signal-safe. */
void vgpu_mapping_lost(void);

/* Region device entry of a CUDA ordinal, or -1. */
int vgpu_entry_of_ordinal(int ordinal);
/* Region device entry of the calling thread's current context. */
CUresult vgpu_current_entry(int *entry);

/* Charges bytes to this process on a device entry: CUDA_SUCCESS or
 * CUDA_ERROR_OUT_OF_MEMORY (or the fail-closed error). */
CUresult vgpu_charge(int entry, uint64_t bytes);
void vgpu_uncharge(int entry, uint64_t bytes);

/* Narrows a device's real (free, total) to what the slice allows this process. */
void vgpu_slice_view(int entry, uint64_t *free_bytes, uint64_t *total_bytes);

#endif
