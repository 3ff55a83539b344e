/*
 * Live statistics: a background thread publishes this process's launches
 * and compute share into its region slot twice a second, so readers are at
 * most a second behind and the launch path only bumps a counter.
 */
#ifndef VGPU_MONITOR_H
#define VGPU_MONITOR_H

void vgpu_monitor_start(void);
void vgpu_monitor_reset_after_fork(void);

#endif
