/*
 * Every way a program can take device memory, charged to the slice before the
 * driver is asked, and uncharged when it is given back.
 *
 * The order is always: charge, call the driver, settle. Charging first means
 * two processes can never both pass the limit while their allocations are in
 * flight; a failed driver call gives the charge back. Over the limit the
 * caller gets CUDA_ERROR_OUT_OF_MEMORY and the driver is not called at all.
 */
#include <stdint.h>

#include "alloc_map.h"
#include "hooks.h"
#include "log.h"
#include "real_driver.h"
#include "runtime.h"

static CUresult settle(CUresult r, int kind, uint64_t handle, uint64_t bytes, int entry)
{
    if (r != CUDA_SUCCESS) {
        vgpu_uncharge(entry, bytes);
        return r;
    }
    /* If the map cannot grow, the charge simply stays: over-counting is the
     * safe direction. */
    if (vgpu_alloc_put(kind, handle, bytes, entry) != 0)
        VGPU_WARN("out of host memory while recording an allocation; it stays charged");
    return r;
}

/* Frees take the record out before calling the driver, so the address cannot
 * be handed out again (and recorded anew) before its old record is gone. */
static CUresult release(int kind, uint64_t handle, CUresult (*call)(uint64_t, void *), void *arg)
{
    struct vgpu_alloc a;
    int had = vgpu_is_ready() && vgpu_alloc_take(kind, handle, &a);
    CUresult r = call(handle, arg);
    if (!had)
        return r;
    if (r == CUDA_SUCCESS)
        vgpu_uncharge(a.device, a.bytes);
    else
        vgpu_alloc_put(kind, handle, a.bytes, a.device);
    return r;
}

static CUresult begin(int *entry)
{
    CUresult r = vgpu_ready();
    return r != CUDA_SUCCESS ? r : vgpu_current_entry(entry);
}

static CUresult charged_on_current(uint64_t bytes, int *entry)
{
    CUresult r = begin(entry);
    return r != CUDA_SUCCESS ? r : vgpu_charge(*entry, bytes);
}

static uint64_t mul_sat(uint64_t a, uint64_t b)
{
    uint64_t out;
    return __builtin_mul_overflow(a, b, &out) ? UINT64_MAX : out;
}

static uint64_t max1(uint64_t v) { return v ? v : 1; }

/* Legacy 32-bit entry points: nothing built since CUDA 3.2 uses them, and
 * letting them through unaccounted would lift the limit. */
static CUresult legacy(const char *name)
{
    VGPU_WARN("%s (the legacy 32-bit ABI) is not supported under libvgpu", name);
    return CUDA_ERROR_NOT_SUPPORTED;
}

/* ---- linear memory ------------------------------------------------------ */

CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    int entry;
    CUresult r = charged_on_current(bytesize, &entry);
    if (r != CUDA_SUCCESS)
        return r;
    r = vgpu_real.cuMemAlloc_v2(dptr, bytesize);
    return settle(r, VGPU_KIND_POINTER, r == CUDA_SUCCESS ? *dptr : 0, bytesize, entry);
}

CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags)
{
    /* Managed memory may migrate to the device at any time: it is charged as
     * device memory, so oversubscription cannot sneak past the slice. */
    int entry;
    CUresult r = charged_on_current(bytesize, &entry);
    if (r != CUDA_SUCCESS)
        return r;
    r = vgpu_real.cuMemAllocManaged(dptr, bytesize, flags);
    return settle(r, VGPU_KIND_POINTER, r == CUDA_SUCCESS ? *dptr : 0, bytesize, entry);
}

CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t width, size_t height,
                            unsigned int elementSize)
{
    /* The pitch is only known afterwards: charge a generous estimate, then
     * settle to the exact pitch * height. */
    uint64_t estimate = mul_sat((width + 511) & ~(uint64_t)511, height);
    int entry;
    CUresult r = charged_on_current(estimate, &entry);
    if (r != CUDA_SUCCESS)
        return r;
    r = vgpu_real.cuMemAllocPitch_v2(dptr, pPitch, width, height, elementSize);
    if (r != CUDA_SUCCESS) {
        vgpu_uncharge(entry, estimate);
        return r;
    }
    uint64_t exact = mul_sat(*pPitch, height);
    if (exact > estimate && vgpu_charge(entry, exact - estimate) != CUDA_SUCCESS) {
        vgpu_real.cuMemFree_v2(*dptr);
        vgpu_uncharge(entry, estimate);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (exact < estimate)
        vgpu_uncharge(entry, estimate - exact);
    return settle(CUDA_SUCCESS, VGPU_KIND_POINTER, *dptr, exact, entry);
}

static CUresult call_free(uint64_t p, void *arg)
{
    (void)arg;
    return vgpu_real.cuMemFree_v2((CUdeviceptr)p);
}

CUresult cuMemFree_v2(CUdeviceptr dptr) { return release(VGPU_KIND_POINTER, dptr, call_free, NULL); }

CUresult cuMemAlloc(CUdeviceptr_v1 *dptr, unsigned int bytesize)
{
    (void)dptr;
    (void)bytesize;
    return legacy("cuMemAlloc");
}

CUresult cuMemAllocPitch(CUdeviceptr_v1 *dptr, unsigned int *pPitch, unsigned int width,
                         unsigned int height, unsigned int elementSize)
{
    (void)dptr, (void)pPitch, (void)width, (void)height, (void)elementSize;
    return legacy("cuMemAllocPitch");
}

CUresult cuMemFree(CUdeviceptr_v1 dptr)
{
    (void)dptr;
    return legacy("cuMemFree");
}

/* ---- stream-ordered memory ---------------------------------------------- */

/* Charged at the call, like any other allocation: the bytes are the
 * program's from then on. The pool may keep freed memory cached for reuse;
 * that cache is not charged, so a slice's pools never block one another. */
#define STREAM_ALLOC(name, call)                                                                 \
    CUresult name(CUdeviceptr *dptr, size_t bytesize, CUstream stream)                           \
    {                                                                                            \
        int entry;                                                                               \
        CUresult r = charged_on_current(bytesize, &entry);                                       \
        if (r != CUDA_SUCCESS)                                                                   \
            return r;                                                                            \
        r = vgpu_real.call(dptr, bytesize, stream);                                              \
        return settle(r, VGPU_KIND_POINTER, r == CUDA_SUCCESS ? *dptr : 0, bytesize, entry);     \
    }
STREAM_ALLOC(cuMemAllocAsync, cuMemAllocAsync)
STREAM_ALLOC(cuMemAllocAsync_ptsz, cuMemAllocAsync_ptsz)

#define POOL_ALLOC(name, call)                                                                   \
    CUresult name(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, CUstream stream)        \
    {                                                                                            \
        int entry;                                                                               \
        CUresult r = charged_on_current(bytesize, &entry);                                       \
        if (r != CUDA_SUCCESS)                                                                   \
            return r;                                                                            \
        r = vgpu_real.call(dptr, bytesize, pool, stream);                                        \
        return settle(r, VGPU_KIND_POINTER, r == CUDA_SUCCESS ? *dptr : 0, bytesize, entry);     \
    }
POOL_ALLOC(cuMemAllocFromPoolAsync, cuMemAllocFromPoolAsync)
POOL_ALLOC(cuMemAllocFromPoolAsync_ptsz, cuMemAllocFromPoolAsync_ptsz)

static CUresult call_free_async(uint64_t p, void *stream)
{
    return vgpu_real.cuMemFreeAsync((CUdeviceptr)p, (CUstream)stream);
}

static CUresult call_free_async_ptsz(uint64_t p, void *stream)
{
    return vgpu_real.cuMemFreeAsync_ptsz((CUdeviceptr)p, (CUstream)stream);
}

CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream stream)
{
    return release(VGPU_KIND_POINTER, dptr, call_free_async, stream);
}

CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream stream)
{
    return release(VGPU_KIND_POINTER, dptr, call_free_async_ptsz, stream);
}

/* ---- arrays ------------------------------------------------------------- */

static uint64_t element_bytes(CUarray_format format)
{
    switch (format) {
    case CU_AD_FORMAT_UNSIGNED_INT8:
    case CU_AD_FORMAT_SIGNED_INT8:
        return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16:
    case CU_AD_FORMAT_SIGNED_INT16:
    case CU_AD_FORMAT_HALF:
        return 2;
    case CU_AD_FORMAT_UNSIGNED_INT32:
    case CU_AD_FORMAT_SIGNED_INT32:
    case CU_AD_FORMAT_FLOAT:
        return 4;
    default:
        return 16; /* formats we do not size exactly are charged generously */
    }
}

static uint64_t array3d_bytes(const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned int level)
{
    uint64_t w = max1(d->Width >> level);
    uint64_t h = d->Height ? max1(d->Height >> level) : 1;
    /* Layers (and a cubemap's faces) do not shrink with the mip level. */
    uint64_t depth = (d->Flags & (CUDA_ARRAY3D_LAYERED | CUDA_ARRAY3D_CUBEMAP)) ? max1(d->Depth)
                     : d->Depth                                                   ? max1(d->Depth >> level)
                                                                                  : 1;
    return mul_sat(mul_sat(mul_sat(w, h), depth), mul_sat(element_bytes(d->Format), max1(d->NumChannels)));
}

