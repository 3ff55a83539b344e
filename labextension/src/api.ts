/**
 * The server extension's REST API (hami_kernel/serverext), through the
 * server connection JupyterLab itself uses (base URL, token, XSRF).
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import type { UsageReport } from './types';

const API = 'api/vgpu/v1';

async function request<T>(path: string, init: RequestInit, settings: ServerConnection.ISettings): Promise<T> {
  const url = URLExt.join(settings.baseUrl, API, path);
  const response = await ServerConnection.makeRequest(url, init, settings);
  const body = await response.text();
  let data: unknown = null;
  try {
    data = body ? JSON.parse(body) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = (data as { message?: string } | null)?.message;
    throw new ServerConnection.ResponseError(response, message || `${response.status} ${response.statusText}`);
  }
  return data as T;
}

/** The slice, its devices and its kernels, now. */
export function fetchUsage(settings = ServerConnection.makeSettings()): Promise<UsageReport> {
  return request<UsageReport>('usage', { method: 'GET', cache: 'no-store' }, settings);
}

/** What re-dividing a kernel may change; omitted parts stay, "0" lifts the kernel's own cap. */
export interface SliceRequest {
  memory?: string;
  cores?: string | number;
}

/** Re-divides one kernel's share of the slice; resolves to the server's one-line answer. */
export async function setKernelSlice(
  kernelId: string,
  slice: SliceRequest,
  settings = ServerConnection.makeSettings()
): Promise<string> {
  const reply = await request<{ message: string }>(
    `kernels/${encodeURIComponent(kernelId)}/slice`,
    { method: 'POST', body: JSON.stringify(slice) },
    settings
  );
  return reply.message;
}
