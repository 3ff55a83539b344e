#include "power.h"

#include <string.h>

#include "real_driver.h"

void vgpu_power_meter_open(struct vgpu_power_meter *m, const unsigned char uuid[16])
{
    memset(m, 0, sizeof *m);
    unsigned int limit_mw = 0, power_mw = 0;
    unsigned long long energy;
    if (vgpu_real_nvml_device(uuid, &m->dev) != 0 || !vgpu_real.nvmlDeviceGetTotalEnergyConsumption ||
        !vgpu_real.nvmlDeviceGetEnforcedPowerLimit || !vgpu_real.nvmlDeviceGetPowerUsage ||
        !vgpu_real.nvmlDeviceGetComputeRunningProcesses_v3 ||
        vgpu_real.nvmlDeviceGetEnforcedPowerLimit(m->dev, &limit_mw) != NVML_SUCCESS ||
        vgpu_real.nvmlDeviceGetPowerUsage(m->dev, &power_mw) != NVML_SUCCESS ||
        vgpu_real.nvmlDeviceGetTotalEnergyConsumption(m->dev, &energy) != NVML_SUCCESS || limit_mw == 0)
        return;
    m->limit_w = limit_mw / 1000.0;
    m->open_w = power_mw / 1000.0;
    m->idle_w = m->open_w + VGPU_POWER_GAP_ALLOWANCE * m->limit_w;
    m->usable = 1;
}

/* Whether this process is the only one NVML sees computing on the GPU. */
static int alone(const struct vgpu_power_meter *m)
{
    nvmlProcessInfo_t infos[4];
    unsigned int count = 4;
    return vgpu_real.nvmlDeviceGetComputeRunningProcesses_v3(m->dev, &count, infos) == NVML_SUCCESS && count <= 1;
}

uint32_t vgpu_power_meter_sample(struct vgpu_power_meter *m, uint64_t now_ns, uint64_t busy_ns)
{
    unsigned long long energy;
    if (!m->usable)
        return VGPU_SCALE_ONE;
    if (!alone(m) || vgpu_real.nvmlDeviceGetTotalEnergyConsumption(m->dev, &energy) != NVML_SUCCESS) {
        m->count = 0; /* a window must not span time shared with others */
        return VGPU_SCALE_ONE;
    }
    struct vgpu_power_sample *slot = &m->ring[m->next];
    *slot = (struct vgpu_power_sample){now_ns, energy, busy_ns};
    m->next = (m->next + 1) % VGPU_POWER_SAMPLES;
    if (m->count < VGPU_POWER_SAMPLES)
        m->count++;
    if (m->count < 2)
        return 0;
    const struct vgpu_power_sample *oldest = &m->ring[(m->next + VGPU_POWER_SAMPLES - m->count) % VGPU_POWER_SAMPLES];
    m->last_scale = vgpu_power_window_scale(oldest, slot, m->idle_w, m->limit_w);
    double span_ms = (double)(slot->at_ns - oldest->at_ns) / 1e6;
    if (span_ms > 0 && slot->energy_mj >= oldest->energy_mj) {
        m->last_avg_w = (double)(slot->energy_mj - oldest->energy_mj) / span_ms;
        m->last_duty = (double)(slot->busy_ns - oldest->busy_ns) / (span_ms * 1e6);
    }
    return m->last_scale;
}