CUresult cuArrayCreate_v2(CUarray *arr, const CUDA_ARRAY_DESCRIPTOR *desc)
{
    if (!desc)
        return vgpu_real.cuArrayCreate_v2(arr, desc);
    uint64_t bytes = mul_sat(mul_sat(max1(desc->Width), max1(desc->Height)),
                             mul_sat(element_bytes(desc->Format), max1(desc->NumChannels)));
    int entry;
    CUresult r = charged_on_current(bytes, &entry);
    if (r != CUDA_SUCCESS)
        return r;
    r = vgpu_real.cuArrayCreate_v2(arr, desc);
    return settle(r, VGPU_KIND_ARRAY, r == CUDA_SUCCESS ? (uint64_t)(uintptr_t)*arr : 0, bytes, entry);
}

CUresult cuArray3DCreate_v2(CUarray *arr, const CUDA_ARRAY3D_DESCRIPTOR *desc)
{
    if (!desc)
        return vgpu_real.cuArray3DCreate_v2(arr, desc);
    uint64_t bytes = array3d_bytes(desc, 0);
    int entry;
    CUresult r = charged_on_current(bytes, &entry);
    if (r != CUDA_SUCCESS)
        return r;
    r = vgpu_real.cuArray3DCreate_v2(arr, desc);
    return settle(r, VGPU_KIND_ARRAY, r == CUDA_SUCCESS ? (uint64_t)(uintptr_t)*arr : 0, bytes, entry);
}

static CUresult call_array_destroy(uint64_t a, void *arg)
{
    (void)arg;
    return vgpu_real.cuArrayDestroy((CUarray)(uintptr_t)a);
}

CUresult cuArrayDestroy(CUarray arr)
{
    return release(VGPU_KIND_ARRAY, (uint64_t)(uintptr_t)arr, call_array_destroy, NULL);
}

CUresult cuMipmappedArrayCreate(CUmipmappedArray *arr, const CUDA_ARRAY3D_DESCRIPTOR *desc,
                                unsigned int levels)
{
    if (!desc)
        return vgpu_real.cuMipmappedArrayCreate(arr, desc, levels);
    uint64_t bytes = 0;
    for (unsigned int l = 0; l < levels && l < 64; l++) {
        uint64_t b = array3d_bytes(desc, l);
        bytes = bytes + b < bytes ? UINT64_MAX : bytes + b;
    }
    int entry;
    CUresult r = charged_on_current(bytes, &entry);
    if (r != CUDA_SUCCESS)
        return r;
    r = vgpu_real.cuMipmappedArrayCreate(arr, desc, levels);
    return settle(r, VGPU_KIND_MIPMAP, r == CUDA_SUCCESS ? (uint64_t)(uintptr_t)*arr : 0, bytes, entry);
}

static CUresult call_mipmap_destroy(uint64_t a, void *arg)
{
    (void)arg;
    return vgpu_real.cuMipmappedArrayDestroy((CUmipmappedArray)(uintptr_t)a);
}

CUresult cuMipmappedArrayDestroy(CUmipmappedArray arr)
{
    return release(VGPU_KIND_MIPMAP, (uint64_t)(uintptr_t)arr, call_mipmap_destroy, NULL);
}

CUresult cuArrayCreate(CUarray *arr, const void *desc_v1)
{
    (void)arr, (void)desc_v1;
    return legacy("cuArrayCreate");
}

CUresult cuArray3DCreate(CUarray *arr, const void *desc_v1)
{
    (void)arr, (void)desc_v1;
    return legacy("cuArray3DCreate");
}

/* ---- virtual memory management (PyTorch expandable_segments) ------------ */

CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp *prop,
                     unsigned long long flags)
{
    CUresult r = vgpu_ready();
    if (r != CUDA_SUCCESS)
        return r;
    /* Physical memory lands on the device the properties name, which need not
     * be the current context's. Host-located memory is not the GPU's. */
    if (!prop || prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return vgpu_real.cuMemCreate(handle, size, prop, flags);
    int entry = vgpu_entry_of_ordinal(prop->location.id);
    if (entry < 0)
        return CUDA_ERROR_INVALID_DEVICE;
    if ((r = vgpu_charge(entry, size)) != CUDA_SUCCESS)
        return r;
    r = vgpu_real.cuMemCreate(handle, size, prop, flags);
    return settle(r, VGPU_KIND_PHYSICAL, r == CUDA_SUCCESS ? *handle : 0, size, entry);
}

static CUresult call_release(uint64_t h, void *arg)
{
    (void)arg;
    return vgpu_real.cuMemRelease((CUmemGenericAllocationHandle)h);
}

CUresult cuMemRelease(CUmemGenericAllocationHandle handle)
{
    return release(VGPU_KIND_PHYSICAL, handle, call_release, NULL);
}
