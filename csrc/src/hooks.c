#include "hooks.h"

#include <stddef.h>
#include <string.h>

#include "log.h"
#include "real_driver.h"
#include "runtime.h"

struct hook {
    const char *name;
    void *wrapper;
    void **real; /* slot in vgpu_real */
};

#define VGPU_HOOK_ENTRY(name, params, args) {#name, (void *)name, (void **)&vgpu_real.name},
static const struct hook g_hooks[] = {
    VGPU_CUDA_HOOKS(VGPU_HOOK_ENTRY)
    VGPU_NVML_HOOKS(VGPU_HOOK_ENTRY)
};
#undef VGPU_HOOK_ENTRY
#define HOOK_COUNT (sizeof g_hooks / sizeof g_hooks[0])

void *vgpu_wrapper_for_name(const char *name)
{
    for (size_t i = 0; i < HOOK_COUNT; i++)
        if (strcmp(g_hooks[i].name, name) == 0)
            return g_hooks[i].wrapper;
    return NULL;
}

void *vgpu_wrapper_for_real(const void *real)
{
    if (!real)
        return NULL;
    for (size_t i = 0; i < HOOK_COUNT; i++)
        if (*g_hooks[i].real == real)
            return g_hooks[i].wrapper;
    return NULL;
}

/* Length of a versioned name without its ABI suffix (_v2, _v3, _v4, _ptsz, _ptds). */
static size_t base_length(const char *name)
{
    static const char *const suffixes[] = {"_v2", "_v3", "_v4", "_ptsz", "_ptds"};
    size_t len = strlen(name);
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        size_t s = strlen(suffixes[i]);
        if (len > s && strcmp(name + len - s, suffixes[i]) == 0)
            return len - s;
    }
    return len;
}

int vgpu_base_name_wrapped(const char *base)
{
    size_t len = strlen(base);
    for (size_t i = 0; i < HOOK_COUNT; i++)
        if (base_length(g_hooks[i].name) == len && strncmp(g_hooks[i].name, base, len) == 0)
            return 1;
    return 0;
}

/* Cheap test for the two prefixes libvgpu wraps, without libc: this runs for
 * every dlsym in the process. */
__attribute__((no_sanitize("address", "undefined"))) static int driver_name(const char *name)
{
    return (name[0] == 'c' && name[1] == 'u') ||
           (name[0] == 'n' && name[1] == 'v' && name[2] == 'm' && name[3] == 'l');
}

/* Called by the dlsym trampoline for every handle but RTLD_NEXT. Sanitizer
 * runtimes call dlsym while they start, before instrumented code may run, so
 * the path every lookup takes is left uninstrumented. */
__attribute__((visibility("hidden"), no_sanitize("address", "undefined"))) void *
vgpu_dlsym_hooked(void *handle, const char *name)
{
    void *found = vgpu_libc_dlsym(handle, name);
    /* Substitute only what the library really has, so "does this driver
     * provide X?" keeps its true answer. */
    if (!found || !name || !driver_name(name))
        return found;
    void *wrapper = vgpu_wrapper_for_name(name);
    if (!wrapper)
        return found;
    if (name[0] == 'c' ? vgpu_real_cuda_load() : vgpu_real_nvml_load())
        return found; /* nothing to forward to: the program keeps the real one */
    return wrapper;
}

/* The driver picked the entry point for the caller's CUDA version and stream
 * semantics; answer with the wrapper of exactly that entry point. */
static CUresult route(const char *symbol, void **pfn, CUresult r)
{
    if (r != CUDA_SUCCESS || !pfn || !*pfn)
        return r;
    void *wrapper = vgpu_wrapper_for_real(*pfn);
    if (wrapper) {
        *pfn = wrapper;
    } else if (vgpu_base_name_wrapped(symbol)) {
        /* An entry point of a wrapped family that we cannot identify would run
         * unaccounted: refuse it rather than lift the limit. */
        VGPU_ERROR("cuGetProcAddress(\"%s\") returned an entry point libvgpu does not know; "
                   "refusing it so the slice's limits cannot be bypassed",
                   symbol);
        *pfn = NULL;
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    return r;
}

CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *symbolStatus)
{
    if (vgpu_real_cuda_load() || !vgpu_real.cuGetProcAddress_v2)
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult r = vgpu_real.cuGetProcAddress_v2(symbol, pfn, cudaVersion, flags, symbolStatus);
    return route(symbol, pfn, r);
}

CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags)
{
    if (vgpu_real_cuda_load() || !vgpu_real.cuGetProcAddress)
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult r = vgpu_real.cuGetProcAddress(symbol, pfn, cudaVersion, flags);
    return route(symbol, pfn, r);
}
