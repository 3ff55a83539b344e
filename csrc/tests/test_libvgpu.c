/*
 * libvgpu against the fake driver, as a real program would meet it.
 *
 * Run as: LD_PRELOAD=libvgpu.so test_libvgpu CASE, with the fake driver on
 * LD_LIBRARY_PATH and the slice in the environment (tests/test_libvgpu_c.py
 * sets all of it). VGPU_TEST_ACCESS picks how the program reaches the driver:
 *   direct   - calls the driver's exported names (this binary links libcuda)
 *   dlsym    - dlopen("libcuda.so.1") + dlsym, as cudart and ctypes do
 *   procaddr - cuGetProcAddress_v2 with base names, as cudart 12+ does
 *   ptsz     - cuGetProcAddress_v2 asking for per-thread default streams
 * The fake driver's own bookkeeping (fake_control.h) shows what really
 * reached the "GPU", so a refusal can be checked to have touched nothing.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "fake_abi_ext.h"
#include "fake_control.h"
#include "vgpu_region.h"

struct api {
    cu_fn_cuInit init;
    cu_fn_cuDevicePrimaryCtxRetain retain;
    cu_fn_cuDevicePrimaryCtxRelease_v2 release;
    cu_fn_cuMemAlloc_v2 alloc;
    cu_fn_cuMemFree_v2 free;
    cu_fn_cuMemAllocPitch_v2 pitch;
    cu_fn_cuMemAllocManaged managed;
    cu_fn_cuMemAllocAsync alloc_async;
    cu_fn_cuMemAllocFromPoolAsync alloc_pool;
    cu_fn_cuMemFreeAsync free_async;
    cu_fn_cuArrayCreate_v2 array;
    cu_fn_cuArray3DCreate_v2 array3d;
    cu_fn_cuArrayDestroy array_destroy;
    cu_fn_cuMipmappedArrayCreate mipmap;
    cu_fn_cuMipmappedArrayDestroy mipmap_destroy;
    cu_fn_cuMemCreate create;
    cu_fn_cuMemRelease mem_release;
    cu_fn_cuMemGetInfo_v2 info;
    cu_fn_cuDeviceTotalMem_v2 total;
    cu_fn_cuCtxCreate_v2 ctx_create;
    cu_fn_cuCtxDestroy_v2 ctx_destroy;
    CUresult (*set_current)(CUcontext);
    CUresult (*pool_create)(CUmemoryPool *, const void *);
    cu_fn_nvmlInit_v2 nvml_init;
    nvmlReturn_t (*nvml_handle)(unsigned int, nvmlDevice_t *);
    cu_fn_nvmlDeviceGetMemoryInfo nvml_mem;
    cu_fn_nvmlDeviceGetMemoryInfo_v2 nvml_mem_v2;
};

static struct api A;
static void *g_libcuda;

static void *sym(void *lib, const char *name)
{
    void *p = dlsym(lib, name);
    CHECK(p, "dlsym(%s): %s", name, dlerror());
    return p;
}

static void *proc(const char *base, int version, cuuint64_t flags)
{
    cu_fn_cuGetProcAddress_v2 gpa = (cu_fn_cuGetProcAddress_v2)sym(g_libcuda, "cuGetProcAddress_v2");
    void *p = NULL;
    CUdriverProcAddressQueryResult st = -1;
    CHECK_CU(gpa(base, &p, version, flags, &st), CUDA_SUCCESS);
    CHECK(p && st == CU_GET_PROC_ADDRESS_SUCCESS, "cuGetProcAddress(%s) gave no entry point", base);
    return p;
}

static void load_api(void)
{
    const char *mode = getenv("VGPU_TEST_ACCESS");
    mode = mode ? mode : "direct";
    g_libcuda = dlopen("libcuda.so.1", RTLD_NOW);
    void *libnvml = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    CHECK(g_libcuda && libnvml, "cannot open the fake driver: %s", dlerror());
    if (strcmp(mode, "direct") == 0) {
        A = (struct api){cuInit, cuDevicePrimaryCtxRetain, cuDevicePrimaryCtxRelease_v2, cuMemAlloc_v2,
                         cuMemFree_v2, cuMemAllocPitch_v2, cuMemAllocManaged, cuMemAllocAsync,
                         cuMemAllocFromPoolAsync, cuMemFreeAsync, cuArrayCreate_v2, cuArray3DCreate_v2,
                         cuArrayDestroy, cuMipmappedArrayCreate, cuMipmappedArrayDestroy, cuMemCreate,
                         cuMemRelease, cuMemGetInfo_v2, cuDeviceTotalMem_v2, cuCtxCreate_v2, cuCtxDestroy_v2,
                         cuCtxSetCurrent, cuMemPoolCreate, nvmlInit_v2, nvmlDeviceGetHandleByIndex_v2,
                         nvmlDeviceGetMemoryInfo, nvmlDeviceGetMemoryInfo_v2};
        return;
    }
    if (strcmp(mode, "dlsym") == 0) {
#define S(field, name) *(void **)&A.field = sym(g_libcuda, name)
        S(init, "cuInit"); S(retain, "cuDevicePrimaryCtxRetain"); S(release, "cuDevicePrimaryCtxRelease_v2");
        S(alloc, "cuMemAlloc_v2"); S(free, "cuMemFree_v2"); S(pitch, "cuMemAllocPitch_v2");
        S(managed, "cuMemAllocManaged"); S(alloc_async, "cuMemAllocAsync");
        S(alloc_pool, "cuMemAllocFromPoolAsync"); S(free_async, "cuMemFreeAsync");
        S(array, "cuArrayCreate_v2"); S(array3d, "cuArray3DCreate_v2"); S(array_destroy, "cuArrayDestroy");
        S(mipmap, "cuMipmappedArrayCreate"); S(mipmap_destroy, "cuMipmappedArrayDestroy");
        S(create, "cuMemCreate"); S(mem_release, "cuMemRelease"); S(info, "cuMemGetInfo_v2");
        S(total, "cuDeviceTotalMem_v2"); S(ctx_create, "cuCtxCreate_v2"); S(ctx_destroy, "cuCtxDestroy_v2");
#undef S
    } else {
        cuuint64_t flags = strcmp(mode, "ptsz") == 0 ? CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM
                                                     : CU_GET_PROC_ADDRESS_DEFAULT;
        CHECK(flags || strcmp(mode, "procaddr") == 0, "unknown VGPU_TEST_ACCESS=%s", mode);
#define P(field, name, version) *(void **)&A.field = proc(name, version, flags)
        P(init, "cuInit", 13000); P(retain, "cuDevicePrimaryCtxRetain", 13000);
        P(release, "cuDevicePrimaryCtxRelease", 13000); P(alloc, "cuMemAlloc", 13000);
        P(free, "cuMemFree", 13000); P(pitch, "cuMemAllocPitch", 13000); P(managed, "cuMemAllocManaged", 13000);
        P(alloc_async, "cuMemAllocAsync", 13000); P(alloc_pool, "cuMemAllocFromPoolAsync", 13000);
        P(free_async, "cuMemFreeAsync", 13000); P(array, "cuArrayCreate", 13000);
        P(array3d, "cuArray3DCreate", 13000); P(array_destroy, "cuArrayDestroy", 13000);
        P(mipmap, "cuMipmappedArrayCreate", 13000); P(mipmap_destroy, "cuMipmappedArrayDestroy", 13000);
        P(create, "cuMemCreate", 13000); P(mem_release, "cuMemRelease", 13000);
        P(info, "cuMemGetInfo", 13000); P(total, "cuDeviceTotalMem", 13000);
        /* Version 4.0 asks for the cuCtxCreate_v2 ABI (12.5+ would be _v4). */
        P(ctx_create, "cuCtxCreate", 4000); P(ctx_destroy, "cuCtxDestroy", 13000);
