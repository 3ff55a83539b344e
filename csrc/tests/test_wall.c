/*
 * What a process sees under the image's preload arrangement (libvgpu in
 * /etc/ld.so.preload, the slice in a root-owned file), whatever its
 * environment: run by tests/test_preload_wall.py in a private mount
 * namespace, as an unprivileged user, with LD_PRELOAD unset and the limit
 * variables raised.
 *
 *   sees_slice   cuMemGetInfo reports a total of VGPU_TEST_EXPECT_MIB, an
 *                allocation of that much is refused (the context takes its
 *                part) and one of half of it succeeds. With
 *                VGPU_TEST_TAMPER_REGION=path, the process first raises the
 *                slice's limit in the region (a file of its own) to
 *                unlimited: the root-set ceiling still holds.
 *   fails_closed every CUDA call fails (the harness reads the reason).
 */
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "check.h"
#include "fake_abi_ext.h"
#include "fake_control.h"
#include "vgpu_region.h"

static void tamper(const char *path)
{
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0, "open %s", path);
    struct vgpu_region *r = mmap(NULL, VGPU_REGION_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(r != MAP_FAILED, "mmap");
    close(fd);
    for (int i = 0; i < VGPU_MAX_DEVICES; i++)
        if (atomic_load(&r->devices[i].uuid_lo))
            atomic_store(&r->devices[i].memory_limit, VGPU_UNLIMITED);
}

static void case_sees_slice(void)
{
    const char *expect = getenv("VGPU_TEST_EXPECT_MIB");
    CHECK(expect, "the test needs VGPU_TEST_EXPECT_MIB");
    uint64_t slice = strtoull(expect, NULL, 10) * MiB;
    CHECK_CU(cuInit(0), CUDA_SUCCESS);
    CUcontext ctx;
    CHECK_CU(cuDevicePrimaryCtxRetain(&ctx, 0), CUDA_SUCCESS);
    CHECK_CU(cuCtxSetCurrent(ctx), CUDA_SUCCESS);
    const char *region = getenv("VGPU_TEST_TAMPER_REGION");
    if (region)
        tamper(region);
    size_t free_b, total_b;
    CHECK_CU(cuMemGetInfo_v2(&free_b, &total_b), CUDA_SUCCESS);
    CHECK(total_b == slice, "the process sees %zu bytes, not its slice of %llu", total_b, (unsigned long long)slice);
    CUdeviceptr p;
    CHECK_CU(cuMemAlloc_v2(&p, slice), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK_CU(cuMemAlloc_v2(&p, slice / 2), CUDA_SUCCESS);
    CHECK(fake_cuda_device_used(0) <= slice, "the GPU holds %llu bytes", fake_cuda_device_used(0));
    printf("sees %llu MiB\n", (unsigned long long)(total_b / MiB));
}

static void case_fails_closed(void)
{
    CHECK(cuInit(0) != CUDA_SUCCESS, "cuInit succeeded");
    CUdeviceptr p;
    CHECK(cuMemAlloc_v2(&p, MiB) != CUDA_SUCCESS, "cuMemAlloc succeeded");
    CHECK(fake_cuda_device_used(0) == 0, "something reached the driver");
}

static const struct test_case g_cases[] = {
    {"sees_slice", case_sees_slice},
    {"fails_closed", case_fails_closed},
};

int main(int argc, char **argv) { return run_case(argc, argv, g_cases, sizeof g_cases / sizeof g_cases[0]); }
