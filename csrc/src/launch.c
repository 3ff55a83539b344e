/*
 * Kernel launches. Every launch entry point is wrapped so that the compute
 * limiter has one place to act; with no compute cap they forward at once.
 */
#include "hooks.h"
#include "real_driver.h"
#include "runtime.h"

#define READY_OR_RETURN()                                                                         \
    do {                                                                                          \
        CUresult ready = vgpu_ready();                                                            \
        if (ready != CUDA_SUCCESS)                                                                \
            return ready;                                                                         \
    } while (0)

CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                        unsigned int by, unsigned int bz, unsigned int shmem, CUstream stream, void **params,
                        void **extra)
{
    READY_OR_RETURN();
    return vgpu_real.cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shmem, stream, params, extra);
}

CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                             unsigned int by, unsigned int bz, unsigned int shmem, CUstream stream,
                             void **params, void **extra)
{
    READY_OR_RETURN();
    return vgpu_real.cuLaunchKernel_ptsz(f, gx, gy, gz, bx, by, bz, shmem, stream, params, extra);
}

CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **params, void **extra)
{
    READY_OR_RETURN();
    return vgpu_real.cuLaunchKernelEx(config, f, params, extra);
}

CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f, void **params, void **extra)
{
    READY_OR_RETURN();
    return vgpu_real.cuLaunchKernelEx_ptsz(config, f, params, extra);
}

CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                   unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                                   CUstream stream, void **params)
{
    READY_OR_RETURN();
    return vgpu_real.cuLaunchCooperativeKernel(f, gx, gy, gz, bx, by, bz, shmem, stream, params);
}

CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                        unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                                        CUstream stream, void **params)
{
    READY_OR_RETURN();
    return vgpu_real.cuLaunchCooperativeKernel_ptsz(f, gx, gy, gz, bx, by, bz, shmem, stream, params);
}

CUresult cuGraphLaunch(CUgraphExec exec, CUstream stream)
{
    READY_OR_RETURN();
    return vgpu_real.cuGraphLaunch(exec, stream);
}

CUresult cuGraphLaunch_ptsz(CUgraphExec exec, CUstream stream)
{
    READY_OR_RETURN();
    return vgpu_real.cuGraphLaunch_ptsz(exec, stream);
}
