/*
 * Kernel launches, every entry point: each goes through the limiter, which
 * counts it and, for a process with a compute share, lets it run only in the
 * process's turn on the GPU. Graph and cooperative launches are paced like
 * any other: the limiter charges turns by the time the GPU spends on them.
 */
#include "hooks.h"
#include "limiter.h"
#include "real_driver.h"

#define LAUNCH(stream, per_thread, call)                                                          \
    do {                                                                                          \
        struct vgpu_launch l;                                                                     \
        CUresult r = vgpu_launch_enter(stream, per_thread, &l);                                   \
        if (r != CUDA_SUCCESS)                                                                    \
            return r;                                                                             \
        r = call;                                                                                 \
        vgpu_launch_exit(&l, stream, per_thread, r);                                              \
        return r;                                                                                 \
    } while (0)

CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                        unsigned int by, unsigned int bz, unsigned int shmem, CUstream stream, void **params,
                        void **extra)
{
    LAUNCH(stream, 0, vgpu_real.cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shmem, stream, params, extra));
}

CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                             unsigned int by, unsigned int bz, unsigned int shmem, CUstream stream,
                             void **params, void **extra)
{
    LAUNCH(stream, 1, vgpu_real.cuLaunchKernel_ptsz(f, gx, gy, gz, bx, by, bz, shmem, stream, params, extra));
}

CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **params, void **extra)
{
    LAUNCH(config ? config->hStream : NULL, 0, vgpu_real.cuLaunchKernelEx(config, f, params, extra));
}

CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f, void **params, void **extra)
{
    LAUNCH(config ? config->hStream : NULL, 1, vgpu_real.cuLaunchKernelEx_ptsz(config, f, params, extra));
}

CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                   unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                                   CUstream stream, void **params)
{
    LAUNCH(stream, 0, vgpu_real.cuLaunchCooperativeKernel(f, gx, gy, gz, bx, by, bz, shmem, stream, params));
}

CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                        unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                                        CUstream stream, void **params)
{
    LAUNCH(stream, 1,
           vgpu_real.cuLaunchCooperativeKernel_ptsz(f, gx, gy, gz, bx, by, bz, shmem, stream, params));
}

CUresult cuGraphLaunch(CUgraphExec exec, CUstream stream)
{
    LAUNCH(stream, 0, vgpu_real.cuGraphLaunch(exec, stream));
}

CUresult cuGraphLaunch_ptsz(CUgraphExec exec, CUstream stream)
{
    LAUNCH(stream, 1, vgpu_real.cuGraphLaunch_ptsz(exec, stream));
}
