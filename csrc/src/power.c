#include "power.h"

#define SECOND 1000000000ull

/* The cube root of x >= 1, by Newton's method from above. libvgpu links no
 * libm for this one function: in the image it is preloaded into every
 * process, and libm would then be loaded into every shell and `ls` too. */
static double cube_root(double x)
{
    double y = 1.0 + (x - 1.0) / 3.0; /* the tangent at 1: never below the root */
    for (int i = 0; i < 200; i++) {
        double next = (2.0 * y + x / (y * y)) / 3.0;
        if (!(next < y))
            break;
        y = next;
    }
    return y;
}

uint32_t vgpu_power_scale(double avg_w, double duty, double idle_w, double limit_w)
{
    /* At low duty the average is mostly idle power, whose estimate's error
     * the division below would multiply; and the speed-up there is small
     * (+8% at 10% duty on an H100 against +11% from 30%). So the full-duty
     * power is extrapolated from at least 20% duty. */
    if (duty < 0.20)
        duty = 0.20;
    if (!(limit_w > idle_w) || !(avg_w > idle_w)) /* also refuses NaN */
        return VGPU_SCALE_ONE;
    double full = idle_w + (avg_w - idle_w) / (duty > 1.0 ? 1.0 : duty);
    if (full <= limit_w)
        return VGPU_SCALE_ONE;
    /* Only the part above the gap's power follows the clock. */
    double scale = cube_root((full - idle_w) / (limit_w - idle_w)) * VGPU_SCALE_ONE;
    return scale >= VGPU_SCALE_MAX ? VGPU_SCALE_MAX : (uint32_t)scale;
}

uint32_t vgpu_power_window_scale(const struct vgpu_power_sample *oldest, const struct vgpu_power_sample *newest,
                                 double idle_w, double limit_w)
{
    if (newest->at_ns < oldest->at_ns + SECOND)
        return 0;
    if (newest->energy_mj < oldest->energy_mj)
        return VGPU_SCALE_ONE;
    double span_ms = (double)(newest->at_ns - oldest->at_ns) / 1e6;
    double avg_w = (double)(newest->energy_mj - oldest->energy_mj) / span_ms; /* mJ per ms */
    double duty = (double)(newest->busy_ns - oldest->busy_ns) / (span_ms * 1e6);
    return vgpu_power_scale(avg_w, duty, idle_w, limit_w);
}
