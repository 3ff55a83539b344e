/*
 * What programs are told about memory: the slice, not the card. PyTorch's
 * torch.cuda.mem_get_info(), cudaMemGetInfo and cuDeviceTotalMem all land
 * here. NULL out-pointers get exactly the driver's own answer.
 */
#include "hooks.h"
#include "log.h"
#include "real_driver.h"
#include "runtime.h"

CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes)
{
    CUresult r = vgpu_ready();
    if (r != CUDA_SUCCESS)
        return r;
    if (!free_bytes || !total_bytes)
        return vgpu_real.cuMemGetInfo_v2(free_bytes, total_bytes);
    r = vgpu_real.cuMemGetInfo_v2(free_bytes, total_bytes);
    int entry;
    if (r != CUDA_SUCCESS || vgpu_current_entry(&entry) != CUDA_SUCCESS)
        return r;
    uint64_t f = *free_bytes, t = *total_bytes;
    vgpu_slice_view(entry, &f, &t);
    *free_bytes = (size_t)f;
    *total_bytes = (size_t)t;
    return r;
}

CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
{
    CUresult r = vgpu_ready();
    if (r != CUDA_SUCCESS)
        return r;
    r = vgpu_real.cuDeviceTotalMem_v2(bytes, dev);
    int entry = vgpu_entry_of_ordinal(dev);
    if (r != CUDA_SUCCESS || !bytes || entry < 0)
        return r;
    uint64_t f = *bytes, t = *bytes;
    vgpu_slice_view(entry, &f, &t);
    *bytes = (size_t)t;
    return r;
}

CUresult cuMemGetInfo(unsigned int *free_bytes, unsigned int *total_bytes)
{
    (void)free_bytes, (void)total_bytes;
    VGPU_WARN("cuMemGetInfo (the legacy 32-bit ABI) is not supported under libvgpu");
    return CUDA_ERROR_NOT_SUPPORTED;
}

CUresult cuDeviceTotalMem(unsigned int *bytes, CUdevice dev)
{
    (void)bytes, (void)dev;
    VGPU_WARN("cuDeviceTotalMem (the legacy 32-bit ABI) is not supported under libvgpu");
    return CUDA_ERROR_NOT_SUPPORTED;
}
