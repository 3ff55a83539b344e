/*
 * Self-test of the fake driver. Prints one line per check ("ok - ..." or
 * "FAIL - ...") and exits nonzero if any check failed.
 *
 * The fake reads its configuration when it is loaded, so each scenario runs
 * in a fresh process: main() re-executes this binary with the scenario's
 * name and environment and collects the exit statuses.
 */
#define _GNU_SOURCE
#include "fake_abi_ext.h"
#include "fake_control.h"
#include "fake_state.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MiB (1ULL << 20)
#define GiB (1ULL << 30)
#define CTX (64 * MiB) /* FAKE_CUDA_CONTEXT_SIZE in every scenario */

/* ---- checking ----------------------------------------------------------- */

static int g_failures;
static const char *g_scenario = "main";

static void check(bool ok, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%s - [%s] ", ok ? "ok" : "FAIL", g_scenario);
    vprintf(fmt, ap);
    if (!ok)
        printf("  (selftest.c:%d)", line);
    printf("\n");
    va_end(ap);
    if (!ok)
        g_failures++;
}

#define CHECK(cond, ...) check((cond), __LINE__, __VA_ARGS__)

#define CHECK_RC(call, want)                                                               \
    do {                                                                                   \
        int rc_ = (call);                                                                  \
        check(rc_ == (int)(want), __LINE__, "%s == %d (got %d)", #call, (int)(want), rc_); \
    } while (0)

#define CHECK_EQ(what, got, want)                                                          \
    do {                                                                                   \
        unsigned long long got_ = (got), want_ = (want);                                   \
        check(got_ == want_, __LINE__, "%s: %llu (want %llu)", what, got_, want_);         \
    } while (0)

/* Opaque non-NULL handles for launch arguments; never dereferenced. */
static char g_dummy[4];
#define FUNC ((CUfunction)(void *)&g_dummy[0])
#define CONFIG ((const CUlaunchConfig *)(const void *)&g_dummy[1])
#define GRAPH ((CUgraphExec)(void *)&g_dummy[2])
#define BOGUS_EVENT ((CUevent)(void *)&g_dummy[3])

/* ---- processes ---------------------------------------------------------- */

static const char *const g_cleared_env[] = {
    "FAKE_CUDA_DEVICE_COUNT", "FAKE_CUDA_DEVICE_MEMORY", "FAKE_CUDA_CONTEXT_SIZE",
    "FAKE_CUDA_STATE",        "FAKE_CUDA_DRIVER_VERSION", "CUDA_VISIBLE_DEVICES",
    "FAKE_CUDA_LAUNCH_NS",    "FAKE_CUDA_GRAPH_LAUNCH_NS",
    NULL,
};

/* Run this binary again as `selftest scenario [arg1 [arg2]]` with the fake's
 * variables replaced by env ("NAME=VALUE" strings, NULL-terminated). */
static pid_t spawn_self(const char *scenario, const char *arg1, const char *arg2,
                        const char *const *env)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    for (const char *const *v = g_cleared_env; *v; v++)
        unsetenv(*v);
    for (const char *const *e = env; e && *e; e++) {
        char *kv = strdup(*e); /* putenv keeps the string */
        if (!kv || putenv(kv) != 0)
            _exit(126);
    }
    execl("/proc/self/exe", "fake_selftest", scenario, arg1, arg2, (char *)NULL);
    perror("exec /proc/self/exe");
    _exit(127);
}

