/*
 * NVML's memory figures for a GPU of the slice describe the slice, so
 * nvidia-smi and pynvml run inside it agree with cuMemGetInfo. The GPU is
 * matched by UUID, which NVML and CUDA agree on whatever the numbering.
 */
#include <string.h>

#include "hooks.h"
#include "real_driver.h"
#include "runtime.h"

static int hex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* "GPU-8-4-4-4-12 hex" -> 16 bytes. */
static int parse_uuid(const char *text, unsigned char out[16])
{
    const char *p = strncmp(text, "GPU-", 4) == 0 ? text + 4 : text;
    int n = 0;
    for (; *p && n < 32; p++) {
        if (*p == '-')
            continue;
        int v = hex(*p);
        if (v < 0)
            return -1;
        if (n % 2 == 0)
            out[n / 2] = (unsigned char)(v << 4);
        else
            out[n / 2] |= (unsigned char)v;
        n++;
    }
    return n == 32 ? 0 : -1;
}

/* The slice's device entry for an NVML device, -1 if it is not in the slice,
 * -2 if libvgpu has failed closed. */
static int slice_entry(nvmlDevice_t device)
{
    CUresult r = vgpu_ready();
    if (r != CUDA_SUCCESS)
        return atomic_load(&vgpu_rt.state) == VGPU_STATE_BROKEN ? -2 : -1;
    char text[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
    unsigned char uuid[16];
    if (!vgpu_real.nvmlDeviceGetUUID || vgpu_real.nvmlDeviceGetUUID(device, text, sizeof text) != NVML_SUCCESS ||
        parse_uuid(text, uuid) != 0)
        return -1;
    for (int i = 0; i < vgpu_rt.device_count; i++)
        if (memcmp(vgpu_rt.uuid_of_ordinal[i], uuid, 16) == 0)
            return vgpu_rt.entry_of_ordinal[i];
    return -1;
}

/* Narrows a successful answer of NVML's about a device to the slice.
 * Returns 1 if the device is in the slice, 0 if not, -1 if libvgpu has
 * failed closed. */
static int narrow(nvmlDevice_t device, unsigned long long *total, unsigned long long *free_bytes,
                  unsigned long long *used)
{
    int entry = slice_entry(device);
    if (entry < 0)
        return entry == -2 ? -1 : 0;
    uint64_t f = *free_bytes, t = *total;
    vgpu_slice_view(entry, &f, &t);
    *total = t;
    *free_bytes = f;
    *used = t - f;
    return 1;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    if (vgpu_real_nvml_load() != 0 || !vgpu_real.nvmlDeviceGetMemoryInfo)
        return NVML_ERROR_UNINITIALIZED;
    nvmlReturn_t r = vgpu_real.nvmlDeviceGetMemoryInfo(device, memory);
    if (r != NVML_SUCCESS || !memory)
        return r;
    return narrow(device, &memory->total, &memory->free, &memory->used) < 0 ? NVML_ERROR_UNKNOWN : r;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    if (vgpu_real_nvml_load() != 0 || !vgpu_real.nvmlDeviceGetMemoryInfo_v2)
        return NVML_ERROR_UNINITIALIZED;
    nvmlReturn_t r = vgpu_real.nvmlDeviceGetMemoryInfo_v2(device, memory);
    if (r != NVML_SUCCESS || !memory)
        return r;
    int in_slice = narrow(device, &memory->total, &memory->free, &memory->used);
    if (in_slice < 0)
        return NVML_ERROR_UNKNOWN;
    /* Inside a slice the driver's reservation is not the slice's: total = free + used. */
    if (in_slice)
        memory->reserved = 0;
    return r;
}
