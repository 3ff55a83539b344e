/*
 * What this process holds on the GPU: handle -> (bytes, device entry), so a
 * free uncharges exactly what its allocation charged, on the device it was
 * charged to, whatever context is current when it is freed.
 */
#ifndef VGPU_ALLOC_MAP_H
#define VGPU_ALLOC_MAP_H

#include <stdint.h>

enum vgpu_alloc_kind {
    VGPU_KIND_POINTER = 1,  /* cuMemAlloc*, managed, pitch, stream-ordered */
    VGPU_KIND_ARRAY = 2,    /* cuArrayCreate, cuArray3DCreate */
    VGPU_KIND_MIPMAP = 3,   /* cuMipmappedArrayCreate */
    VGPU_KIND_PHYSICAL = 4, /* cuMemCreate */
    VGPU_KIND_CONTEXT = 5,  /* cuCtxCreate */
};

struct vgpu_alloc {
    uint64_t bytes;
    int device; /* region device entry */
};

/* Returns 0, or -1 when memory for the map itself cannot be had. */
int vgpu_alloc_put(int kind, uint64_t handle, uint64_t bytes, int device);
/* Removes the entry and returns 1 if it was there. */
int vgpu_alloc_take(int kind, uint64_t handle, struct vgpu_alloc *out);
/* Forgets everything (a forked child owns none of its parent's memory). */
void vgpu_alloc_reset(void);

#endif
