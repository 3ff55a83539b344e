#include "alloc_map.h"

#include <pthread.h>
#include <stdlib.h>

/* Open addressing with linear probing and backward-shift deletion, so there
 * are no tombstones to accumulate in a long-running kernel. */
struct entry {
    uint64_t handle;
    uint64_t bytes;
    int32_t device;
    int32_t kind; /* 0 = empty */
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct entry *g_table;
static size_t g_cap; /* power of two */
static size_t g_count;

static size_t slot_of(int kind, uint64_t handle, size_t cap)
{
    uint64_t x = handle ^ ((uint64_t)kind << 56);
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (size_t)x & (cap - 1);
}

static void insert(struct entry *table, size_t cap, struct entry e)
{
    size_t i = slot_of(e.kind, e.handle, cap);
    while (table[i].kind != 0)
        i = (i + 1) & (cap - 1);
    table[i] = e;
}

static int grow(void)
{
    size_t cap = g_cap ? g_cap * 2 : 256;
    struct entry *table = calloc(cap, sizeof *table);
    if (!table)
        return -1;
    for (size_t i = 0; i < g_cap; i++)
        if (g_table[i].kind != 0)
            insert(table, cap, g_table[i]);
    free(g_table);
    g_table = table;
    g_cap = cap;
    return 0;
}

int vgpu_alloc_put(int kind, uint64_t handle, uint64_t bytes, int device)
{
    pthread_mutex_lock(&g_lock);
    int rc = 0;
    if ((g_count + 1) * 4 > g_cap * 3)
        rc = grow();
    if (rc == 0) {
        struct entry e = {handle, bytes, device, kind};
        insert(g_table, g_cap, e);
        g_count++;
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

int vgpu_alloc_take(int kind, uint64_t handle, struct vgpu_alloc *out)
{
    pthread_mutex_lock(&g_lock);
    int found = 0;
    if (g_cap) {
        size_t i = slot_of(kind, handle, g_cap);
        while (g_table[i].kind != 0 && !(g_table[i].kind == kind && g_table[i].handle == handle))
            i = (i + 1) & (g_cap - 1);
        if (g_table[i].kind != 0) {
            found = 1;
            out->bytes = g_table[i].bytes;
            out->device = g_table[i].device;
            /* Backward shift: pull later members of the probe run into the hole. */
            size_t hole = i;
            for (size_t j = (i + 1) & (g_cap - 1); g_table[j].kind != 0; j = (j + 1) & (g_cap - 1)) {
                size_t home = slot_of(g_table[j].kind, g_table[j].handle, g_cap);
                if (((j - home) & (g_cap - 1)) >= ((j - hole) & (g_cap - 1))) {
                    g_table[hole] = g_table[j];
                    hole = j;
                }
            }
            g_table[hole].kind = 0;
            g_count--;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return found;
}

void vgpu_alloc_reset(void)
{
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    g_lock = fresh;
    free(g_table);
    g_table = NULL;
    g_cap = 0;
    g_count = 0;
}
