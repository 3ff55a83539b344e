/**
 * The document `GET {base_url}api/vgpu/v1/usage` answers (hami_kernel/serverext/usage.py).
 * Base units: bytes, and ratios of one GPU (0.3 for 30%).
 */

/** Which case the report is: see `message` for it in words. */
export type UsageStatus = 'ok' | 'no_slice' | 'no_usage_yet' | 'region_error';

export interface SliceLimit {
  index: number;
  memory_limit_bytes: number | null;
  compute_cap_ratio: number | null;
}

export interface SliceInfo {
  region: string;
  policy: string;
  limits: SliceLimit[];
}

export interface DeviceUsage {
  uuid: string;
  name: string | null;
  memory_used_bytes: number;
  memory_limit_bytes: number | null;
  compute_used_ratio: number;
  compute_cap_ratio: number | null;
}

export interface KernelDeviceUsage {
  uuid: string;
  memory_used_bytes: number;
  memory_limit_bytes: number | null;
  /** What the GPU driver attributes to the process (nvidia-smi's figure); null when unknown. */
  driver_memory_used_bytes: number | null;
  compute_used_ratio: number;
  compute_cap_ratio: number | null;
  launches: number;
}

export interface KernelUsage {
  kernel_id: string | null;
  identity: string;
  pid: number;
  kernel_name: string | null;
  path: string | null;
  session_type: string | null;
  execution_state: string | null;
  idle_seconds: number | null;
  gpu_idle_seconds: number | null;
  /** How long it has surely launched no GPU work (what the idle policy goes by). */
  gpu_quiet_seconds?: number | null;
  launches: number;
  devices: KernelDeviceUsage[];
  /** Idle past the policy's threshold: not executing, no cell run and no GPU launch. */
  idle?: boolean;
  /** When the idle policy will shut it down (seconds since the epoch), or null. */
  reclaim_at?: number | null;
}

/** What the idle-memory policy did or will do; `message` says it in words. */
export interface IdleNotice {
  id: string;
  time: number;
  /** warning: a shutdown is announced; shutdown: done; kept: called off; idle: warn-only; failed: not done. */
  kind: 'warning' | 'shutdown' | 'kept' | 'idle' | 'failed';
  kernel_id: string;
  path: string | null;
  memory_bytes: number;
  freed_bytes: number | null;
  deadline: number | null;
  source: string;
  message: string;
}

export interface IdlePolicy {
  action: 'off' | 'warn' | 'shutdown';
  idle_after_seconds: number;
  min_memory_bytes: number;
  grace_seconds: number;
}

export interface IdleInfo {
  policy: IdlePolicy;
  /** VRAM held by kernels idle past the threshold, in all and per device UUID. */
  memory_bytes: number;
  devices: Record<string, number>;
  notices: IdleNotice[];
}

export interface UsageReport {
  version: number;
  time: number;
  status: UsageStatus;
  message: string;
  slice: SliceInfo | null;
  devices: DeviceUsage[];
  kernels: KernelUsage[];
  /** The idle-memory policy, its marks and its recent notices (absent from older servers). */
  idle?: IdleInfo;
}
