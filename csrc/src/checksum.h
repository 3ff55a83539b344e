/* FNV-1a 64 (offset basis 14695981039346656037): the checksum of the shared
 * files' immutable headers, so that a file overwritten by something else is
 * told apart from ours. */
#ifndef VGPU_CHECKSUM_H
#define VGPU_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

static inline uint64_t vgpu_fnv1a(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

#endif