#undef P
    }
    *(void **)&A.set_current = sym(g_libcuda, "cuCtxSetCurrent");
    *(void **)&A.pool_create = sym(g_libcuda, "cuMemPoolCreate");
    *(void **)&A.nvml_init = sym(libnvml, "nvmlInit_v2");
    *(void **)&A.nvml_handle = sym(libnvml, "nvmlDeviceGetHandleByIndex_v2");
    *(void **)&A.nvml_mem = sym(libnvml, "nvmlDeviceGetMemoryInfo");
    *(void **)&A.nvml_mem_v2 = sym(libnvml, "nvmlDeviceGetMemoryInfo_v2");
}

/* ---- helpers -------------------------------------------------------------- */

static uint64_t env_size(const char *name)
{
    const char *v = getenv(name);
    CHECK(v, "the test needs %s", name);
    char *end;
    uint64_t n = strtoull(v, &end, 10);
    switch (*end) {
    case 'm': return n * MiB;
    case 'g': return n * GiB;
    default: return n;
    }
}

static uint64_t context_bytes(void)
{
    const char *v = getenv("FAKE_CUDA_CONTEXT_SIZE");
    return v ? strtoull(v, NULL, 10) : 64 * MiB;
}

static CUcontext open_device(int ordinal)
{
    CHECK_CU(A.init(0), CUDA_SUCCESS);
    CUcontext ctx = NULL;
    CHECK_CU(A.retain(&ctx, ordinal), CUDA_SUCCESS);
    CHECK_CU(A.set_current(ctx), CUDA_SUCCESS);
    return ctx;
}

static struct vgpu_region *map_region(void)
{
    const char *path = getenv("CUDA_DEVICE_MEMORY_SHARED_CACHE");
    CHECK(path, "the test needs CUDA_DEVICE_MEMORY_SHARED_CACHE");
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0, "open %s: %s", path, strerror(errno));
    void *map = mmap(NULL, VGPU_REGION_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(map != MAP_FAILED, "mmap: %s", strerror(errno));
    close(fd);
    return map;
}

static uint64_t region_used_total(struct vgpu_region *r, int entry)
{
    uint64_t sum = 0;
    for (uint32_t i = 0; i < atomic_load(&r->header.proc_high); i++)
        sum += atomic_load(&r->procs[i].used[entry]);
    return sum;
}

static int region_entry_of_physical(struct vgpu_region *r, int physical)
{
    /* The fake's UUIDs: face00<n> 10203040 5060708090a0b0c0 */
    unsigned char uuid[16] = {0xfa, 0xce, 0x00, (unsigned char)physical, 0x10, 0x20, 0x30, 0x40,
                              0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0};
    uint64_t lo, hi;
    memcpy(&lo, uuid, 8);
    memcpy(&hi, uuid + 8, 8);
    for (int i = 0; i < VGPU_MAX_DEVICES; i++)
        if (atomic_load(&r->devices[i].uuid_lo) == lo && atomic_load(&r->devices[i].uuid_hi) == hi)
            return i;
    return -1;
}

/* ---- one allocation path, driven generically ------------------------------ */

struct path {
    const char *name;
    CUresult (*alloc)(uint64_t bytes, uint64_t *handle);
    CUresult (*release)(uint64_t handle);
};

static CUmemoryPool g_pool;

static CUresult p_alloc(uint64_t b, uint64_t *h) { return A.alloc((CUdeviceptr *)h, b); }
static CUresult p_free(uint64_t h) { return A.free(h); }
static CUresult p_managed(uint64_t b, uint64_t *h) { return A.managed((CUdeviceptr *)h, b, 1); }
static CUresult p_pitch(uint64_t b, uint64_t *h)
{
    /* Rows of 1 MiB - 100 bytes: the driver rounds each row up to 1 MiB. */
    size_t pitch = 0;
    CUresult r = A.pitch((CUdeviceptr *)h, &pitch, MiB - 100, b / MiB, 4);
    CHECK(r != CUDA_SUCCESS || pitch == MiB, "pitch %zu", pitch);
    return r;
}
static CUresult p_async(uint64_t b, uint64_t *h) { return A.alloc_async((CUdeviceptr *)h, b, NULL); }
static CUresult p_pool(uint64_t b, uint64_t *h) { return A.alloc_pool((CUdeviceptr *)h, b, g_pool, NULL); }
static CUresult p_free_async(uint64_t h) { return A.free_async(h, NULL); }
static CUresult p_array(uint64_t b, uint64_t *h)
{
    CUDA_ARRAY_DESCRIPTOR d = {.Width = 1024, .Height = b / 4096, .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 1};
    return A.array((CUarray *)h, &d);
}
static CUresult p_array3d(uint64_t b, uint64_t *h)
{
    CUDA_ARRAY3D_DESCRIPTOR d = {.Width = 256, .Height = 256, .Depth = b / (256 * 256 * 8),
                                 .Format = CU_AD_FORMAT_HALF, .NumChannels = 4, .Flags = 0};
    return A.array3d((CUarray *)h, &d);
}
static CUresult p_array_destroy(uint64_t h) { return A.array_destroy((CUarray)(uintptr_t)h); }
static CUresult p_mipmap(uint64_t b, uint64_t *h)
{
    /* Two levels of a layered 2D array: level 1 adds a quarter, so depth is
     * chosen for 1.25 * 1024*1024*4 bytes per layer. */
    CUDA_ARRAY3D_DESCRIPTOR d = {.Width = 1024, .Height = 1024, .Depth = b / (5 * MiB),
                                 .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 1, .Flags = CUDA_ARRAY3D_LAYERED};
    return A.mipmap((CUmipmappedArray *)h, &d, 2);
}
static CUresult p_mipmap_destroy(uint64_t h) { return A.mipmap_destroy((CUmipmappedArray)(uintptr_t)h); }
static CUresult p_vmm(uint64_t b, uint64_t *h)
{
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = 0;
    return A.create((CUmemGenericAllocationHandle *)h, b, &prop, 0);
}
static CUresult p_vmm_release(uint64_t h) { return A.mem_release(h); }

