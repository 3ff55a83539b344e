/*
 * Opening, validating and accounting in the shared region (layout and the
 * reasoning behind it: include/vgpu_region.h).
 */
#ifndef VGPU_REGION_OPS_H
#define VGPU_REGION_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "vgpu_region.h"

/* Whether the driver still holds memory of process `driver_pid` on the GPU
 * with this UUID: 1 yes, 0 no, -1 cannot tell. */
typedef int (*vgpu_driver_holds_fn)(int32_t driver_pid, const unsigned char uuid[16]);

struct vgpu_region_handle {
    struct vgpu_region *map;
    int fd;   /* one open file description per process: its OFD locks are our slots */
    int slot; /* the proc slot this process owns, -1 before claiming */
    vgpu_driver_holds_fn driver_holds; /* NULL: every dead slot waits out the grace */
};

enum vgpu_charge_result {
    VGPU_CHARGED = 0,
    VGPU_OVER_SLICE = 1,   /* the slice-wide limit of the device would be exceeded */
    VGPU_OVER_PROCESS = 2, /* this process's own cap would be exceeded */
    VGPU_REGION_BROKEN = 3,
};

/* Opens (creating if needed) and validates the region at path, refusing a
 * file that is not this user's own (safe_file.h). The mapping is guarded
 * against truncation (map_guard.h); `lost` runs, from a signal handler, if
 * that happens. On failure, returns -1 with a one-line reason in err. */
int vgpu_region_open(const char *path, struct vgpu_region_handle *h, void (*lost)(void), char *err,
                     size_t errlen);
void vgpu_region_close(struct vgpu_region_handle *h);

/* Checks magic, version, sizes and the header checksum. */
int vgpu_region_valid(const struct vgpu_region *r);

/* Claims a free or dead proc slot for this process and fills its identity. */
int vgpu_region_claim_slot(struct vgpu_region_handle *h, const char *identity);

/* The device entry of a UUID, claimed if new. memory_limit/sm_limit are used
 * only if this call is the one that sets the entry's limit. Returns the entry
 * index, or -1 when all entries hold other devices. */
int vgpu_region_device(struct vgpu_region *r, const unsigned char uuid[16], uint64_t memory_limit,
                       uint32_t sm_limit);

/* The UUID of a registered entry. */
void vgpu_region_device_uuid(const struct vgpu_region *r, int entry, unsigned char uuid[16]);

/* The entry of a UUID if registered, else -1. */
int vgpu_region_find_device(const struct vgpu_region *r, const unsigned char uuid[16]);

/* Reserves bytes on a device for this process, or refuses. The slice's
 * limit is the region's, but never above ceiling (root's, trusted.h). */
enum vgpu_charge_result vgpu_region_charge(struct vgpu_region_handle *h, int dev, uint64_t bytes, uint64_t ceiling);
void vgpu_region_uncharge(struct vgpu_region_handle *h, int dev, uint64_t bytes);

/* Bytes charged on a device by all slots (dead ones included until reclaimed). */
uint64_t vgpu_region_used(const struct vgpu_region *r, int dev);

/* Zeroes the slots of processes that have died and whose memory the driver
 * has freed (vgpu_region.h). Returns how many it freed. */
int vgpu_region_reclaim(struct vgpu_region_handle *h);

/* 1 if some process holds slot i's lock (it is live). */
int vgpu_region_slot_live(const struct vgpu_region_handle *h, int slot);

uint64_t vgpu_region_checksum(const struct vgpu_region_header *hdr);

#endif
