#include "real_driver.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#include "log.h"

struct vgpu_real vgpu_real;

static pthread_once_t g_cuda_once = PTHREAD_ONCE_INIT;
static pthread_once_t g_nvml_once = PTHREAD_ONCE_INIT;
static int g_cuda_ok;
static int g_nvml_ok;

void *vgpu_resolve_real_dlsym(void);

__attribute__((no_sanitize("address", "undefined"))) void *vgpu_libc_dlsym(void *handle, const char *name)
{
    void *(*real)(void *, const char *) = (void *(*)(void *, const char *))vgpu_resolve_real_dlsym();
    return real(handle, name);
}

#define VGPU_RESOLVE(name, params, args)                                                     \
    *(void **)&vgpu_real.name = vgpu_libc_dlsym(handle, #name);

static void load_cuda(void)
{
    void *handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        VGPU_ERROR("cannot open the real CUDA driver libcuda.so.1: %s", dlerror());
        return;
    }
    VGPU_CUDA_HOOKS(VGPU_RESOLVE)
    VGPU_CUDA_HELPERS(VGPU_RESOLVE)
    g_cuda_ok = vgpu_real.cuInit != NULL && vgpu_real.cuCtxGetDevice != NULL;
    if (!g_cuda_ok)
        VGPU_ERROR("libcuda.so.1 lacks cuInit or cuCtxGetDevice; is it a CUDA driver?");
}

static void load_nvml(void)
{
    void *handle = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        VGPU_INFO("NVML (libnvidia-ml.so.1) is not available: %s", dlerror());
        return;
    }
    VGPU_NVML_HOOKS(VGPU_RESOLVE)
    VGPU_NVML_HELPERS(VGPU_RESOLVE)
    g_nvml_ok = vgpu_real.nvmlInit_v2 != NULL && vgpu_real.nvmlDeviceGetUUID != NULL;
}

int vgpu_real_cuda_load(void)
{
    pthread_once(&g_cuda_once, load_cuda);
    return g_cuda_ok ? 0 : -1;
}

int vgpu_real_nvml_load(void)
{
    pthread_once(&g_nvml_once, load_nvml);
    return g_nvml_ok ? 0 : -1;
}

int vgpu_real_nvml_device(const unsigned char u[16], nvmlDevice_t *dev)
{
    if (vgpu_real_nvml_load() != 0 || !vgpu_real.nvmlDeviceGetHandleByUUID || vgpu_real.nvmlInit_v2() != NVML_SUCCESS)
        return -1;
    char uuid[48];
    snprintf(uuid, sizeof uuid, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
             u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
    return vgpu_real.nvmlDeviceGetHandleByUUID(uuid, dev) == NVML_SUCCESS ? 0 : -1;
}