static const struct path g_paths[] = {
    {"cuMemAlloc", p_alloc, p_free},
    {"cuMemAllocManaged", p_managed, p_free},
    {"cuMemAllocPitch", p_pitch, p_free},
    {"cuMemAllocAsync", p_async, p_free_async},
    {"cuMemAllocFromPoolAsync", p_pool, p_free_async},
    {"cuArrayCreate", p_array, p_array_destroy},
    {"cuArray3DCreate", p_array3d, p_array_destroy},
    {"cuMipmappedArrayCreate", p_mipmap, p_mipmap_destroy},
    {"cuMemCreate", p_vmm, p_vmm_release},
};

/* ---- cases ---------------------------------------------------------------- */

/* Every allocation path stops at the slice; a refusal reaches nothing. */
static void case_paths(void)
{
    load_api();
    uint64_t limit = env_size("CUDA_DEVICE_MEMORY_LIMIT");
    open_device(0);
    unsigned char pool_props[128] = {0}; /* a CUmemPoolProps; the fake reads none of it */
    CHECK_CU(A.pool_create(&g_pool, pool_props), CUDA_SUCCESS);
    uint64_t base = fake_cuda_device_used(0);
    CHECK(base == context_bytes(), "the context should be all that is used, got %llu", (unsigned long long)base);
    uint64_t chunk = 640 * MiB; /* one fits beside the context in 1 GiB, two do not */
    CHECK(limit == GiB, "this case is written for a 1 GiB slice");
    for (size_t i = 0; i < sizeof g_paths / sizeof g_paths[0]; i++) {
        const struct path *p = &g_paths[i];
        uint64_t first = 0, second = 0;
        CHECK(p->alloc(chunk, &first) == CUDA_SUCCESS, "%s: the first %llu MiB should fit", p->name,
              (unsigned long long)(chunk / MiB));
        uint64_t held = fake_cuda_device_used(0);
        CHECK(held >= base + chunk, "%s: the driver holds %llu", p->name, (unsigned long long)held);
        CUresult r = p->alloc(chunk, &second);
        CHECK(r == CUDA_ERROR_OUT_OF_MEMORY, "%s: over the slice gave %d, not out-of-memory", p->name, r);
        CHECK(fake_cuda_device_used(0) == held, "%s: a refused allocation reached the driver", p->name);
        CHECK(p->release(first) == CUDA_SUCCESS, "%s: free failed", p->name);
        CHECK(p->alloc(chunk, &second) == CUDA_SUCCESS, "%s: after a free the memory is usable again", p->name);
        CHECK(p->release(second) == CUDA_SUCCESS, "%s: second free failed", p->name);
        CHECK(fake_cuda_device_used(0) == base, "%s: usage did not return to the context alone", p->name);
        printf("ok %s\n", p->name);
    }
}

/* cuMemGetInfo, cuDeviceTotalMem and NVML describe the slice. */
static void case_info(void)
{
    load_api();
    uint64_t limit = env_size("CUDA_DEVICE_MEMORY_LIMIT");
    open_device(0);
    size_t free_b = 0, total_b = 0;
    CHECK_CU(A.info(&free_b, &total_b), CUDA_SUCCESS);
    CHECK(total_b == limit, "cuMemGetInfo total %zu, slice %llu", total_b, (unsigned long long)limit);
    CHECK(free_b == limit - context_bytes(), "cuMemGetInfo free %zu", free_b);
    CUdeviceptr p;
    CHECK_CU(A.alloc(&p, 100 * MiB), CUDA_SUCCESS);
    CHECK_CU(A.info(&free_b, &total_b), CUDA_SUCCESS);
    CHECK(free_b == limit - context_bytes() - 100 * MiB, "free after 100 MiB: %zu", free_b);
    size_t device_total = 0;
    CHECK_CU(A.total(&device_total, 0), CUDA_SUCCESS);
    CHECK(device_total == limit, "cuDeviceTotalMem %zu", device_total);

    CHECK_CU(A.nvml_init(), NVML_SUCCESS);
    nvmlDevice_t dev;
    CHECK_CU(A.nvml_handle(0, &dev), NVML_SUCCESS);
    nvmlMemory_t m;
    CHECK_CU(A.nvml_mem(dev, &m), NVML_SUCCESS);
    CHECK(m.total == limit && m.free == free_b && m.used == limit - free_b, "NVML v1 %llu/%llu/%llu", m.total,
          m.free, m.used);
    nvmlMemory_v2_t m2;
    memset(&m2, 0, sizeof m2);
    m2.version = nvmlMemory_v2;
    CHECK_CU(A.nvml_mem_v2(dev, &m2), NVML_SUCCESS);
    CHECK(m2.total == limit && m2.free == free_b && m2.used + m2.free + m2.reserved == m2.total,
          "NVML v2 %llu/%llu/%llu/%llu", m2.total, m2.free, m2.used, m2.reserved);
    CHECK_CU(A.free(p), CUDA_SUCCESS);
}