/* Exit status, or 128 + signal. */
static int wait_for(pid_t pid)
{
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return 255;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void write_byte(int fd)
{
    char c = 1;
    while (write(fd, &c, 1) < 0 && errno == EINTR) {
    }
}

static bool read_byte(int fd)
{
    char c;
    ssize_t r;
    while ((r = read(fd, &c, 1)) < 0 && errno == EINTR) {
    }
    return r == 1;
}

/* ---- helpers ------------------------------------------------------------ */

static CUcontext make_primary_current(CUdevice dev)
{
    CUcontext ctx = NULL;
    CHECK_RC(cuDevicePrimaryCtxRetain(&ctx, dev), CUDA_SUCCESS);
    CHECK_RC(cuCtxSetCurrent(ctx), CUDA_SUCCESS);
    return ctx;
}

static CUmemAllocationProp vmm_prop(int type, int location_type, int id)
{
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = type;
    prop.location.type = location_type;
    prop.location.id = id;
    return prop;
}

/* Bytes charged by creating an array, checked to come back on destroy. */
static void check_array_2d(const char *what, size_t w, size_t h, CUarray_format f, unsigned ch,
                           unsigned long long want)
{
    CUDA_ARRAY_DESCRIPTOR d = {w, h, f, ch};
    CUarray arr = NULL;
    unsigned long long before = fake_cuda_device_used(0);
    CHECK_RC(cuArrayCreate_v2(&arr, &d), CUDA_SUCCESS);
    CHECK_EQ(what, fake_cuda_device_used(0) - before, want);
    CHECK_RC(cuArrayDestroy(arr), CUDA_SUCCESS);
    CHECK_EQ("array destroyed: usage restored", fake_cuda_device_used(0), before);
}

static void check_array_3d(const char *what, size_t w, size_t h, size_t d, CUarray_format f,
                           unsigned ch, unsigned flags, unsigned long long want)
{
    CUDA_ARRAY3D_DESCRIPTOR desc = {w, h, d, f, ch, flags};
    CUarray arr = NULL;
    unsigned long long before = fake_cuda_device_used(0);
    CHECK_RC(cuArray3DCreate_v2(&arr, &desc), CUDA_SUCCESS);
    CHECK_EQ(what, fake_cuda_device_used(0) - before, want);
    CHECK_RC(cuArrayDestroy(arr), CUDA_SUCCESS);
}

static void check_mipmap(const char *what, size_t w, size_t h, size_t d, CUarray_format f,
                         unsigned ch, unsigned flags, unsigned levels, unsigned long long want)
{
    CUDA_ARRAY3D_DESCRIPTOR desc = {w, h, d, f, ch, flags};
    CUmipmappedArray arr = NULL;
    unsigned long long before = fake_cuda_device_used(0);
    CHECK_RC(cuMipmappedArrayCreate(&arr, &desc, levels), CUDA_SUCCESS);
    CHECK_EQ(what, fake_cuda_device_used(0) - before, want);
    CHECK_RC(cuMipmappedArrayDestroy(arr), CUDA_SUCCESS);
    CHECK_EQ("mipmap destroyed: usage restored", fake_cuda_device_used(0), before);
}

/* ---- scenario: one process, 2 devices of 8 GiB and 4 GiB ---------------- */

static void basic_before_init(void)
{
    int n;
    CUdevice dev;
    CUdeviceptr p;
    int version = 0;
    void *fn = NULL;
    CUdriverProcAddressQueryResult st = -1;

    CHECK_RC(cuDeviceGetCount(&n), CUDA_ERROR_NOT_INITIALIZED);
    CHECK_RC(cuMemAlloc_v2(&p, 1), CUDA_ERROR_NOT_INITIALIZED);
    CHECK_RC(cuCtxGetDevice(&dev), CUDA_ERROR_NOT_INITIALIZED);
    CHECK_RC(cuDevicePrimaryCtxRetain(NULL, 0), CUDA_ERROR_NOT_INITIALIZED);
    CUevent ev;
    CUstreamCaptureStatus capture;
    CHECK_RC(cuCtxSynchronize(), CUDA_ERROR_NOT_INITIALIZED);
    CHECK_RC(cuEventCreate(&ev, 0), CUDA_ERROR_NOT_INITIALIZED);
    CHECK_RC(cuEventQuery(BOGUS_EVENT), CUDA_ERROR_NOT_INITIALIZED);
    CHECK_RC(cuStreamIsCapturing(NULL, &capture), CUDA_ERROR_NOT_INITIALIZED);
    CHECK_RC(cuDriverGetVersion(&version), CUDA_SUCCESS);
    CHECK_EQ("cuDriverGetVersion default", version, 13000);
    CHECK_RC(cuGetProcAddress_v2("cuInit", &fn, 12000, 0, &st), CUDA_SUCCESS);
    CHECK(fn == (void *)&cuInit, "cuGetProcAddress works before cuInit (cudart needs it)");
    CHECK_RC(cuInit(1), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuDeviceGetCount(&n), CUDA_ERROR_NOT_INITIALIZED);
    CHECK_RC(cuInit(0), CUDA_SUCCESS);
    CHECK_RC(cuInit(0), CUDA_SUCCESS);
}

static void basic_devices(void)
{
    int n = -1;
    CUdevice dev = -1;
    char name[64];
    size_t total = 0;
    unsigned total32 = 0;
    CUuuid uuid;

    CHECK_RC(cuDeviceGetCount(&n), CUDA_SUCCESS);
    CHECK_EQ("device count", n, 2);
    CHECK_RC(cuDeviceGetCount(NULL), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuDeviceGet(&dev, 1), CUDA_SUCCESS);
    CHECK_EQ("cuDeviceGet(1)", dev, 1);
    CHECK_RC(cuDeviceGet(&dev, 2), CUDA_ERROR_INVALID_DEVICE);
    CHECK_RC(cuDeviceGet(NULL, 0), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuDeviceGetName(name, sizeof name, 0), CUDA_SUCCESS);
    CHECK(strcmp(name, "Fake GPU") == 0, "device name \"%s\"", name);
    CHECK_RC(cuDeviceGetName(name, 5, 0), CUDA_SUCCESS);
    CHECK(strcmp(name, "Fake") == 0, "device name truncated to the buffer: \"%s\"", name);
    CHECK_RC(cuDeviceTotalMem_v2(&total, 0), CUDA_SUCCESS);
    CHECK_EQ("total memory of device 0", total, 8 * GiB);
    CHECK_RC(cuDeviceTotalMem_v2(&total, 1), CUDA_SUCCESS);
    CHECK_EQ("total memory of device 1 (comma list)", total, 4 * GiB);
    CHECK_RC(cuDeviceTotalMem_v2(&total, 2), CUDA_ERROR_INVALID_DEVICE);
    CHECK_RC(cuDeviceGetUuid_v2(&uuid, 1), CUDA_SUCCESS);
    static const unsigned char want[16] = {0xfa, 0xce, 0x00, 0x01, 0x10, 0x20, 0x30, 0x40,
                                           0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0};
    CHECK(memcmp(uuid.bytes, want, 16) == 0, "UUID of device 1 is fa ce 00 01 10 20 ... c0");
    CHECK_RC(cuDeviceGetUuid(&uuid, 0), CUDA_SUCCESS);
    CHECK(uuid.bytes[3] == 0, "UUID (v1) of device 0 ends its prefix in 00");
    CHECK_RC(cuDeviceGetUuid(NULL, 0), CUDA_ERROR_INVALID_VALUE);

    /* legacy 32-bit ABI */
    CUdeviceptr_v1 p32;
    unsigned pitch32;
    CUarray arr;
    CHECK_RC(cuMemAlloc(&p32, 16), CUDA_ERROR_NOT_SUPPORTED);
    CHECK_RC(cuMemAllocPitch(&p32, &pitch32, 16, 16, 4), CUDA_ERROR_NOT_SUPPORTED);
    CHECK_RC(cuMemFree(p32), CUDA_ERROR_NOT_SUPPORTED);
    CHECK_RC(cuMemGetInfo(&total32, &total32), CUDA_ERROR_NOT_SUPPORTED);
    CHECK_RC(cuDeviceTotalMem(&total32, 0), CUDA_ERROR_NOT_SUPPORTED);
    CHECK_RC(cuArrayCreate(&arr, name), CUDA_ERROR_NOT_SUPPORTED);
    CHECK_RC(cuArray3DCreate(&arr, name), CUDA_ERROR_NOT_SUPPORTED);
}

static void basic_no_context(void)
{
    CUdeviceptr p;
    size_t fr, tot;
    CUdevice dev;
    CUDA_ARRAY_DESCRIPTOR d = {16, 16, CU_AD_FORMAT_FLOAT, 1};
    CUarray arr;
    CHECK_RC(cuMemAlloc_v2(&p, 1), CUDA_ERROR_INVALID_CONTEXT);
    CHECK_RC(cuMemGetInfo_v2(&fr, &tot), CUDA_ERROR_INVALID_CONTEXT);
    CHECK_RC(cuCtxGetDevice(&dev), CUDA_ERROR_INVALID_CONTEXT);
    CHECK_RC(cuArrayCreate_v2(&arr, &d), CUDA_ERROR_INVALID_CONTEXT);
    CHECK_RC(cuLaunchKernel(FUNC, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL), CUDA_ERROR_INVALID_CONTEXT);
    CUevent ev;
    CHECK_RC(cuCtxSynchronize(), CUDA_ERROR_INVALID_CONTEXT);
    CHECK_RC(cuEventCreate(&ev, 0), CUDA_ERROR_INVALID_CONTEXT);
    CHECK_EQ("nothing charged yet", fake_cuda_device_used(0) + fake_cuda_device_used(1), 0);
}

static void basic_linear_memory(void)
{
    CUdeviceptr p = 0, q = 0;
    size_t fr = 0, tot = 0, pitch = 0;
    CUdevice dev = -1;

    CUcontext ctx = make_primary_current(0);
    CHECK_EQ("primary context charges FAKE_CUDA_CONTEXT_SIZE", fake_cuda_device_used(0), CTX);
    CUcontext again = NULL;
    CHECK_RC(cuDevicePrimaryCtxRetain(&again, 0), CUDA_SUCCESS);
    CHECK(again == ctx, "retaining again gives the same primary context");
    CHECK_EQ("second retain charges nothing", fake_cuda_device_used(0), CTX);
    CHECK_RC(cuDevicePrimaryCtxRelease_v2(0), CUDA_SUCCESS);
    CHECK_EQ("release to refcount 1 keeps the charge", fake_cuda_device_used(0), CTX);
    CHECK_RC(cuCtxGetDevice(&dev), CUDA_SUCCESS);
    CHECK_EQ("cuCtxGetDevice", dev, 0);

    CHECK_RC(cuMemGetInfo_v2(&fr, &tot), CUDA_SUCCESS);
    CHECK_EQ("cuMemGetInfo total", tot, 8 * GiB);
    CHECK_EQ("cuMemGetInfo free", fr, 8 * GiB - CTX);
    fr = 12345;
    CHECK_RC(cuMemGetInfo_v2(NULL, &tot), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuMemGetInfo_v2(&fr, NULL), CUDA_ERROR_INVALID_VALUE);
    CHECK_EQ("cuMemGetInfo with a NULL writes nothing", fr, 12345);

    CHECK_RC(cuMemAlloc_v2(&p, GiB), CUDA_SUCCESS);
    CHECK_EQ("1 GiB allocation charged", fake_cuda_device_used(0), CTX + GiB);
    ((volatile char *)(uintptr_t)p)[0] = 1;
    ((volatile char *)(uintptr_t)p)[GiB - 1] = 2;
    CHECK(((volatile char *)(uintptr_t)p)[GiB - 1] == 2, "allocation is touchable host memory");
    CHECK_RC(cuMemFree_v2(p), CUDA_SUCCESS);
    CHECK_EQ("free uncharges exactly", fake_cuda_device_used(0), CTX);
    CHECK_RC(cuMemFree_v2(p), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuMemFree_v2(0x1234), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuMemAlloc_v2(&p, 0), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuMemAlloc_v2(NULL, 16), CUDA_ERROR_INVALID_VALUE);

    /* OOM exactly at the device size */
    CHECK_RC(cuMemAlloc_v2(&p, 8 * GiB - CTX), CUDA_SUCCESS);
    CHECK_RC(cuMemGetInfo_v2(&fr, &tot), CUDA_SUCCESS);
    CHECK_EQ("device full: free", fr, 0);
    q = 0;
    CHECK_RC(cuMemAlloc_v2(&q, 1), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK_EQ("failed allocation writes nothing", q, 0);
    CHECK_EQ("failed allocation charges nothing", fake_cuda_device_used(0), 8 * GiB);
    CHECK_RC(cuMemFree_v2(p), CUDA_SUCCESS);
    CHECK_RC(cuMemAlloc_v2(&p, 8 * GiB), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK_RC(cuMemAlloc_v2(&p, (size_t)-1), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK_EQ("after OOMs", fake_cuda_device_used(0), CTX);

    /* pitch */
    CHECK_RC(cuMemAllocPitch_v2(&p, &pitch, 1000, 10, 4), CUDA_SUCCESS);
    CHECK_EQ("pitch rounded up to 512", pitch, 1024);
    CHECK_EQ("pitched allocation = pitch * height", fake_cuda_device_used(0) - CTX, 10240);
    CHECK_RC(cuMemFree_v2(p), CUDA_SUCCESS);
    CHECK_RC(cuMemAllocPitch_v2(&p, &pitch, 1000, 10, 3), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuMemAllocPitch_v2(&p, NULL, 1000, 10, 4), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuMemAllocPitch_v2(&p, &pitch, 0, 10, 4), CUDA_ERROR_INVALID_VALUE);

    /* managed */
    CHECK_RC(cuMemAllocManaged(&p, 4096, 0), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuMemAllocManaged(&p, 4096, CU_MEM_ATTACH_GLOBAL), CUDA_SUCCESS);
    CHECK_EQ("managed memory charged to the device", fake_cuda_device_used(0) - CTX, 4096);
    CHECK_RC(cuMemFree_v2(p), CUDA_SUCCESS);

    /* stream-ordered */
    CHECK_RC(cuMemAllocAsync(&p, MiB, NULL), CUDA_SUCCESS);
    CHECK_RC(cuMemAllocAsync_ptsz(&q, MiB, NULL), CUDA_SUCCESS);
    CHECK_EQ("async allocations charged", fake_cuda_device_used(0) - CTX, 2 * MiB);
    CHECK_RC(cuMemFreeAsync(p, NULL), CUDA_SUCCESS);
    CHECK_RC(cuMemFreeAsync_ptsz(q, NULL), CUDA_SUCCESS);
    CHECK_RC(cuMemFreeAsync(q, NULL), CUDA_ERROR_INVALID_VALUE);
    CHECK_EQ("async frees", fake_cuda_device_used(0), CTX);

    /* pools */
    CUmemoryPool pool = NULL;
    char props[88] = {0};
    CHECK_RC(cuMemAllocFromPoolAsync(&p, MiB, NULL, NULL), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuMemPoolCreate(&pool, NULL), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuMemPoolCreate(&pool, props), CUDA_SUCCESS);
    CHECK_RC(cuMemAllocFromPoolAsync(&p, MiB, pool, NULL), CUDA_SUCCESS);
    CHECK_RC(cuMemAllocFromPoolAsync_ptsz(&q, MiB, pool, NULL), CUDA_SUCCESS);
    CHECK_EQ("pool allocations charged", fake_cuda_device_used(0) - CTX, 2 * MiB);
    CHECK_RC(cuMemPoolDestroy(pool), CUDA_SUCCESS);
    CHECK_RC(cuMemPoolDestroy(pool), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuMemAllocFromPoolAsync(&p, MiB, pool, NULL), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuMemFreeAsync(p, NULL), CUDA_SUCCESS);
    CHECK_RC(cuMemFree_v2(q), CUDA_SUCCESS);
    CHECK_EQ("pool allocations outlive the pool and free", fake_cuda_device_used(0), CTX);
}

static void basic_arrays(void)
{
    CUarray arr = NULL;
    CUDA_ARRAY_DESCRIPTOR bad = {16, 16, CU_AD_FORMAT_FLOAT, 3};
    CHECK_RC(cuArrayCreate_v2(&arr, &bad), CUDA_ERROR_INVALID_VALUE);
    bad.NumChannels = 1;
    bad.Width = 0;
    CHECK_RC(cuArrayCreate_v2(&arr, &bad), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuArrayCreate_v2(NULL, &bad), CUDA_ERROR_INVALID_VALUE);

    check_array_2d("1D float4 array 100 wide", 100, 0, CU_AD_FORMAT_FLOAT, 4, 1600);
    check_array_2d("2D ushort2 64x32", 64, 32, CU_AD_FORMAT_UNSIGNED_INT16, 2, 8192);
    check_array_2d("2D int8 3x3", 3, 3, CU_AD_FORMAT_SIGNED_INT8, 1, 9);
    check_array_3d("3D half 16x16x4", 16, 16, 4, CU_AD_FORMAT_HALF, 1, 0, 2048);
    check_array_3d("3D-API 1D float 10", 10, 0, 0, CU_AD_FORMAT_FLOAT, 1, 0, 40);
    check_array_3d("layered 8x8, 3 layers", 8, 8, 3, CU_AD_FORMAT_UNSIGNED_INT8, 1,
                   CUDA_ARRAY3D_LAYERED, 192);
    check_array_3d("cubemap uchar4 32x32", 32, 32, 6, CU_AD_FORMAT_UNSIGNED_INT8, 4,
                   CUDA_ARRAY3D_CUBEMAP, 24576);
    check_array_3d("layered cubemap 32x32x12", 32, 32, 12, CU_AD_FORMAT_UNSIGNED_INT8, 4,
                   CUDA_ARRAY3D_CUBEMAP | CUDA_ARRAY3D_LAYERED, 49152);

    CUDA_ARRAY3D_DESCRIPTOR cube = {32, 32, 5, CU_AD_FORMAT_UNSIGNED_INT8, 1, CUDA_ARRAY3D_CUBEMAP};
    CHECK_RC(cuArray3DCreate_v2(&arr, &cube), CUDA_ERROR_INVALID_VALUE);
    cube.Depth = 6;
    cube.Height = 16;
    CHECK_RC(cuArray3DCreate_v2(&arr, &cube), CUDA_ERROR_INVALID_VALUE);

    CHECK_RC(cuArrayDestroy(arr), CUDA_ERROR_INVALID_HANDLE);
    CHECK_RC(cuArrayDestroy(NULL), CUDA_ERROR_INVALID_HANDLE);

    check_mipmap("mipmap float 64x64, 3 levels", 64, 64, 0, CU_AD_FORMAT_FLOAT, 1, 0, 3, 21504);
    check_mipmap("mipmap 8x8 x5 layers, levels clamped to 4", 8, 8, 5, CU_AD_FORMAT_UNSIGNED_INT8,
                 1, CUDA_ARRAY3D_LAYERED, 10, 425);
    check_mipmap("mipmap 3D 8x4x2, 2 levels", 8, 4, 2, CU_AD_FORMAT_UNSIGNED_INT8, 1, 0, 2, 72);
    check_mipmap("mipmap 1D 16, 99 levels clamped to 5", 16, 0, 0, CU_AD_FORMAT_UNSIGNED_INT8, 1, 0,
                 99, 31);
    check_mipmap("mipmap cubemap 16x16, 2 levels", 16, 16, 6, CU_AD_FORMAT_UNSIGNED_INT8, 1,
                 CUDA_ARRAY3D_CUBEMAP, 2, 1920);

    CUDA_ARRAY3D_DESCRIPTOR d = {16, 16, 0, CU_AD_FORMAT_FLOAT, 1, 0};
    CUmipmappedArray mm = NULL;
    CHECK_RC(cuMipmappedArrayCreate(&mm, &d, 0), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuMipmappedArrayCreate(&mm, &d, 1), CUDA_SUCCESS);
    CHECK_RC(cuArrayDestroy((CUarray)(void *)mm), CUDA_ERROR_INVALID_HANDLE);
    CHECK_RC(cuMipmappedArrayDestroy(mm), CUDA_SUCCESS);
    CHECK_RC(cuMipmappedArrayDestroy(mm), CUDA_ERROR_INVALID_HANDLE);
    CHECK_EQ("arrays all freed", fake_cuda_device_used(0), CTX);
}

static void basic_vmm(void)
{
    CUmemGenericAllocationHandle h = 0, h2 = 0;
    CUcontext popped = NULL;
    CUdevice dev;
    CHECK_RC(cuCtxPopCurrent_v2(&popped), CUDA_SUCCESS);
    CHECK_RC(cuCtxGetDevice(&dev), CUDA_ERROR_INVALID_CONTEXT);

    CUmemAllocationProp prop =
        vmm_prop(CU_MEM_ALLOCATION_TYPE_PINNED, CU_MEM_LOCATION_TYPE_DEVICE, 1);
    CHECK_RC(cuMemCreate(&h, 2 * MiB, &prop, 0), CUDA_SUCCESS);
    CHECK_EQ("cuMemCreate charges location.id's device without a context",
             fake_cuda_device_used(1), 2 * MiB);
    CHECK_EQ("cuMemCreate leaves the other device alone", fake_cuda_device_used(0), CTX);
    CHECK_RC(cuMemCreate(&h2, 3 * MiB, &prop, 0), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuMemCreate(&h2, 2 * MiB, &prop, 1), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuMemCreate(&h2, 2 * MiB, NULL, 0), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuMemCreate(&h2, 4 * GiB, &prop, 0), CUDA_ERROR_OUT_OF_MEMORY);
    CUmemAllocationProp host = vmm_prop(CU_MEM_ALLOCATION_TYPE_PINNED, CU_MEM_LOCATION_TYPE_HOST, 0);
    CHECK_RC(cuMemCreate(&h2, 2 * MiB, &host, 0), CUDA_ERROR_INVALID_VALUE);
    CUmemAllocationProp far = vmm_prop(CU_MEM_ALLOCATION_TYPE_PINNED, CU_MEM_LOCATION_TYPE_DEVICE, 2);
    CHECK_RC(cuMemCreate(&h2, 2 * MiB, &far, 0), CUDA_ERROR_INVALID_DEVICE);
    CUmemAllocationProp untyped = vmm_prop(0, CU_MEM_LOCATION_TYPE_DEVICE, 0);
    CHECK_RC(cuMemCreate(&h2, 2 * MiB, &untyped, 0), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuMemFree_v2((CUdeviceptr)h), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuMemRelease(h), CUDA_SUCCESS);
    CHECK_RC(cuMemRelease(h), CUDA_ERROR_INVALID_VALUE);
    CHECK_EQ("cuMemRelease uncharges", fake_cuda_device_used(1), 0);
    CHECK_RC(cuCtxPushCurrent_v2(popped), CUDA_SUCCESS);
}

static void basic_contexts(CUcontext primary0)
{
    CUcontext c1 = NULL, cur = NULL;
    CUdevice dev = -1;
    CUdeviceptr p = 0;

    CHECK_RC(cuCtxCreate_v2(&c1, 0, 1), CUDA_SUCCESS);
    CHECK_EQ("cuCtxCreate charges a context", fake_cuda_device_used(1), CTX);
    CHECK_RC(cuCtxGetCurrent(&cur), CUDA_SUCCESS);
    CHECK(cur == c1, "cuCtxCreate makes the new context current");
    CHECK_RC(cuCtxGetDevice(&dev), CUDA_SUCCESS);
    CHECK_EQ("device of the created context", dev, 1);
    CHECK_RC(cuMemAlloc_v2(&p, MiB), CUDA_SUCCESS);
    CHECK_EQ("allocation charged to the current context's device", fake_cuda_device_used(1),
             CTX + MiB);
    CHECK_EQ("device 0 untouched", fake_cuda_device_used(0), CTX);
    CHECK_RC(cuCtxDestroy_v2(c1), CUDA_SUCCESS);
    CHECK_EQ("destroying a context frees its memory and itself", fake_cuda_device_used(1), 0);
    CHECK_RC(cuCtxGetCurrent(&cur), CUDA_SUCCESS);
    CHECK(cur == primary0, "destroy popped the context, the primary is current again");
    CHECK_RC(cuMemFree_v2(p), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuCtxDestroy_v2(c1), CUDA_ERROR_INVALID_CONTEXT);
    CHECK_RC(cuCtxDestroy_v2(NULL), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuCtxDestroy_v2(primary0), CUDA_ERROR_INVALID_CONTEXT);
    CHECK_RC(cuCtxSetCurrent(c1), CUDA_ERROR_INVALID_CONTEXT);
    CHECK_RC(cuCtxSetCurrent((CUcontext)(void *)&dev), CUDA_ERROR_INVALID_CONTEXT);
    CHECK_RC(cuCtxCreate_v2(&c1, 0, 2), CUDA_ERROR_INVALID_DEVICE);

    CHECK_RC(cuCtxCreate(&c1, 0, 1), CUDA_SUCCESS);
    CHECK_RC(cuCtxDestroy(c1), CUDA_SUCCESS);
    CHECK_RC(cuCtxCreate_v3(&c1, NULL, 0, 0, 1), CUDA_SUCCESS);
    CHECK_RC(cuCtxDestroy(c1), CUDA_SUCCESS);
    CHECK_RC(cuCtxCreate_v4(&c1, NULL, 0, 1), CUDA_SUCCESS);
    CHECK_EQ("cuCtxCreate_v4 charges", fake_cuda_device_used(1), CTX);
    CHECK_RC(cuCtxDestroy_v2(c1), CUDA_SUCCESS);
    CHECK_EQ("v1/v3/v4 create+destroy balance", fake_cuda_device_used(1), 0);

    /* the context stack */
    CHECK_RC(cuCtxCreate_v2(&c1, 0, 1), CUDA_SUCCESS);
    CHECK_RC(cuCtxPopCurrent_v2(&cur), CUDA_SUCCESS);
    CHECK(cur == c1, "pop returns the top");
    CHECK_RC(cuCtxGetCurrent(&cur), CUDA_SUCCESS);
    CHECK(cur == primary0, "pop uncovers the previous context");
    CHECK_RC(cuCtxPushCurrent_v2(c1), CUDA_SUCCESS);
    CHECK_RC(cuCtxGetDevice(&dev), CUDA_SUCCESS);
    CHECK_EQ("pushed context current", dev, 1);
    CHECK_RC(cuCtxSetCurrent(NULL), CUDA_SUCCESS); /* pops c1 */
    CHECK_RC(cuCtxSetCurrent(NULL), CUDA_SUCCESS); /* pops primary0 */
    CHECK_RC(cuCtxGetCurrent(&cur), CUDA_SUCCESS);
    CHECK(cur == NULL, "stack empty after two NULL SetCurrent");
    CHECK_RC(cuCtxPopCurrent_v2(&cur), CUDA_ERROR_INVALID_CONTEXT);
    CHECK_RC(cuCtxDestroy_v2(c1), CUDA_SUCCESS);
    CHECK_RC(cuCtxSetCurrent(primary0), CUDA_SUCCESS);

    /* primary context release and reset */
    CHECK_RC(cuMemAlloc_v2(&p, GiB), CUDA_SUCCESS);
    CHECK_RC(cuDevicePrimaryCtxReset_v2(0), CUDA_SUCCESS);
    CHECK_EQ("reset frees the primary context and its memory", fake_cuda_device_used(0), 0);
    CHECK_RC(cuMemAlloc_v2(&p, MiB), CUDA_ERROR_INVALID_CONTEXT);
    CHECK_RC(cuDevicePrimaryCtxRelease_v2(0), CUDA_ERROR_INVALID_CONTEXT);
    CHECK_RC(cuDevicePrimaryCtxReset(0), CUDA_SUCCESS);
    CUcontext again = NULL;
    CHECK_RC(cuDevicePrimaryCtxRetain(&again, 0), CUDA_SUCCESS);
    CHECK(again == primary0, "primary context handle is stable across reset");
    CHECK_RC(cuMemAlloc_v2(&p, MiB), CUDA_SUCCESS);
    CHECK_RC(cuDevicePrimaryCtxRelease(0), CUDA_SUCCESS);
    CHECK_EQ("release to 0 frees context and memory", fake_cuda_device_used(0), 0);
    CHECK_RC(cuDevicePrimaryCtxRetain(&again, 0), CUDA_SUCCESS);
    CHECK_EQ("retained again", fake_cuda_device_used(0), CTX);
}

static void basic_high_water(void)
{
    CUdeviceptr p;
    fake_cuda_reset_high_water(0);
    CHECK_EQ("high water reset to current use", fake_cuda_high_water(0), CTX);
    CHECK_RC(cuMemAlloc_v2(&p, 2 * GiB), CUDA_SUCCESS);
    CHECK_RC(cuMemFree_v2(p), CUDA_SUCCESS);
    CHECK_RC(cuMemAlloc_v2(&p, GiB), CUDA_SUCCESS);
    CHECK_RC(cuMemFree_v2(p), CUDA_SUCCESS);
    CHECK_EQ("high water keeps the peak", fake_cuda_high_water(0), CTX + 2 * GiB);
    CHECK_EQ("used back down", fake_cuda_device_used(0), CTX);
}

static void basic_launches(void)
{
    unsigned long long before = fake_cuda_launch_count();
    CHECK_RC(cuLaunchKernel(FUNC, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL), CUDA_SUCCESS);
    CHECK_RC(cuLaunchKernel_ptsz(FUNC, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL), CUDA_SUCCESS);
    CHECK_RC(cuLaunchKernelEx(CONFIG, FUNC, NULL, NULL), CUDA_SUCCESS);
    CHECK_RC(cuLaunchKernelEx_ptsz(CONFIG, FUNC, NULL, NULL), CUDA_SUCCESS);
    CHECK_RC(cuLaunchCooperativeKernel(FUNC, 1, 1, 1, 1, 1, 1, 0, NULL, NULL), CUDA_SUCCESS);
    CHECK_RC(cuLaunchCooperativeKernel_ptsz(FUNC, 1, 1, 1, 1, 1, 1, 0, NULL, NULL), CUDA_SUCCESS);
    CHECK_RC(cuGraphLaunch(GRAPH, NULL), CUDA_SUCCESS);
    CHECK_RC(cuGraphLaunch_ptsz(GRAPH, NULL), CUDA_SUCCESS);
    CHECK_RC(cuLaunchKernel(NULL, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuLaunchKernelEx(NULL, FUNC, NULL, NULL), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuGraphLaunch(NULL, NULL), CUDA_ERROR_INVALID_HANDLE);
    CHECK_EQ("launch counter counts successful launches", fake_cuda_launch_count() - before, 8);
    CHECK_EQ("per-entry count cuLaunchKernel_ptsz",
             fake_cuda_launch_count_by_name("cuLaunchKernel_ptsz"), 1);
    CHECK_EQ("per-entry count cuGraphLaunch", fake_cuda_launch_count_by_name("cuGraphLaunch"), 1);
    CHECK_EQ("per-entry count of an unknown name", fake_cuda_launch_count_by_name("cuNope"), 0);
    CHECK_EQ("launches take no GPU time by default", fake_cuda_busy_ns(0), 0);
    CHECK_RC(cuCtxSynchronize(), CUDA_SUCCESS);
    CUevent ev = NULL;
    CHECK_RC(cuEventCreate(&ev, 0), CUDA_SUCCESS);
    CHECK_RC(cuEventRecord(ev, NULL), CUDA_SUCCESS);
    CHECK_RC(cuEventQuery(ev), CUDA_SUCCESS);
    CHECK_RC(cuEventDestroy_v2(ev), CUDA_SUCCESS);
}

/* (base name, export expected at CUDA 13.0) for every name the table knows. */
static const char *const g_latest[][2] = {
    {"cuInit", "cuInit"},
    {"cuDriverGetVersion", "cuDriverGetVersion"},
    {"cuGetErrorName", "cuGetErrorName"},
    {"cuGetErrorString", "cuGetErrorString"},
    {"cuGetProcAddress", "cuGetProcAddress_v2"},
    {"cuDeviceGetCount", "cuDeviceGetCount"},
    {"cuDeviceGet", "cuDeviceGet"},
    {"cuDeviceGetName", "cuDeviceGetName"},
    {"cuDeviceGetUuid", "cuDeviceGetUuid_v2"},
    {"cuDeviceTotalMem", "cuDeviceTotalMem_v2"},
    {"cuDevicePrimaryCtxRetain", "cuDevicePrimaryCtxRetain"},
    {"cuDevicePrimaryCtxRelease", "cuDevicePrimaryCtxRelease_v2"},
    {"cuDevicePrimaryCtxReset", "cuDevicePrimaryCtxReset_v2"},
    {"cuCtxCreate", "cuCtxCreate_v4"},
    {"cuCtxDestroy", "cuCtxDestroy_v2"},
    {"cuCtxSetCurrent", "cuCtxSetCurrent"},
    {"cuCtxGetCurrent", "cuCtxGetCurrent"},
    {"cuCtxPushCurrent", "cuCtxPushCurrent_v2"},
    {"cuCtxPopCurrent", "cuCtxPopCurrent_v2"},
    {"cuCtxGetDevice", "cuCtxGetDevice"},
    {"cuCtxSynchronize", "cuCtxSynchronize"},
    {"cuEventCreate", "cuEventCreate"},
    {"cuEventDestroy", "cuEventDestroy_v2"},
    {"cuEventRecord", "cuEventRecord"},
    {"cuEventQuery", "cuEventQuery"},
    {"cuEventSynchronize", "cuEventSynchronize"},
    {"cuStreamIsCapturing", "cuStreamIsCapturing"},
    {"cuMemAlloc", "cuMemAlloc_v2"},
    {"cuMemAllocPitch", "cuMemAllocPitch_v2"},
    {"cuMemAllocManaged", "cuMemAllocManaged"},
    {"cuMemFree", "cuMemFree_v2"},
    {"cuMemGetInfo", "cuMemGetInfo_v2"},
    {"cuMemAllocAsync", "cuMemAllocAsync"},
    {"cuMemAllocFromPoolAsync", "cuMemAllocFromPoolAsync"},
    {"cuMemFreeAsync", "cuMemFreeAsync"},
    {"cuMemPoolCreate", "cuMemPoolCreate"},
    {"cuMemPoolDestroy", "cuMemPoolDestroy"},
    {"cuArrayCreate", "cuArrayCreate_v2"},
    {"cuArray3DCreate", "cuArray3DCreate_v2"},
    {"cuArrayDestroy", "cuArrayDestroy"},
    {"cuMipmappedArrayCreate", "cuMipmappedArrayCreate"},
    {"cuMipmappedArrayDestroy", "cuMipmappedArrayDestroy"},
    {"cuMemCreate", "cuMemCreate"},
    {"cuMemRelease", "cuMemRelease"},
    {"cuLaunchKernel", "cuLaunchKernel"},
    {"cuLaunchKernelEx", "cuLaunchKernelEx"},
    {"cuLaunchCooperativeKernel", "cuLaunchCooperativeKernel"},
    {"cuGraphLaunch", "cuGraphLaunch"},
};

static void expect_proc(const char *symbol, int version, cuuint64_t flags, void *want,
                        const char *want_name)
{
    void *fn = (void *)&g_dummy;
    CUdriverProcAddressQueryResult st = -1;
    CUresult rc = cuGetProcAddress_v2(symbol, &fn, version, flags, &st);
    CHECK(rc == CUDA_SUCCESS && st == CU_GET_PROC_ADDRESS_SUCCESS && fn == want,
          "cuGetProcAddress_v2(\"%s\", %d, %llu) -> &%s (rc %d, status %d)", symbol, version,
          (unsigned long long)flags, want_name, rc, st);
}

static void expect_proc_missing(const char *symbol, int version,
                                CUdriverProcAddressQueryResult want_status)
{
    void *fn = (void *)&g_dummy;
    CUdriverProcAddressQueryResult st = -1;
    CUresult rc = cuGetProcAddress_v2(symbol, &fn, version, 0, &st);
    CHECK(rc == CUDA_ERROR_NOT_FOUND && st == want_status && fn == NULL,
          "cuGetProcAddress_v2(\"%s\", %d) -> NOT_FOUND, status %d, NULL (rc %d, status %d)",
          symbol, version, want_status, rc, st);
}

static void basic_get_proc_address(void)
{
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    CHECK(lib != NULL, "libcuda.so.1 is loaded under its SONAME");
    if (!lib)
        return;
    const int ptds = CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;

    expect_proc("cuMemAlloc", 12000, 0, (void *)&cuMemAlloc_v2, "cuMemAlloc_v2");
    CHECK(dlsym(lib, "cuMemAlloc_v2") == (void *)&cuMemAlloc_v2,
          "&cuMemAlloc_v2 is the library's own export (dlsym agrees)");
    expect_proc("cuMemAlloc", 3000, 0, (void *)&cuMemAlloc, "cuMemAlloc");
    expect_proc("cuMemAlloc", 3020, 0, (void *)&cuMemAlloc_v2, "cuMemAlloc_v2");
    expect_proc("cuMemAlloc", 12000, ptds, (void *)&cuMemAlloc_v2, "cuMemAlloc_v2");
    expect_proc("cuLaunchKernel", 12000, ptds, (void *)&cuLaunchKernel_ptsz, "cuLaunchKernel_ptsz");
    CHECK(dlsym(lib, "cuLaunchKernel_ptsz") == (void *)&cuLaunchKernel_ptsz,
          "dlsym agrees on cuLaunchKernel_ptsz");
    expect_proc("cuLaunchKernel", 12000, 0, (void *)&cuLaunchKernel, "cuLaunchKernel");
    expect_proc("cuLaunchKernel", 12000, CU_GET_PROC_ADDRESS_LEGACY_STREAM, (void *)&cuLaunchKernel,
                "cuLaunchKernel");
    expect_proc("cuMemAllocAsync", 12000, ptds, (void *)&cuMemAllocAsync_ptsz,
                "cuMemAllocAsync_ptsz");
    expect_proc("cuGraphLaunch", 12000, ptds, (void *)&cuGraphLaunch_ptsz, "cuGraphLaunch_ptsz");
    expect_proc("cuEventRecord", 12000, ptds, (void *)&cuEventRecord_ptsz, "cuEventRecord_ptsz");
    expect_proc("cuStreamIsCapturing", 12000, ptds, (void *)&cuStreamIsCapturing_ptsz,
                "cuStreamIsCapturing_ptsz");
    expect_proc("cuEventRecord", 12000, 0, (void *)&cuEventRecord, "cuEventRecord");
    expect_proc("cuCtxSynchronize", 12000, ptds, (void *)&cuCtxSynchronize, "cuCtxSynchronize");
    expect_proc("cuCtxCreate", 12050, 0, (void *)&cuCtxCreate_v4, "cuCtxCreate_v4");
    expect_proc("cuCtxCreate", 12040, 0, (void *)&cuCtxCreate_v3, "cuCtxCreate_v3");
    expect_proc("cuCtxCreate", 11040, 0, (void *)&cuCtxCreate_v3, "cuCtxCreate_v3");
    expect_proc("cuCtxCreate", 11030, 0, (void *)&cuCtxCreate_v2, "cuCtxCreate_v2");
    expect_proc("cuDevicePrimaryCtxRelease", 10020, 0, (void *)&cuDevicePrimaryCtxRelease,
                "cuDevicePrimaryCtxRelease");
    expect_proc("cuDeviceGetUuid", 11030, 0, (void *)&cuDeviceGetUuid, "cuDeviceGetUuid");
    expect_proc("cuGetProcAddress", 11030, 0, (void *)&cuGetProcAddress, "cuGetProcAddress");

    expect_proc_missing("cuMemAllocAsync", 11000, CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
    expect_proc_missing("cuLaunchKernelEx", 11070, CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
    expect_proc_missing("cuMemCreate", 10010, CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
    expect_proc_missing("cuEventDestroy", 3020, CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
    expect_proc_missing("cuNoSuchFunction", 13000, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
    expect_proc_missing("cuMemAlloc_v2", 13000, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
    expect_proc_missing("fake_cuda_launch_count", 13000, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);

    void *fn = NULL;
    CHECK_RC(cuGetProcAddress_v2(NULL, &fn, 12000, 0, NULL), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuGetProcAddress_v2("cuInit", NULL, 12000, 0, NULL), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuGetProcAddress("cuGetProcAddress", &fn, 12000, 0), CUDA_SUCCESS);
    CHECK(fn == (void *)&cuGetProcAddress_v2, "cuGetProcAddress (v1) resolves like _v2");
    CHECK_RC(cuGetProcAddress("cuNoSuchFunction", &fn, 12000, 0), CUDA_ERROR_NOT_FOUND);

    int all = 0, ok = 0;
    for (size_t i = 0; i < sizeof g_latest / sizeof g_latest[0]; i++) {
        void *want = dlsym(lib, g_latest[i][1]);
        fn = NULL;
        all++;
        if (want && cuGetProcAddress_v2(g_latest[i][0], &fn, 13000, 0, NULL) == CUDA_SUCCESS &&
            fn == want)
            ok++;
        else
            printf("  mismatch: %s -> %s\n", g_latest[i][0], g_latest[i][1]);
    }
    CHECK(ok == all, "every base name resolves to its dlsym address at 13000 (%d/%d)", ok, all);
    dlclose(lib);
}

/* Threads hammering alloc/free on one device: the counter must balance. */
static void *alloc_free_loop(void *arg)
{
    CUcontext ctx = arg;
    long bad = 0;
    if (cuCtxSetCurrent(ctx) != CUDA_SUCCESS)
        return (void *)1;
    for (int i = 0; i < 300; i++) {
        CUdeviceptr p;
        if (cuMemAlloc_v2(&p, MiB) != CUDA_SUCCESS) {
            bad++;
            continue;
        }
        ((volatile char *)(uintptr_t)p)[i] = (char)i;
        if (cuMemFree_v2(p) != CUDA_SUCCESS)
            bad++;
    }
    return (void *)bad;
}

static void basic_threads(CUcontext primary0)
{
    pthread_t t[8];
    long bad = 0;
    for (int i = 0; i < 8; i++)
        pthread_create(&t[i], NULL, alloc_free_loop, primary0);
    for (int i = 0; i < 8; i++) {
        void *r;
        pthread_join(t[i], &r);
        bad += (long)r;
    }
    CHECK_EQ("8 threads x 300 alloc/free: failed calls", bad, 0);
    CHECK_EQ("8 threads: usage balanced", fake_cuda_device_used(0), CTX);
}

static void basic_nvml(void)
{
    unsigned count = 99;
    nvmlDevice_t h0 = NULL, h1 = NULL, h = NULL;
    char buf[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
    nvmlMemory_t mem;
    nvmlMemory_v2_t mem2;
    CUdeviceptr p;

    CHECK_RC(nvmlDeviceGetCount_v2(&count), NVML_ERROR_UNINITIALIZED);
    CHECK_RC(nvmlInit_v2(), NVML_SUCCESS);
    CHECK_RC(nvmlDeviceGetCount_v2(&count), NVML_SUCCESS);
    CHECK_EQ("NVML device count", count, 2);
    CHECK_RC(nvmlDeviceGetCount_v2(NULL), NVML_ERROR_INVALID_ARGUMENT);
    CHECK_RC(nvmlDeviceGetHandleByIndex_v2(0, &h0), NVML_SUCCESS);
    CHECK_RC(nvmlDeviceGetHandleByIndex_v2(1, &h1), NVML_SUCCESS);
    CHECK_RC(nvmlDeviceGetHandleByIndex_v2(2, &h), NVML_ERROR_INVALID_ARGUMENT);
    CHECK_RC(nvmlDeviceGetHandleByIndex_v2(0, NULL), NVML_ERROR_INVALID_ARGUMENT);
    CHECK_RC(nvmlDeviceGetUUID(h0, buf, sizeof buf), NVML_SUCCESS);
    CHECK(strcmp(buf, "GPU-face0000-1020-3040-5060-708090a0b0c0") == 0, "NVML UUID \"%s\"", buf);
    CHECK_RC(nvmlDeviceGetUUID(h0, buf, 40), NVML_ERROR_INSUFFICIENT_SIZE);
    CHECK_RC(nvmlDeviceGetUUID(h0, NULL, 96), NVML_ERROR_INVALID_ARGUMENT);
    CHECK_RC(nvmlDeviceGetUUID((nvmlDevice_t)(void *)buf, buf, 96), NVML_ERROR_INVALID_ARGUMENT);
    CHECK_RC(nvmlDeviceGetHandleByUUID("GPU-face0001-1020-3040-5060-708090a0b0c0", &h),
             NVML_SUCCESS);
    CHECK(h == h1, "handle by UUID");
    CHECK_RC(nvmlDeviceGetName(h1, buf, sizeof buf), NVML_SUCCESS);
    CHECK(strcmp(buf, "Fake GPU") == 0, "NVML name \"%s\"", buf);

    CHECK_RC(cuMemAlloc_v2(&p, GiB), CUDA_SUCCESS);
    CHECK_RC(nvmlDeviceGetMemoryInfo(h0, &mem), NVML_SUCCESS);
    CHECK_EQ("NVML used == fake libcuda's count (private state shared in-process)", mem.used,
             fake_cuda_device_used(0));
    CHECK_EQ("NVML total", mem.total, 8 * GiB);
    CHECK_EQ("NVML free", mem.free, 8 * GiB - GiB - CTX);
    CHECK_RC(nvmlDeviceGetMemoryInfo(h0, NULL), NVML_ERROR_INVALID_ARGUMENT);
    mem2.version = 1;
    CHECK_RC(nvmlDeviceGetMemoryInfo_v2(h0, &mem2), NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    mem2.version = nvmlMemory_v2;
    CHECK_RC(nvmlDeviceGetMemoryInfo_v2(h0, &mem2), NVML_SUCCESS);
    CHECK(mem2.used == GiB + CTX && mem2.total == 8 * GiB && mem2.free + mem2.used == mem2.total,
          "nvmlDeviceGetMemoryInfo_v2 used/total/free");

    nvmlProcessInfo_t infos[4];
    count = 0;
    CHECK_RC(nvmlDeviceGetComputeRunningProcesses_v3(h0, &count, NULL), NVML_ERROR_INSUFFICIENT_SIZE);
    CHECK_EQ("process count needed", count, 1);
    count = 4;
    CHECK_RC(nvmlDeviceGetComputeRunningProcesses_v3(h0, &count, infos), NVML_SUCCESS);
    CHECK(count == 1 && infos[0].pid == (unsigned)getpid() && infos[0].usedGpuMemory == GiB + CTX,
          "NVML lists this process with its usage");
    count = 4;
    CHECK_RC(nvmlDeviceGetComputeRunningProcesses_v3(h1, &count, infos), NVML_SUCCESS);
    CHECK_EQ("no process on device 1", count, 0);
    CHECK_RC(nvmlDeviceGetComputeRunningProcesses_v3(h0, NULL, infos), NVML_ERROR_INVALID_ARGUMENT);
    CHECK_RC(cuMemFree_v2(p), CUDA_SUCCESS);

    CHECK(strcmp(nvmlErrorString(NVML_ERROR_INSUFFICIENT_SIZE), "Insufficient Size") == 0,
          "nvmlErrorString");
    CHECK_RC(nvmlInit(), NVML_SUCCESS);
    CHECK_RC(nvmlShutdown(), NVML_SUCCESS);
    CHECK_RC(nvmlDeviceGetCount_v2(&count), NVML_SUCCESS); /* init nests */
    CHECK_RC(nvmlShutdown(), NVML_SUCCESS);
    CHECK_RC(nvmlShutdown(), NVML_ERROR_UNINITIALIZED);
    CHECK_RC(nvmlDeviceGetMemoryInfo(h0, &mem), NVML_ERROR_UNINITIALIZED);
}

/* Without FAKE_CUDA_STATE a forked child's usage stays its own. */
static void basic_private_fork(void)
{
    unsigned long long before = fake_cuda_device_used(0);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        CUdeviceptr p;
        CUcontext ctx;
        int bad = cuMemAlloc_v2(&p, MiB) != CUDA_ERROR_NOT_INITIALIZED; /* per-process init */
        bad |= cuInit(0) != CUDA_SUCCESS;
        bad |= cuDevicePrimaryCtxRetain(&ctx, 0) != CUDA_SUCCESS;
        bad |= cuCtxSetCurrent(ctx) != CUDA_SUCCESS;
        bad |= cuMemAlloc_v2(&p, GiB) != CUDA_SUCCESS;
        bad |= fake_cuda_device_used(0) != before + CTX + GiB;
        _exit(bad);
    }
    CHECK_EQ("forked child (private state) re-inits and allocates", wait_for(pid), 0);
    CHECK_EQ("its usage does not reach the parent", fake_cuda_device_used(0), before);
}

static void scenario_basic(void)
{
    basic_before_init();
    basic_devices();
    basic_no_context();
    basic_linear_memory();
    CUcontext primary0 = NULL;
    CHECK_RC(cuCtxGetCurrent(&primary0), CUDA_SUCCESS);
    basic_arrays();
    basic_vmm();
    basic_contexts(primary0);
    basic_high_water();
    basic_launches();
    basic_get_proc_address();
    basic_threads(primary0);
    basic_nvml();
    basic_private_fork();
    CHECK_RC(cuDevicePrimaryCtxRelease_v2(0), CUDA_SUCCESS);
    CHECK_EQ("all released: device 0", fake_cuda_device_used(0), 0);
    CHECK_EQ("all released: device 1", fake_cuda_device_used(1), 0);
}

/* ---- scenario: CUDA_VISIBLE_DEVICES on 4 devices of 1..4 GiB ------------- */

/* expected: the physical devices the ordinals should map to, "2,0" or "". */
static void scenario_visible(const char *expected, bool set_in_process)
{
    int want[FAKE_MAX_DEVICES], n_want = 0;
    for (const char *s = expected; *s && n_want < FAKE_MAX_DEVICES;) {
        char *end;
        want[n_want++] = (int)strtol(s, &end, 10);
        s = *end == ',' ? end + 1 : end;
    }
    if (set_in_process) /* like a program setting it before CUDA starts */
        setenv("CUDA_VISIBLE_DEVICES", "3,1", 1);
    const char *cvd = getenv("CUDA_VISIBLE_DEVICES");
    printf("# CUDA_VISIBLE_DEVICES=%s%s%s expecting [%s]\n", cvd ? "\"" : "",
           cvd ? cvd : "(unset)", cvd ? "\"" : "", expected);

    CHECK(fake_cuda_physical_of_ordinal(0) == -1, "no ordinals before cuInit");
    CHECK_RC(cuInit(0), CUDA_SUCCESS);
    int n = -1;
    CHECK_RC(cuDeviceGetCount(&n), CUDA_SUCCESS);
    CHECK_EQ("visible device count", n, n_want);
    for (int i = 0; i < n_want && i < n; i++) {
        CUuuid u;
        size_t total = 0;
        CHECK_EQ("fake_cuda_physical_of_ordinal", fake_cuda_physical_of_ordinal(i), want[i]);
        CHECK_RC(cuDeviceGetUuid_v2(&u, i), CUDA_SUCCESS);
        CHECK(u.bytes[0] == 0xfa && u.bytes[1] == 0xce && u.bytes[3] == want[i],
              "ordinal %d has the UUID of physical %d", i, want[i]);
        CHECK_RC(cuDeviceTotalMem_v2(&total, i), CUDA_SUCCESS);
        CHECK_EQ("ordinal's memory is its physical device's", total,
                 (unsigned long long)(want[i] + 1) * GiB);
    }
    CHECK(fake_cuda_physical_of_ordinal(n_want) == -1, "ordinal %d is not visible", n_want);
    CUdevice dev;
    CHECK_RC(cuDeviceGet(&dev, n_want), CUDA_ERROR_INVALID_DEVICE);

    if (n_want > 0) {
        CUmemGenericAllocationHandle h;
        CUmemAllocationProp prop =
            vmm_prop(CU_MEM_ALLOCATION_TYPE_PINNED, CU_MEM_LOCATION_TYPE_DEVICE, 0);
        CHECK_RC(cuMemCreate(&h, 2 * MiB, &prop, 0), CUDA_SUCCESS);
        CHECK_EQ("cuMemCreate on ordinal 0 charges its physical device",
                 fake_cuda_device_used(want[0]), 2 * MiB);
        CHECK_RC(cuMemRelease(h), CUDA_SUCCESS);
        CUcontext ctx;
        CHECK_RC(cuCtxCreate_v2(&ctx, 0, n_want - 1), CUDA_SUCCESS);
        CHECK_EQ("context on the last ordinal charges its physical device",
                 fake_cuda_device_used(want[n_want - 1]), CTX);
        CHECK_RC(cuCtxDestroy_v2(ctx), CUDA_SUCCESS);
    }

    /* NVML ignores CUDA_VISIBLE_DEVICES. */
    unsigned count = 0;
    CHECK_RC(nvmlInit_v2(), NVML_SUCCESS);
    CHECK_RC(nvmlDeviceGetCount_v2(&count), NVML_SUCCESS);
    CHECK_EQ("NVML sees every physical device", count, 4);
    for (unsigned i = 0; i < count; i++) {
        nvmlDevice_t h;
        char buf[NVML_DEVICE_UUID_BUFFER_SIZE], want_uuid[48];
        snprintf(want_uuid, sizeof want_uuid, "GPU-face%04x-1020-3040-5060-708090a0b0c0", i);
        CHECK_RC(nvmlDeviceGetHandleByIndex_v2(i, &h), NVML_SUCCESS);
        CHECK_RC(nvmlDeviceGetUUID(h, buf, sizeof buf), NVML_SUCCESS);
        CHECK(strcmp(buf, want_uuid) == 0, "NVML index %u is physical %u (%s)", i, i, buf);
    }
    CHECK_RC(nvmlShutdown(), NVML_SUCCESS);
}

/* ---- scenario: processes sharing FAKE_CUDA_STATE (2 devices of 4 GiB) ---- */

struct child_link {
    pid_t pid;
    int to_child;   /* write a byte: the child may go on */
    int from_child; /* the child writes a byte when it has allocated */
};

/* Fork a child that re-initialises CUDA, allocates `bytes` on device 0 under
 * its primary context, reports, waits for the go-ahead and then exits
 * normally (crash: with _exit, skipping the fake's release at exit). */
static struct child_link fork_allocating_child(unsigned long long bytes, bool crash)
{
    int down[2], up[2];
    struct child_link link = {-1, -1, -1};
    if (pipe(down) != 0 || pipe(up) != 0)
        return link;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(down[1]);
        close(up[0]);
        g_scenario = "shared/child";
        g_failures = 0;
        CUdeviceptr p;
        CUcontext ctx;
        CHECK_RC(cuMemAlloc_v2(&p, bytes), CUDA_ERROR_NOT_INITIALIZED);
        CHECK_RC(cuInit(0), CUDA_SUCCESS);
        CHECK_RC(cuDevicePrimaryCtxRetain(&ctx, 0), CUDA_SUCCESS);
        CHECK_RC(cuCtxSetCurrent(ctx), CUDA_SUCCESS);
        CHECK_RC(cuMemAlloc_v2(&p, bytes), CUDA_SUCCESS);
        write_byte(up[1]);
        if (crash)
            _exit(g_failures ? 1 : 0);
        read_byte(down[0]);
        exit(g_failures ? 1 : 0);
    }
    close(down[0]);
    close(up[1]);
    link.pid = pid;
    link.to_child = down[1];
    link.from_child = up[0];
    return link;
}

static int finish_child(struct child_link *l)
{
    write_byte(l->to_child);
    close(l->to_child);
    close(l->from_child);
    return wait_for(l->pid);
}

/* NVML's view of device 0's processes: count, and usage of pid (0 if absent). */
static unsigned nvml_procs(int pid, unsigned long long *usage)
{
    nvmlDevice_t h;
    nvmlProcessInfo_t infos[FAKE_MAX_PROCS];
    unsigned count = FAKE_MAX_PROCS;
    *usage = 0;
    if (nvmlDeviceGetHandleByIndex_v2(0, &h) != NVML_SUCCESS ||
        nvmlDeviceGetComputeRunningProcesses_v3(h, &count, infos) != NVML_SUCCESS)
        return 9999;
    for (unsigned i = 0; i < count; i++)
        if ((int)infos[i].pid == pid)
            *usage = infos[i].usedGpuMemory;
    return count;
}

static void scenario_shared(void)
{
    const char *path = getenv("FAKE_CUDA_STATE");
    struct stat st;
    CHECK(path && stat(path, &st) == 0 && (size_t)st.st_size == sizeof(struct fake_shared),
          "state file created at load with the fixed size (%zu bytes)", sizeof(struct fake_shared));

    CHECK_RC(cuInit(0), CUDA_SUCCESS);
    CHECK_RC(nvmlInit_v2(), NVML_SUCCESS);
    CUcontext ctx = make_primary_current(0);
    (void)ctx;
    CUdeviceptr mine;
    CHECK_RC(cuMemAlloc_v2(&mine, 100 * MiB), CUDA_SUCCESS);
    const unsigned long long parent = CTX + 100 * MiB;
    CHECK_EQ("parent usage", fake_cuda_device_used(0), parent);

    /* A live second process. */
    struct child_link a = fork_allocating_child(200 * MiB, false);
    CHECK(a.pid > 0 && read_byte(a.from_child), "child A allocated");
    const unsigned long long child_a = CTX + 200 * MiB;
    CHECK_EQ("used counts both processes", fake_cuda_device_used(0), parent + child_a);
    size_t fr = 0, tot = 0;
    CHECK_RC(cuMemGetInfo_v2(&fr, &tot), CUDA_SUCCESS);
    CHECK_EQ("cuMemGetInfo free is global", fr, 4 * GiB - parent - child_a);
    nvmlDevice_t h0;
    nvmlMemory_t mem;
    CHECK_RC(nvmlDeviceGetHandleByIndex_v2(0, &h0), NVML_SUCCESS);
    CHECK_RC(nvmlDeviceGetMemoryInfo(h0, &mem), NVML_SUCCESS);
    CHECK_EQ("NVML reads the same state file", mem.used, parent + child_a);
    unsigned long long usage;
    CHECK_EQ("NVML lists 2 processes", nvml_procs(a.pid, &usage), 2);
    CHECK_EQ("NVML: child A's usage", usage, child_a);
    nvml_procs(getpid(), &usage);
    CHECK_EQ("NVML: parent's usage", usage, parent);
    CHECK_EQ("device 1 untouched", fake_cuda_device_used(1), 0);
    CHECK_EQ("child A exits cleanly", finish_child(&a), 0);
    CHECK_EQ("a normal exit gives the child's memory back", fake_cuda_device_used(0), parent);
    CHECK_EQ("NVML lists 1 process", nvml_procs(getpid(), &usage), 1);

    /* A process that dies without running its destructors. */
    struct child_link b = fork_allocating_child(300 * MiB, true);
    CHECK(b.pid > 0 && read_byte(b.from_child), "child B allocated");
    CHECK_EQ("child B exits via _exit", finish_child(&b), 0);
    const unsigned long long child_b = CTX + 300 * MiB;
    CHECK_EQ("a dead process's usage stays until reaped", fake_cuda_device_used(0),
             parent + child_b);
    CHECK_EQ("NVML lists a dead process until its memory is freed", nvml_procs(b.pid, &usage), 2);
    CHECK_EQ("NVML: the dead child's usage", usage, child_b);
    CHECK_EQ("fake_cuda_reap_dead returns its bytes", fake_cuda_reap_dead(), child_b);
    CHECK_EQ("usage after reaping", fake_cuda_device_used(0), parent);

    /* OOM across processes. */
    fake_cuda_reset_high_water(0);
    struct child_link c = fork_allocating_child(3 * GiB, false);
    CHECK(c.pid > 0 && read_byte(c.from_child), "child C allocated 3 GiB");
    CUdeviceptr p;
    CHECK_RC(cuMemAlloc_v2(&p, GiB), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK_RC(cuMemAlloc_v2(&p, 512 * MiB), CUDA_SUCCESS);
    CHECK_RC(cuMemFree_v2(p), CUDA_SUCCESS);
    CHECK_EQ("child C exits cleanly", finish_child(&c), 0);
    CHECK_EQ("high water saw both processes' peak", fake_cuda_high_water(0),
             parent + CTX + 3 * GiB + 512 * MiB);

    CHECK_RC(cuMemFree_v2(mine), CUDA_SUCCESS);
    CHECK_RC(cuDevicePrimaryCtxRelease_v2(0), CUDA_SUCCESS);
    CHECK_EQ("all released", fake_cuda_device_used(0), 0);
    CHECK_RC(nvmlShutdown(), NVML_SUCCESS);
}

/* ---- scenario: 16 processes creating the same state file at once --------- */

#define RACERS 16
#define RACER_BYTES (256 * MiB)

/*
 * Three pipes: racers write a byte to `ready` once they have allocated, check
 * the total when `go` closes, report a result byte on `ready`, and exit when
 * `leave` closes (exiting earlier would give memory back under the others'
 * feet).
 */
static void scenario_race(const char *state_path)
{
    int ready[2], go[2], leave[2];
    /* Racers must hold only ready[1], go[0] and leave[0]; a stray write end
     * would keep go or leave from ever reaching EOF. */
    if (pipe2(ready, O_CLOEXEC) != 0 || pipe2(go, O_CLOEXEC) != 0 ||
        pipe2(leave, O_CLOEXEC) != 0) {
        CHECK(false, "pipes");
        return;
    }
    fcntl(ready[1], F_SETFD, 0);
    fcntl(go[0], F_SETFD, 0);
    fcntl(leave[0], F_SETFD, 0);
    char env_state[4200], fds[48];
    snprintf(env_state, sizeof env_state, "FAKE_CUDA_STATE=%s", state_path);
    snprintf(fds, sizeof fds, "%d,%d,%d", ready[1], go[0], leave[0]);
    const char *env[] = {"FAKE_CUDA_CONTEXT_SIZE=64m", env_state, NULL};

    struct stat st;
    CHECK(stat(state_path, &st) != 0, "state file does not exist before the racers start");
    pid_t pids[RACERS];
    for (int i = 0; i < RACERS; i++)
        pids[i] = spawn_self("race_child", fds, NULL, env);
    close(ready[1]);
    close(go[0]);
    close(leave[0]);
    int arrived = 0, good = 0;
    while (arrived < RACERS && read_byte(ready[0]))
        arrived++;
    CHECK_EQ("racers allocated", arrived, RACERS);
    close(go[1]);
    char result;
    for (int i = 0; i < RACERS && read(ready[0], &result, 1) == 1; i++)
        good += result == 'y';
    CHECK_EQ("racers that saw all 16 allocations in the shared file", good, RACERS);
    close(leave[1]);
    int failed = 0;
    for (int i = 0; i < RACERS; i++)
        failed += wait_for(pids[i]) != 0;
    CHECK_EQ("racers that exited with failure", failed, 0);
    close(ready[0]);
}

static void scenario_race_child(const char *fds)
{
    int ready_fd, go_fd, leave_fd;
    CUcontext ctx;
    CUdeviceptr p;
    size_t fr = 0, tot = 0;
    unsigned count = FAKE_MAX_PROCS;
    nvmlDevice_t h;
    nvmlProcessInfo_t infos[FAKE_MAX_PROCS];
    if (sscanf(fds, "%d,%d,%d", &ready_fd, &go_fd, &leave_fd) != 3)
        exit(2);
    if (cuInit(0) || cuDevicePrimaryCtxRetain(&ctx, 0) || cuCtxSetCurrent(ctx) ||
        cuMemAlloc_v2(&p, RACER_BYTES)) {
        CHECK(false, "racer setup");
        exit(1);
    }
    write_byte(ready_fd);
    while (read_byte(go_fd)) {
    }
    bool ok = cuMemGetInfo_v2(&fr, &tot) == CUDA_SUCCESS &&
              tot - fr == RACERS * (RACER_BYTES + CTX) && nvmlInit_v2() == NVML_SUCCESS &&
              nvmlDeviceGetHandleByIndex_v2(0, &h) == NVML_SUCCESS &&
              nvmlDeviceGetComputeRunningProcesses_v3(h, &count, infos) == NVML_SUCCESS &&
              count == RACERS;
    if (!ok) /* only failures print: 16 processes share the terminal */
        CHECK(false, "pid %d: used %zu, %u processes", (int)getpid(), tot - fr, count);
    char result = ok ? 'y' : 'n';
    while (write(ready_fd, &result, 1) < 0 && errno == EINTR) {
    }
    while (read_byte(leave_fd)) {
    }
    exit(ok ? 0 : 1);
}

/* ---- scenario: the GPU timeline (2 devices; launches 20 ms, graphs 50 ms) - */

#define MS 1000000ULL
#define SLACK (500 * MS) /* how late a wait may return on a loaded machine */

static unsigned long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

static void timeline_events_and_sync(void)
{
    CUevent first = NULL, second = NULL, never = NULL;
    CHECK_RC(cuEventCreate(&first, 0), CUDA_SUCCESS);
    CHECK_RC(cuEventCreate(&second, CU_EVENT_DISABLE_TIMING), CUDA_SUCCESS);
    CHECK_RC(cuEventCreate(&never, CU_EVENT_BLOCKING_SYNC), CUDA_SUCCESS);
    CHECK_RC(cuEventQuery(never), CUDA_SUCCESS); /* never recorded: complete, as in CUDA */
    CHECK_RC(cuEventSynchronize(never), CUDA_SUCCESS);

    unsigned long long t0 = now_ns();
    CHECK_RC(cuLaunchKernel(FUNC, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL), CUDA_SUCCESS);
    CHECK_RC(cuEventRecord(first, NULL), CUDA_SUCCESS);
    CHECK_RC(cuGraphLaunch_ptsz(GRAPH, NULL), CUDA_SUCCESS);
    CHECK_RC(cuEventRecord_ptsz(second, NULL), CUDA_SUCCESS);
    unsigned long long t1 = now_ns();
    CHECK_EQ("busy time queued: a kernel and a graph", fake_cuda_busy_ns(0), 70 * MS);
    unsigned long long until = fake_cuda_busy_until(0);
    CHECK(until >= t0 + 70 * MS && until <= t1 + 70 * MS,
          "queued back to back: busy until %.1f ms after the first launch",
          (double)(until - t0) / 1e6);
    CHECK_EQ("the other device is idle", fake_cuda_busy_ns(1), 0);
    CHECK_RC(cuEventQuery(first), CUDA_ERROR_NOT_READY);

    CHECK_RC(cuEventSynchronize(first), CUDA_SUCCESS);
    unsigned long long t2 = now_ns();
    CHECK(t2 >= t0 + 20 * MS && t2 <= t1 + 20 * MS + SLACK,
          "cuEventSynchronize waits for the kernel before the event: %.1f ms",
          (double)(t2 - t0) / 1e6);
    CHECK_RC(cuEventQuery(first), CUDA_SUCCESS);
    CHECK_RC(cuEventQuery(second), CUDA_ERROR_NOT_READY);

    CHECK_RC(cuCtxSynchronize(), CUDA_SUCCESS);
    unsigned long long t3 = now_ns();
    CHECK(t3 >= until && t3 <= until + SLACK, "cuCtxSynchronize waits for the graph too: %.1f ms",
          (double)(t3 - t0) / 1e6);
    CHECK_RC(cuEventQuery(second), CUDA_SUCCESS);
    CHECK_RC(cuCtxSynchronize(), CUDA_SUCCESS); /* drained: returns at once */
    CHECK(now_ns() - t3 < SLACK, "cuCtxSynchronize on an idle device returns at once");

    /* After idle time, work starts when it is launched, not where the
     * timeline last ended. */
    struct timespec idle = {0, 30 * MS};
    nanosleep(&idle, NULL);
    unsigned long long t4 = now_ns();
    CHECK_RC(cuLaunchCooperativeKernel(FUNC, 1, 1, 1, 1, 1, 1, 0, NULL, NULL), CUDA_SUCCESS);
    CHECK_RC(cuEventRecord(first, NULL), CUDA_SUCCESS); /* re-recording moves the event */
    until = fake_cuda_busy_until(0);
    CHECK(until >= t4 + 20 * MS && until <= now_ns() + 20 * MS,
          "an idle device starts the next launch at once");
    CHECK_RC(cuEventQuery(first), CUDA_ERROR_NOT_READY);
    CHECK_EQ("busy time adds up", fake_cuda_busy_ns(0), 90 * MS);
    CHECK_RC(cuLaunchKernel(NULL, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL), CUDA_ERROR_INVALID_VALUE);
    CHECK_EQ("a failed launch takes no GPU time", fake_cuda_busy_ns(0), 90 * MS);
    CHECK_RC(cuEventSynchronize(first), CUDA_SUCCESS);
    CHECK(now_ns() >= until, "the re-recorded event completes with the new work");

    CHECK_RC(cuEventDestroy_v2(first), CUDA_SUCCESS);
    CHECK_RC(cuEventDestroy_v2(first), CUDA_ERROR_INVALID_HANDLE);
    CHECK_RC(cuEventDestroy_v2(second), CUDA_SUCCESS);
    CHECK_RC(cuEventDestroy_v2(never), CUDA_SUCCESS);
}

static void timeline_errors(void)
{
    CUevent ev;
    CUstreamCaptureStatus capture = -1;
    const char *name = NULL;
    CHECK_RC(cuEventCreate(NULL, 0), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuEventCreate(&ev, 0x100), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuEventRecord(BOGUS_EVENT, NULL), CUDA_ERROR_INVALID_HANDLE);
    CHECK_RC(cuEventRecord_ptsz(NULL, NULL), CUDA_ERROR_INVALID_HANDLE);
    CHECK_RC(cuEventQuery(BOGUS_EVENT), CUDA_ERROR_INVALID_HANDLE);
    CHECK_RC(cuEventSynchronize(BOGUS_EVENT), CUDA_ERROR_INVALID_HANDLE);
    CHECK_RC(cuEventDestroy_v2(NULL), CUDA_ERROR_INVALID_HANDLE);
    CHECK_RC(cuStreamIsCapturing(NULL, &capture), CUDA_SUCCESS);
    CHECK_EQ("no stream is ever capturing", capture, CU_STREAM_CAPTURE_STATUS_NONE);
    capture = -1;
    CHECK_RC(cuStreamIsCapturing_ptsz(NULL, &capture), CUDA_SUCCESS);
    CHECK_EQ("no stream is ever capturing (_ptsz)", capture, CU_STREAM_CAPTURE_STATUS_NONE);
    CHECK_RC(cuStreamIsCapturing(NULL, NULL), CUDA_ERROR_INVALID_VALUE);
    CHECK_RC(cuGetErrorName(CUDA_ERROR_NOT_READY, &name), CUDA_SUCCESS);
    CHECK(name && strcmp(name, "CUDA_ERROR_NOT_READY") == 0, "error 600 is CUDA_ERROR_NOT_READY");
}

/* Each device has its own timeline; cuCtxSynchronize waits for the current
 * context's device only. */
static void timeline_second_device(CUcontext ctx0)
{
    make_primary_current(1);
    unsigned long long before0 = fake_cuda_busy_ns(0), t0 = now_ns();
    CHECK_RC(cuLaunchKernelEx(CONFIG, FUNC, NULL, NULL), CUDA_SUCCESS);
    CHECK_RC(cuLaunchKernelEx_ptsz(CONFIG, FUNC, NULL, NULL), CUDA_SUCCESS);
    CHECK_EQ("device 1's busy time", fake_cuda_busy_ns(1), 40 * MS);
    CHECK_EQ("device 0's is untouched", fake_cuda_busy_ns(0), before0);
    CHECK_RC(cuCtxSetCurrent(ctx0), CUDA_SUCCESS);
    CHECK_RC(cuCtxSynchronize(), CUDA_SUCCESS);
    CHECK(now_ns() - t0 < 40 * MS, "device 0's cuCtxSynchronize does not wait for device 1");
    CUcontext ctx1 = NULL;
    CHECK_RC(cuDevicePrimaryCtxRetain(&ctx1, 1), CUDA_SUCCESS);
    CHECK_RC(cuCtxSetCurrent(ctx1), CUDA_SUCCESS);
    CHECK_RC(cuCtxSynchronize(), CUDA_SUCCESS);
    CHECK(now_ns() - t0 >= 40 * MS, "device 1's cuCtxSynchronize waits for both of its launches");
    CUevent ev = NULL;
    CHECK_RC(cuEventCreate(&ev, 0), CUDA_SUCCESS);
    CHECK_RC(cuEventRecord(ev, NULL), CUDA_SUCCESS);
    CHECK_RC(cuDevicePrimaryCtxRelease_v2(1), CUDA_SUCCESS);
    CHECK_RC(cuEventQuery(ev), CUDA_SUCCESS); /* the context is still retained once */
    CHECK_RC(cuDevicePrimaryCtxRelease_v2(1), CUDA_SUCCESS);
    CHECK_RC(cuEventRecord(ev, NULL), CUDA_ERROR_INVALID_HANDLE); /* gone with its context */
    CHECK_RC(cuEventDestroy_v2(ev), CUDA_ERROR_INVALID_HANDLE);
    CHECK_RC(cuCtxSetCurrent(ctx0), CUDA_SUCCESS);
}

/* The timeline is per process: a forked child starts with an idle GPU. */
static void timeline_fork(void)
{
    CHECK_RC(cuLaunchKernel(FUNC, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL), CUDA_SUCCESS);
    unsigned long long parent = fake_cuda_busy_ns(0);
    pid_t pid = fork();
    if (pid == 0) {
        int bad = fake_cuda_busy_ns(0) != 0; /* before its own cuInit */
        bad |= cuInit(0) != CUDA_SUCCESS;
        bad |= fake_cuda_busy_ns(0) != 0 || fake_cuda_busy_until(0) != 0;
        CUcontext ctx = NULL;
        bad |= cuDevicePrimaryCtxRetain(&ctx, 0) != CUDA_SUCCESS;
        bad |= cuCtxSetCurrent(ctx) != CUDA_SUCCESS;
        unsigned long long t0 = now_ns();
        bad |= cuCtxSynchronize() != CUDA_SUCCESS;
        bad |= now_ns() - t0 >= 20 * MS; /* the parent's work is not the child's */
        bad |= cuLaunchKernel(FUNC, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL) != CUDA_SUCCESS;
        bad |= fake_cuda_busy_ns(0) != 20 * MS;
        _exit(bad);
    }
    CHECK_EQ("forked child: its own idle timeline", wait_for(pid), 0);
    CHECK_EQ("the child's work is not the parent's", fake_cuda_busy_ns(0), parent);
    CHECK_RC(cuCtxSynchronize(), CUDA_SUCCESS);
}

static void scenario_timeline(void)
{
    CHECK_EQ("nothing before cuInit", fake_cuda_busy_ns(0), 0);
    CHECK_RC(cuInit(0), CUDA_SUCCESS);
    CHECK_EQ("invalid device index", fake_cuda_busy_ns(FAKE_MAX_DEVICES), 0);
    CHECK_EQ("invalid device index", fake_cuda_busy_until(-1), 0);
    CUcontext ctx0 = make_primary_current(0);
    CHECK_EQ("idle at start", fake_cuda_busy_ns(0), 0);
    unsigned long long launches = fake_cuda_launch_count();
    timeline_events_and_sync();
    timeline_errors();
    timeline_second_device(ctx0);
    timeline_fork();
    CHECK_EQ("launches are still counted", fake_cuda_launch_count() - launches, 6);
    CHECK_RC(cuDevicePrimaryCtxRelease_v2(0), CUDA_SUCCESS);
}

/* ---- orchestration ------------------------------------------------------ */

static int run_scenario(int argc, char **argv)
{
    const char *name = argv[1];
    const char *arg1 = argc > 2 ? argv[2] : "";
    alarm(120); /* a hung scenario fails instead of blocking CI */
    /* Telling a child that already _exit()ed to go on must not kill us. */
    signal(SIGPIPE, SIG_IGN);
    g_scenario = name;
    if (strcmp(name, "basic") == 0)
        scenario_basic();
    else if (strcmp(name, "visible") == 0)
        scenario_visible(arg1, false);
    else if (strcmp(name, "visible_setenv") == 0)
        scenario_visible(arg1, true);
    else if (strcmp(name, "shared") == 0)
        scenario_shared();
    else if (strcmp(name, "race") == 0)
        scenario_race(arg1);
    else if (strcmp(name, "timeline") == 0)
        scenario_timeline();
    else if (strcmp(name, "race_child") == 0)
        scenario_race_child(arg1);
    else
        CHECK(false, "unknown scenario %s", name);
    return g_failures ? 1 : 0;
}

struct run {
    const char *scenario;
    const char *arg;
    const char *env[5];
};

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1)
        return run_scenario(argc, argv);

    char dir[] = "/tmp/fake_selftest.XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    char shared_env[64], race_path[64];
    snprintf(shared_env, sizeof shared_env, "FAKE_CUDA_STATE=%s/shared", dir);
    snprintf(race_path, sizeof race_path, "%s/race", dir);

#define VIS "FAKE_CUDA_DEVICE_COUNT=4", "FAKE_CUDA_DEVICE_MEMORY=1g,2g,3g,4g"
    const struct run runs[] = {
        {"basic", NULL,
         {"FAKE_CUDA_DEVICE_COUNT=2", "FAKE_CUDA_DEVICE_MEMORY=8g,4g",
          "FAKE_CUDA_CONTEXT_SIZE=67108864"}},
        {"visible", "0,1,2,3", {VIS}},
        {"visible", "1,0", {VIS, "CUDA_VISIBLE_DEVICES=1,0"}},
        {"visible", "3,1", {VIS, "CUDA_VISIBLE_DEVICES=GPU-face0003-1020-3040-5060-708090a0b0c0,1"}},
        {"visible", "2,0", {VIS, "CUDA_VISIBLE_DEVICES=GPU-face0002,0"}},
        {"visible", "2", {VIS, "CUDA_VISIBLE_DEVICES=2,9,1"}},
        {"visible", "1", {VIS, "CUDA_VISIBLE_DEVICES=1,GPU-00000000,0"}},
        {"visible", "", {VIS, "CUDA_VISIBLE_DEVICES=GPU-face"}}, /* ambiguous prefix */
        {"visible", "0", {VIS, "CUDA_VISIBLE_DEVICES=0,0,1"}},
        {"visible", "", {VIS, "CUDA_VISIBLE_DEVICES=-1"}},
        {"visible", "", {VIS, "CUDA_VISIBLE_DEVICES="}},
        {"visible_setenv", "3,1", {VIS}},
        {"shared", NULL,
         {"FAKE_CUDA_DEVICE_COUNT=2", "FAKE_CUDA_DEVICE_MEMORY=4294967296",
          "FAKE_CUDA_CONTEXT_SIZE=64m", shared_env}},
        {"race", race_path, {NULL}},
        {"timeline", NULL,
         {"FAKE_CUDA_DEVICE_COUNT=2", "FAKE_CUDA_LAUNCH_NS=20000000",
          "FAKE_CUDA_GRAPH_LAUNCH_NS=50000000"}},
    };
#undef VIS

    int failed = 0;
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        printf("# scenario %s %s\n", runs[i].scenario, runs[i].arg ? runs[i].arg : "");
        int status = wait_for(spawn_self(runs[i].scenario, runs[i].arg, NULL, runs[i].env));
        if (status != 0) {
            printf("FAIL - scenario %s %s exited with %d\n", runs[i].scenario,
                   runs[i].arg ? runs[i].arg : "", status);
            failed++;
        }
    }
    char path[80];
    snprintf(path, sizeof path, "%s/shared", dir);
    unlink(path);
    unlink(race_path);
    rmdir(dir);
    printf("%s: %d of %zu scenarios failed\n", failed ? "FAILED" : "PASSED", failed,
           sizeof runs / sizeof runs[0]);
    return failed ? 1 : 0;
}
