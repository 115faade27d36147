// Which backend a new tensor lands on. The CPU backend always exists; the
// WebGPU backend registers itself once initWebGPU() has found an adapter.

import type { Backend, DeviceName } from './backend.ts';
import { CpuBackend } from './cpu/backend.ts';

const backends = new Map<DeviceName, Backend>([['cpu', new CpuBackend()]]);
let defaultDevice: DeviceName = 'cpu';

/** Makes a backend available under its name (called by the WebGPU init). */
export function registerBackend(backend: Backend): void {
  backends.set(backend.name, backend);
}

/** Removes a backend (after its device was closed). */
export function unregisterBackend(name: DeviceName): void {
  if (name === 'cpu') throw new Error('the cpu backend cannot be removed');
  backends.delete(name);
  if (defaultDevice === name) defaultDevice = 'cpu';
}

/** The backend for a device, or a clear error when it was not initialised. */
export function getBackend(device: DeviceName = defaultDevice): Backend {
  const b = backends.get(device);
  if (!b) throw new Error(`device '${device}' is not initialised: call initWebGPU() first, or use device 'cpu'`);
  return b;
}

/** Where tensors are created when no device is given. */
export function setDefaultDevice(device: DeviceName): void {
  getBackend(device);
  defaultDevice = device;
}

/** The current default device. */
export function getDefaultDevice(): DeviceName {
  return defaultDevice;
}

/** Every initialised backend. */
export function allBackends(): Backend[] {
  return [...backends.values()];
}