/* NULL out-pointers get the driver's own error; nothing crashes. */
static void case_null_pointers(void)
{
    load_api();
    open_device(0);
    size_t x;
    CHECK_CU(A.info(NULL, &x), CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(A.info(&x, NULL), CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(A.info(NULL, NULL), CUDA_ERROR_INVALID_VALUE);
    CHECK(A.total(NULL, 0) != CUDA_SUCCESS, "cuDeviceTotalMem(NULL) succeeded");
    CHECK(A.alloc(NULL, MiB) != CUDA_SUCCESS, "cuMemAlloc(NULL) succeeded");
    CHECK(fake_cuda_device_used(0) == context_bytes(), "a failed call left memory charged");
    CHECK_CU(A.nvml_init(), NVML_SUCCESS);
    nvmlDevice_t dev;
    CHECK_CU(A.nvml_handle(0, &dev), NVML_SUCCESS);
    CHECK(A.nvml_mem(dev, NULL) != NVML_SUCCESS, "NVML with NULL succeeded");
    CHECK(A.nvml_mem_v2(dev, NULL) != NVML_SUCCESS, "NVML v2 with NULL succeeded");
    /* The slice's accounting is intact: a full-size allocation still fits. */
    CUdeviceptr p;
    CHECK_CU(A.alloc(&p, 512 * MiB), CUDA_SUCCESS);
    CHECK_CU(A.free(p), CUDA_SUCCESS);
}

/* The legacy 32-bit entry points are refused, not let through unaccounted. */
static void case_legacy(void)
{
    load_api();
    open_device(0);
    CUdeviceptr_v1 p;
    unsigned int f, t;
    CHECK_CU(cuMemAlloc(&p, 1024), CUDA_ERROR_NOT_SUPPORTED);
    CHECK_CU(cuMemGetInfo(&f, &t), CUDA_ERROR_NOT_SUPPORTED);
    /* A program that asks cuGetProcAddress for the CUDA 2.x ABI gets the same. */
    cu_fn_cuMemAlloc old = (cu_fn_cuMemAlloc)proc("cuMemAlloc", 2000, 0);
    CHECK_CU(old(&p, 1024), CUDA_ERROR_NOT_SUPPORTED);
}

/* A per-process cap inside the slice (a kernel's sub-slice). */
static void case_process_cap(void)
{
    load_api();
    uint64_t cap = env_size("LIBVGPU_PROCESS_MEMORY_LIMIT");
    open_device(0);
    size_t free_b, total_b;
    CHECK_CU(A.info(&free_b, &total_b), CUDA_SUCCESS);
    CHECK(total_b == cap, "total %zu, process cap %llu", total_b, (unsigned long long)cap);
    CHECK(free_b == cap - context_bytes(), "free %zu", free_b);
    CUdeviceptr p, q;
    CHECK_CU(A.alloc(&p, cap - context_bytes() + MiB), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK_CU(A.alloc(&p, cap - context_bytes() - MiB), CUDA_SUCCESS);
    CHECK_CU(A.alloc(&q, 2 * MiB), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK_CU(A.free(p), CUDA_SUCCESS);
}

/* The slice's limit lives in the region; changing it there applies to the
 * next allocation of a running process. */
static void case_live_limit(void)
{
    load_api();
    open_device(0);
    struct vgpu_region *r = map_region();
    int e = region_entry_of_physical(r, 0);
    CHECK(e >= 0, "device not registered in the region");
    CHECK(atomic_load(&r->devices[e].memory_limit) == GiB, "region limit is the env's");
    CUdeviceptr p;
    atomic_store(&r->devices[e].memory_limit, 512 * MiB);
    CHECK_CU(A.alloc(&p, 600 * MiB), CUDA_ERROR_OUT_OF_MEMORY);
    size_t free_b, total_b;
    CHECK_CU(A.info(&free_b, &total_b), CUDA_SUCCESS);
    CHECK(total_b == 512 * MiB, "the new limit is what programs see, got %zu", total_b);
    atomic_store(&r->devices[e].memory_limit, 2 * GiB);
    CHECK_CU(A.alloc(&p, 1536 * MiB), CUDA_SUCCESS);
    CHECK_CU(A.free(p), CUDA_SUCCESS);
}

/* Contexts created explicitly are charged, and given back when destroyed. */
static void case_contexts(void)
{
    load_api();
    open_device(0);
    struct vgpu_region *r = map_region();
    int e = region_entry_of_physical(r, 0);
    uint64_t before = region_used_total(r, e);
    CUcontext ctx;
    CHECK_CU(A.ctx_create(&ctx, 0, 0), CUDA_SUCCESS);
    CHECK(region_used_total(r, e) == before + context_bytes(), "a new context is charged");
    CHECK_CU(A.ctx_destroy(ctx), CUDA_SUCCESS);
    CHECK(region_used_total(r, e) == before, "a destroyed context is uncharged");
    CHECK_CU(A.release(0), CUDA_SUCCESS);
    CHECK(region_used_total(r, e) == 0, "releasing the primary context uncharges it");
}

/* 16 processes allocate and free at once: together they never exceed the
 * slice (the fake records the true peak) and all usage ends at zero. */
static void case_concurrent(void)
{
    enum { PROCS = 16, ROUNDS = 400 };
    uint64_t limit = env_size("CUDA_DEVICE_MEMORY_LIMIT");
    struct counters {
        _Atomic long ok, refused, errors, ready, go;
    } *c = mmap(NULL, sizeof *c, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(c != MAP_FAILED, "mmap");
    for (int i = 0; i < PROCS; i++) {
        pid_t pid = fork();
        CHECK(pid >= 0, "fork");
        if (pid > 0)
            continue;
        load_api();
        /* All start together, so that start-up and allocation really overlap. */
        atomic_fetch_add(&c->ready, 1);
        while (!atomic_load(&c->go))
            usleep(100);
        CHECK_CU(A.init(0), CUDA_SUCCESS);
        CUcontext ctx = NULL;
        CUresult r;
        /* The slice may be momentarily full of the others' allocations. */
        for (int tries = 0; (r = A.retain(&ctx, 0)) == CUDA_ERROR_OUT_OF_MEMORY && tries < 2000; tries++)
            usleep(1000);
        CHECK_CU(r, CUDA_SUCCESS);
        CHECK_CU(A.set_current(ctx), CUDA_SUCCESS);
        unsigned seed = (unsigned)getpid();
        CUdeviceptr held[4] = {0};
        for (int round = 0; round < ROUNDS; round++) {
            int k = round % 4;
            if (held[k]) {
                CHECK_CU(A.free(held[k]), CUDA_SUCCESS);
                held[k] = 0;
            }
            uint64_t bytes = (8 + (uint64_t)(rand_r(&seed) % 57)) * MiB;
            r = A.alloc(&held[k], bytes);
            if (r == CUDA_SUCCESS)
                atomic_fetch_add(&c->ok, 1);
            else if (r == CUDA_ERROR_OUT_OF_MEMORY)
                atomic_fetch_add(&c->refused, 1), held[k] = 0;
            else
                atomic_fetch_add(&c->errors, 1), held[k] = 0;
            if (round % 8 == 0)
                usleep(200); /* hold for a moment, as real work would */
        }
        for (int k = 0; k < 4; k++)
            if (held[k])
                CHECK_CU(A.free(held[k]), CUDA_SUCCESS);
        CHECK_CU(A.release(0), CUDA_SUCCESS);
        _exit(0);
    }
    while (atomic_load(&c->ready) < PROCS)
        usleep(100);
    atomic_store(&c->go, 1);
    int failed = 0;
    for (int i = 0; i < PROCS; i++) {
        int status;
        wait(&status);
        failed += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    CHECK(failed == 0, "%d children failed", failed);
    uint64_t peak = fake_cuda_high_water(0);
    printf("ok=%ld refused=%ld peak=%llu MiB limit=%llu MiB\n", (long)c->ok, (long)c->refused,
           (unsigned long long)(peak / MiB), (unsigned long long)(limit / MiB));
    CHECK(c->errors == 0, "%ld allocations failed with something other than out-of-memory", (long)c->errors);
    CHECK(c->ok > 0 && c->refused > 0, "the run must both succeed and hit the limit to mean anything");
    CHECK(peak <= limit, "the processes together held %llu bytes, over the %llu limit",
          (unsigned long long)peak, (unsigned long long)limit);
    CHECK(fake_cuda_device_used(0) == 0, "the driver still holds %llu bytes",
          (unsigned long long)fake_cuda_device_used(0));
    struct vgpu_region *r = map_region();
    CHECK(region_used_total(r, region_entry_of_physical(r, 0)) == 0, "the region still counts usage");
}

/* A process killed with SIGKILL while holding memory: its share is free for
 * the next allocation, even if its PID has been reused meanwhile. */
static void case_sigkill(void)
{
    int ready[2];
    CHECK(pipe(ready) == 0, "pipe");
    pid_t child = fork();
    CHECK(child >= 0, "fork");
    if (child == 0) {
        load_api();
        open_device(0);
        CUdeviceptr p;
        CHECK_CU(A.alloc(&p, 700 * MiB), CUDA_SUCCESS);
        CHECK(write(ready[1], "k", 1) == 1, "write");
        for (;;)
            pause();
    }
    char byte;
    CHECK(read(ready[0], &byte, 1) == 1, "the child did not get its memory");
    load_api();
    open_device(0);
    CUdeviceptr p;
    CHECK_CU(A.alloc(&p, 700 * MiB), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK(kill(child, SIGKILL) == 0, "kill");
    CHECK(waitpid(child, NULL, 0) == child, "waitpid");
    fake_cuda_reap_dead(); /* the driver frees a dead process's memory */
    /* Make the dead slot claim a PID that is alive (ours' parent): liveness
     * must come from the slot lock, not from the PID. */
    struct vgpu_region *r = map_region();
    for (uint32_t i = 0; i < atomic_load(&r->header.proc_high); i++)
        if (atomic_load(&r->procs[i].pid) == child)
            atomic_store(&r->procs[i].pid, (int32_t)getppid());
    size_t free_b, total_b;
    CHECK_CU(A.info(&free_b, &total_b), CUDA_SUCCESS);
    CHECK(free_b == GiB - context_bytes(), "after the kill, free is %zu", free_b);
    CHECK_CU(A.alloc(&p, 700 * MiB), CUDA_SUCCESS);
    CHECK_CU(A.free(p), CUDA_SUCCESS);
}

/* Fail closed: a bad configuration or region makes CUDA calls fail. The
 * harness checks the message on stderr. */
static void case_fails_closed(void)
{
    load_api();
    CHECK(A.init(0) != CUDA_SUCCESS, "cuInit succeeded under a broken configuration");
    CUdeviceptr p;
    CHECK(A.alloc(&p, MiB) != CUDA_SUCCESS, "cuMemAlloc succeeded under a broken configuration");
    size_t f, t;
    CHECK(A.info(&f, &t) != CUDA_SUCCESS, "cuMemGetInfo succeeded under a broken configuration");
    CHECK(fake_cuda_device_used(0) == 0, "something reached the driver");
}

/* dlsym(RTLD_NEXT) keeps its meaning: from this program it finds libvgpu's
 * wrapper (the next object after the program), and a profiler-like library
 * preloaded before libvgpu that chains with RTLD_NEXT lands in libvgpu too. */
static void case_rtld_next(void)
{
    load_api();
    open_device(0);
    cu_fn_cuMemAlloc_v2 next = (cu_fn_cuMemAlloc_v2)dlsym(RTLD_NEXT, "cuMemAlloc_v2");
    CHECK(next, "dlsym(RTLD_NEXT) found nothing: %s", dlerror());
    CUdeviceptr p;
    CHECK_CU(next(&p, 2 * GiB), CUDA_ERROR_OUT_OF_MEMORY);
    unsigned long (*shim_calls)(void) = (unsigned long (*)(void))dlsym(RTLD_DEFAULT, "shim_calls");
    if (shim_calls) {
        unsigned long before = shim_calls();
        CHECK_CU(cuMemAlloc_v2(&p, 2 * GiB), CUDA_ERROR_OUT_OF_MEMORY);
        CHECK(shim_calls() == before + 1, "the profiler shim was bypassed");
        printf("ok through the profiler shim\n");
    }
}

/* cuGetProcAddress hands back the wrapper of exactly the ABI asked for. */
static void case_procaddr_abi(void)
{
    load_api();
    struct {
        const char *base;
        int version;
        cuuint64_t flags;
        const char *want;
    } rows[] = {
        {"cuMemAlloc", 13000, 0, "cuMemAlloc_v2"},
        {"cuMemAlloc", 2000, 0, "cuMemAlloc"},
        {"cuMemGetInfo", 12000, 0, "cuMemGetInfo_v2"},
        {"cuCtxCreate", 12050, 0, "cuCtxCreate_v4"},
        {"cuCtxCreate", 11040, 0, "cuCtxCreate_v3"},
        {"cuCtxCreate", 4000, 0, "cuCtxCreate_v2"},
        {"cuMemAllocAsync", 12000, 0, "cuMemAllocAsync"},
        {"cuMemAllocAsync", 12000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, "cuMemAllocAsync_ptsz"},
        {"cuLaunchKernel", 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, "cuLaunchKernel_ptsz"},
        {"cuLaunchKernel", 13000, CU_GET_PROC_ADDRESS_LEGACY_STREAM, "cuLaunchKernel"},
        {"cuGraphLaunch", 12000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, "cuGraphLaunch_ptsz"},
        {"cuDevicePrimaryCtxRelease", 11000, 0, "cuDevicePrimaryCtxRelease_v2"},
        {"cuGetProcAddress", 12000, 0, "cuGetProcAddress_v2"},
    };
    void *vgpu = dlopen(getenv("VGPU_TEST_LIBRARY"), RTLD_NOW | RTLD_NOLOAD);
    CHECK(vgpu, "libvgpu is not loaded");
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        void *got = proc(rows[i].base, rows[i].version, rows[i].flags);
        void *want = dlsym(vgpu, rows[i].want);
        CHECK(got == want, "cuGetProcAddress(%s, %d, %llu) is not libvgpu's %s", rows[i].base, rows[i].version,
              (unsigned long long)rows[i].flags, rows[i].want);
    }
    /* What libvgpu does not wrap comes straight from the driver. */
    void *real = dlsym(g_libcuda, "cuCtxSetCurrent");
    CHECK(proc("cuCtxSetCurrent", 13000, 0) == real, "unwrapped entry points are the driver's");
}

/* Two GPUs with different limits, however CUDA_VISIBLE_DEVICES numbers them:
 * ordinal i gets CUDA_DEVICE_MEMORY_LIMIT_i on the physical GPU behind it. */
static void case_two_devices(void)
{
    load_api();
    CHECK_CU(A.init(0), CUDA_SUCCESS);
    struct vgpu_region *r = map_region();
    CHECK_CU(A.nvml_init(), NVML_SUCCESS);
    for (int ordinal = 0; ordinal < 2; ordinal++) {
        char name[64];
        snprintf(name, sizeof name, "CUDA_DEVICE_MEMORY_LIMIT_%d", ordinal);
        uint64_t limit = env_size(name);
        int physical = fake_cuda_physical_of_ordinal(ordinal);
        CUcontext ctx;
        CHECK_CU(A.retain(&ctx, ordinal), CUDA_SUCCESS);
        CHECK_CU(A.set_current(ctx), CUDA_SUCCESS);
        size_t f, t;
        CHECK_CU(A.info(&f, &t), CUDA_SUCCESS);
        CHECK(t == limit, "ordinal %d (GPU %d): total %zu, want %llu", ordinal, physical, t,
              (unsigned long long)limit);
        uint64_t before = fake_cuda_device_used(physical);
        CUdeviceptr p;
        CHECK_CU(A.alloc(&p, limit - context_bytes() + MiB), CUDA_ERROR_OUT_OF_MEMORY);
        CHECK_CU(A.alloc(&p, limit - context_bytes() - MiB), CUDA_SUCCESS);
        CHECK(fake_cuda_device_used(physical) == before + limit - context_bytes() - MiB,
              "the memory landed on another GPU");
        int e = region_entry_of_physical(r, physical);
        CHECK(e >= 0 && atomic_load(&r->devices[e].memory_limit) == limit, "region entry of GPU %d", physical);
        CHECK(region_used_total(r, e) == limit - MiB, "usage of GPU %d is attributed to it", physical);
        nvmlDevice_t dev;
        CHECK_CU(A.nvml_handle((unsigned)physical, &dev), NVML_SUCCESS);
        nvmlMemory_t m;
        CHECK_CU(A.nvml_mem(dev, &m), NVML_SUCCESS);
        CHECK(m.total == limit, "NVML GPU %d total %llu, want %llu", physical, m.total, (unsigned long long)limit);
        CHECK_CU(A.free(p), CUDA_SUCCESS);
        printf("ok ordinal %d is GPU %d with %llu MiB\n", ordinal, physical, (unsigned long long)(limit / MiB));
    }
}

/* A program that only uses NVML (nvidia-smi, pynvml) sees the slice too. */
static void case_nvml_only(void)
{
    load_api();
    uint64_t limit = env_size("CUDA_DEVICE_MEMORY_LIMIT");
    CHECK_CU(A.nvml_init(), NVML_SUCCESS);
    nvmlDevice_t dev;
    CHECK_CU(A.nvml_handle(0, &dev), NVML_SUCCESS);
    nvmlMemory_t m;
    CHECK_CU(A.nvml_mem(dev, &m), NVML_SUCCESS);
    CHECK(m.total == limit, "NVML total %llu, slice %llu", m.total, (unsigned long long)limit);
}

/* With no limit set, programs see the whole device: proof the limits above
 * come from the configuration, not from the fake. */
static void case_unlimited(void)
{
    load_api();
    open_device(0);
    size_t f, t;
    CHECK_CU(A.info(&f, &t), CUDA_SUCCESS);
    CHECK(t == 80 * GiB, "total %zu", t);
    CUdeviceptr p;
    CHECK_CU(A.alloc(&p, 40 * GiB), CUDA_SUCCESS);
    CHECK_CU(A.free(p), CUDA_SUCCESS);
}


static int own_slot(struct vgpu_region *r)
{
    for (uint32_t i = 0; i < atomic_load(&r->header.proc_high); i++)
        if (atomic_load(&r->procs[i].pid) == getpid())
            return (int)i;
    return -1;
}

/* A process's slot carries its identity (the kernel id) and its usage, so
 * usage can be attributed. */
static void case_identity(void)
{
    load_api();
    open_device(0);
    CUdeviceptr p;
    CHECK_CU(A.alloc(&p, 100 * MiB), CUDA_SUCCESS);
    struct vgpu_region *r = map_region();
    int slot = own_slot(r);
    CHECK(slot >= 0, "no slot carries this process's pid");
    CHECK(strcmp(r->procs[slot].identity, getenv("LIBVGPU_IDENTITY")) == 0, "identity is '%s'",
          r->procs[slot].identity);
    int e = region_entry_of_physical(r, 0);
    CHECK(atomic_load(&r->procs[slot].used[e]) == context_bytes() + 100 * MiB, "slot usage %llu",
          (unsigned long long)atomic_load(&r->procs[slot].used[e]));
    CHECK_CU(A.free(p), CUDA_SUCCESS);
    CHECK(atomic_load(&r->procs[slot].used[e]) == context_bytes(), "usage after the free");
}

/* A child forked after the parent attached accounts in a slot of its own,
 * never in the parent's. */
static void case_fork_after_init(void)
{
    load_api();
    open_device(0);
    CUdeviceptr p;
    CHECK_CU(A.alloc(&p, 100 * MiB), CUDA_SUCCESS);
    struct vgpu_region *r = map_region();
    int parent_slot = own_slot(r);
    int e = region_entry_of_physical(r, 0);
    uint64_t parent_used = atomic_load(&r->procs[parent_slot].used[e]);
    pid_t child = fork();
    CHECK(child >= 0, "fork");
    if (child == 0) {
        open_device(0);
        CUdeviceptr q;
        CHECK_CU(A.alloc(&q, 200 * MiB), CUDA_SUCCESS);
        int slot = own_slot(r);
        CHECK(slot >= 0 && slot != parent_slot, "the child took slot %d, the parent's is %d", slot, parent_slot);
        CHECK(atomic_load(&r->procs[slot].used[e]) == context_bytes() + 200 * MiB, "child usage");
        _exit(0); /* without freeing: its usage must be reclaimed */
    }
    int status;
    CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed");
    CHECK(atomic_load(&r->procs[parent_slot].used[e]) == parent_used, "the child charged the parent's slot");
    fake_cuda_reap_dead();
    size_t free_b, total_b;
    CHECK_CU(A.info(&free_b, &total_b), CUDA_SUCCESS);
    CHECK(free_b == GiB - parent_used, "the dead child's share is free again: %zu", free_b);
    CHECK_CU(A.free(p), CUDA_SUCCESS);
}

/* Holds memory and some launches on every visible GPU, says "ready", and
 * waits for standard input to close: a live process for tests that read the
 * region from outside (tests/test_region_reader.py). VGPU_TEST_HOLD_MIB
 * gives the MiB to hold per GPU, VGPU_TEST_LAUNCHES the launches per GPU.
 * With VGPU_TEST_EXPECT_BROKEN set, it then launches and allocates once more
 * and checks that both fail (tests/test_shared_files.py truncates the
 * region or the turn file meanwhile). */
static void case_hold(void)
{
    load_api();
    CHECK_CU(A.init(0), CUDA_SUCCESS);
    int count = 0;
    CHECK_CU(cuDeviceGetCount(&count), CUDA_SUCCESS);
    const char *mib = getenv("VGPU_TEST_HOLD_MIB");
    const char *launches = getenv("VGPU_TEST_LAUNCHES");
    for (int d = 0; d < count; d++) {
        CUcontext ctx;
        CHECK_CU(A.retain(&ctx, d), CUDA_SUCCESS);
        CHECK_CU(A.set_current(ctx), CUDA_SUCCESS);
        CUdeviceptr p;
        CHECK_CU(A.alloc(&p, (mib ? strtoull(mib, NULL, 10) : 100) * MiB * (uint64_t)(d + 1)), CUDA_SUCCESS);
        int n = launches ? atoi(launches) : 0;
        for (int i = 0; i < n * (d + 1); i++)
            CHECK_CU(cuLaunchKernel((CUfunction)&g_pool, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL), CUDA_SUCCESS);
    }
    printf("ready\n");
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
    }
    if (getenv("VGPU_TEST_EXPECT_BROKEN")) {
        CUresult launched = cuLaunchKernel((CUfunction)&g_pool, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
        CUdeviceptr p;
        CHECK(A.alloc(&p, MiB) != CUDA_SUCCESS, "an allocation succeeded after the shared file was truncated");
        CHECK(cuLaunchKernel((CUfunction)&g_pool, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL) != CUDA_SUCCESS,
              "a launch succeeded after the shared file was truncated (the first gave %d)", (int)launched);
    }
}

/* ---- the compute share, against the fake GPU timeline -------------------- */

/* The launch entry points, reached the way VGPU_TEST_ACCESS says; each kind
 * alternates between its legacy-stream and per-thread-stream exports. */
struct launch_api {
    cu_fn_cuLaunchKernel kernel;
    cu_fn_cuLaunchKernel_ptsz kernel_ptsz;
    cu_fn_cuLaunchKernelEx ex;
    cu_fn_cuLaunchKernelEx_ptsz ex_ptsz;
    cu_fn_cuLaunchCooperativeKernel coop;
    cu_fn_cuLaunchCooperativeKernel_ptsz coop_ptsz;
    cu_fn_cuGraphLaunch graph;
    cu_fn_cuGraphLaunch_ptsz graph_ptsz;
    cu_fn_cuCtxSynchronize sync;
};

static struct launch_api L;

static void load_launch_api(void)
{
    const char *mode = getenv("VGPU_TEST_ACCESS");
    mode = mode ? mode : "direct";
    if (strcmp(mode, "direct") == 0) {
        L = (struct launch_api){cuLaunchKernel, cuLaunchKernel_ptsz, cuLaunchKernelEx, cuLaunchKernelEx_ptsz,
                                cuLaunchCooperativeKernel, cuLaunchCooperativeKernel_ptsz, cuGraphLaunch,
                                cuGraphLaunch_ptsz, cuCtxSynchronize};
    } else if (strcmp(mode, "dlsym") == 0) {
#define S(field, name) *(void **)&L.field = sym(g_libcuda, name)
        S(kernel, "cuLaunchKernel"); S(kernel_ptsz, "cuLaunchKernel_ptsz"); S(ex, "cuLaunchKernelEx");
        S(ex_ptsz, "cuLaunchKernelEx_ptsz"); S(coop, "cuLaunchCooperativeKernel");
        S(coop_ptsz, "cuLaunchCooperativeKernel_ptsz"); S(graph, "cuGraphLaunch");
        S(graph_ptsz, "cuGraphLaunch_ptsz"); S(sync, "cuCtxSynchronize");
#undef S
    } else {
        /* procaddr and ptsz alike: the per-thread exports through the flag. */
        const cuuint64_t ptds = CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
#define P(field, name, flags) *(void **)&L.field = proc(name, 13000, flags)
        P(kernel, "cuLaunchKernel", 0); P(kernel_ptsz, "cuLaunchKernel", ptds);
        P(ex, "cuLaunchKernelEx", 0); P(ex_ptsz, "cuLaunchKernelEx", ptds);
        P(coop, "cuLaunchCooperativeKernel", 0); P(coop_ptsz, "cuLaunchCooperativeKernel", ptds);
        P(graph, "cuGraphLaunch", 0); P(graph_ptsz, "cuGraphLaunch", ptds); P(sync, "cuCtxSynchronize", 0);
#undef P
    }
}

enum launch_kind { KIND_KERNEL, KIND_COOP, KIND_GRAPH };

static const char *const g_kind_exports[][4] = {
    [KIND_KERNEL] = {"cuLaunchKernel", "cuLaunchKernel_ptsz", "cuLaunchKernelEx", "cuLaunchKernelEx_ptsz"},
    [KIND_COOP] = {"cuLaunchCooperativeKernel", "cuLaunchCooperativeKernel_ptsz", NULL, NULL},
    [KIND_GRAPH] = {"cuGraphLaunch", "cuGraphLaunch_ptsz", NULL, NULL},
};

/* The i-th launch of a kind: through each of its entry points in turn. */
/* PACE_ONE_ENTRY=1: every launch through the kind's first (legacy-stream)
 * entry point, so that a turn's launches share one stream. */
static CUresult launch_one(enum launch_kind kind, uint64_t i)
{
    static int one_entry = -1;
    if (one_entry < 0) {
        const char *v = getenv("PACE_ONE_ENTRY");
        one_entry = v && strcmp(v, "1") == 0;
    }
    if (one_entry)
        i = 0;
    CUfunction f = (CUfunction)&g_pool; /* opaque to the fake; never dereferenced */
    CUlaunchConfig config = {.gridDimX = 1, .gridDimY = 1, .gridDimZ = 1, .blockDimX = 32, .blockDimY = 1,
                             .blockDimZ = 1, .hStream = NULL};
    switch (kind) {
    case KIND_KERNEL:
        switch (i % 4) {
        case 0: return L.kernel(f, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL);
        case 1: return L.kernel_ptsz(f, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL);
        case 2: return L.ex(&config, f, NULL, NULL);
        default: return L.ex_ptsz(&config, f, NULL, NULL);
        }
    case KIND_COOP:
        return i % 2 ? L.coop_ptsz(f, 1, 1, 1, 32, 1, 1, 0, NULL, NULL) : L.coop(f, 1, 1, 1, 32, 1, 1, 0, NULL, NULL);
    case KIND_GRAPH:
        return i % 2 ? L.graph_ptsz((CUgraphExec)&g_pool, NULL) : L.graph((CUgraphExec)&g_pool, NULL);
    }
    return CUDA_ERROR_INVALID_VALUE;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/*
 * Launches of one kind back to back for 1.5 s of wall time (or until 1.5 s
 * of GPU work is queued, which an uncapped process reaches at once), then
 * cuCtxSynchronize. The fake GPU gives each launch FAKE_CUDA_LAUNCH_NS
 * (graphs FAKE_CUDA_GRAPH_LAUNCH_NS) of GPU time, one after another; the
 * fraction of the wall time, from the first launch until all is drained,
 * that it was busy, and how often the launching thread slept and was
 * preempted, are printed. Under force with a share (CUDA_DEVICE_SM_LIMIT, or
 * LIBVGPU_PROCESS_SM_LIMIT where lower) the busy fraction must not exceed the
 * share by more than 5 points: load on the machine only delays launches, so
 * that bound holds however loaded the machine is.
 *
 * Everything else is judged by tests/test_libvgpu_c.py from what is printed
 * and from libvgpu's own exit report (the time it granted in turns), not
 * from how busy the fake GPU was: on a loaded machine a host that cannot
 * issue launches fast enough leaves the GPU idle inside its turns (seen: 14%
 * busy in 29% of the time granted), whatever the limiter does. How closely
 * the share is met is checked exactly by test_pacing.c, on a simulated clock.
 */
static void pace(enum launch_kind kind)
{
    const uint64_t window = 1500000000u;
    load_api();
    load_launch_api();
    open_device(0);
    /* The share: the slice's, narrowed by the process's own cap. */
    const char *limit = getenv("CUDA_DEVICE_SM_LIMIT"), *own = getenv("LIBVGPU_PROCESS_SM_LIMIT");
    const char *policy = getenv("GPU_CORE_UTILIZATION_POLICY");
    int share = limit ? atoi(limit) : 0;
    if (own && atoi(own) > 0 && (share == 0 || atoi(own) < share))
        share = atoi(own);
    /* Under default a process alone on its GPU borrows the idle time. */
    int paced = share > 0 && share < 100 && policy && strcmp(policy, "force") == 0;
    unsigned long long launched_before = 0;
    for (int e = 0; e < 4; e++)
        launched_before += fake_cuda_launch_count_by_name(g_kind_exports[kind][e]);

    struct rusage before, after;
    getrusage(RUSAGE_THREAD, &before);
    uint64_t busy0 = fake_cuda_busy_ns(0), start = now_ns(), n = 0;
    while (now_ns() - start < window && fake_cuda_busy_ns(0) - busy0 < window) {
        CUresult r = launch_one(kind, n);
        CHECK(r == CUDA_SUCCESS, "launch %llu returned %d", (unsigned long long)n, r);
        n++;
    }
    getrusage(RUSAGE_THREAD, &after);
    CHECK_CU(L.sync(), CUDA_SUCCESS);
    uint64_t end = now_ns(), busy = fake_cuda_busy_ns(0) - busy0;
    CHECK(fake_cuda_busy_until(0) <= end, "cuCtxSynchronize returned before the GPU was idle");

    unsigned long long launched = 0;
    for (int e = 0; e < 4; e++)
        launched += fake_cuda_launch_count_by_name(g_kind_exports[kind][e]);
    CHECK(launched - launched_before == n, "%llu launches reached the driver, %llu were made",
          launched - launched_before, (unsigned long long)n);
    double percent = 100.0 * (double)busy / (double)(end - start);
    printf("busy %.1f%% of %.3f s (%llu launches of %.2f ms of GPU time, %s, share %d%%, policy %s); "
           "the launching thread slept %ld times, was preempted %ld times\n", percent,
           (double)(end - start) / 1e9, (unsigned long long)n, n ? (double)busy / (double)n / 1e6 : 0.0,
           kind == KIND_KERNEL ? "kernels" : kind == KIND_COOP ? "cooperative kernels" : "graphs", share,
           policy ? policy : "unset", after.ru_nvcsw - before.ru_nvcsw, after.ru_nivcsw - before.ru_nivcsw);
    if (paced)
        CHECK(percent <= share + 5.0, "the GPU was busy %.1f%% of the time, cap %d%%", percent, share);
}

static void case_pace_kernel(void) { pace(KIND_KERNEL); }
static void case_pace_coop(void) { pace(KIND_COOP); }
static void case_pace_graph(void) { pace(KIND_GRAPH); }

static const struct test_case g_cases[] = {
    {"paths", case_paths},
    {"info", case_info},
    {"null_pointers", case_null_pointers},
    {"legacy", case_legacy},
    {"process_cap", case_process_cap},
    {"live_limit", case_live_limit},
    {"contexts", case_contexts},
    {"concurrent", case_concurrent},
    {"sigkill", case_sigkill},
    {"fails_closed", case_fails_closed},
    {"rtld_next", case_rtld_next},
    {"procaddr_abi", case_procaddr_abi},
    {"two_devices", case_two_devices},
    {"nvml_only", case_nvml_only},
    {"unlimited", case_unlimited},
    {"identity", case_identity},
    {"fork_after_init", case_fork_after_init},
    {"hold", case_hold},
    {"pace_kernel", case_pace_kernel},
    {"pace_coop", case_pace_coop},
    {"pace_graph", case_pace_graph},
};

int main(int argc, char **argv) { return run_case(argc, argv, g_cases, sizeof g_cases / sizeof g_cases[0]); }
