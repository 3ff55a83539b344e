/* Stands in for a profiler preloaded before libvgpu: it wraps cuMemAlloc_v2
 * and chains to "the next one" with dlsym(RTLD_NEXT), as tracing tools do.
 * The chain must land in libvgpu, or the profiler would bypass the slice. */
#include <dlfcn.h>

#include "driver_abi.h"

static unsigned long g_calls;

__attribute__((visibility("default"))) unsigned long shim_calls(void) { return g_calls; }

__attribute__((visibility("default"))) CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    g_calls++;
    cu_fn_cuMemAlloc_v2 next = (cu_fn_cuMemAlloc_v2)dlsym(RTLD_NEXT, "cuMemAlloc_v2");
    return next ? next(dptr, bytesize) : CUDA_ERROR_NOT_INITIALIZED;
}
