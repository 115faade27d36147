// Finding a GPU and opening it. Dawn (the `webgpu` package) picks the
// platform's native API by default: Vulkan on Linux, Metal on macOS, D3D12
// on Windows. A Linux machine without a GPU driver still has WebGPU through
// Dawn's OpenGL ES backend on Mesa's software rasteriser (llvmpipe), in
// WebGPU's "compatibility" feature level, with EGL told to run without a
// display (EGL_PLATFORM=surfaceless). That path is slow but exact, and it is
// how CI runs the WebGPU tests.
//
// Lifetime: the object returned by create() must stay referenced for as long
// as its device is in use. Once it is garbage-collected, mapAsync never
// resolves or the process crashes, so the backend holds it until
// closeWebGPU(), which drops both so the process can exit.

import type { DeviceName } from '../backend.ts';
import { registerBackend, unregisterBackend } from '../device.ts';
import { type AdapterDescription, WebGPUBackend } from './backend.ts';

/** Options for initWebGPU. */
export interface WebGPUOptions {
  /** Do not print the adapter line. */
  quiet?: boolean;
  /**
   * Force one of Dawn's backends ('vulkan', 'metal', 'd3d12', 'opengles', ...).
   * Defaults to NANOVLM_WEBGPU_BACKEND, else Dawn's default with the GLES fallback.
   */
  backend?: string;
}

/** What to install when no adapter exists: the one line every entry point prints. */
export const NO_ADAPTER_MESSAGE =
  'no WebGPU adapter found: install a GPU driver with Vulkan support (e.g. apt-get install libvulkan1 mesa-vulkan-drivers), ' +
  "or Mesa's EGL for the software path (apt-get install libegl-dev libgl1-mesa-dri; Dawn opens the unversioned libEGL.so)";

// The open backend; it also holds the Dawn instance (see above) until closeWebGPU().
let backend: WebGPUBackend | null = null;
// Every Dawn instance ever created, including ones that found no adapter: Dawn
// crashes when it collects one (even unused) while the process runs on, so
// none is ever let go.
const instances: GPU[] = [];
let opening: Promise<WebGPUBackend> | null = null;

/** The requested limits: everything the adapter offers for the limits our kernels care about. */
const LIMITS = [
  'maxStorageBufferBindingSize', 'maxBufferSize', 'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX', 'maxComputeWorkgroupSizeY', 'maxComputeWorkgroupSizeZ',
  'maxComputeWorkgroupStorageSize', 'maxComputeWorkgroupsPerDimension', 'maxStorageBuffersPerShaderStage',
  'maxUniformBufferBindingSize', 'maxUniformBuffersPerShaderStage',
] as const;

/** The backends to try, in order: Dawn's default, then GLES (Linux only). */
function candidates(forced: string | undefined): { options: string[]; name: string; compat: boolean }[] {
  if (forced) return [{ options: [`backend=${forced}`], name: forced, compat: forced.startsWith('opengl') }];
  const list = [{ options: [] as string[], name: 'default', compat: false }];
  if (process.platform !== 'linux') return list;
  // Dawn's default on Linux is Vulkan; without the Vulkan loader it only prints an error trace
  if (!hasVulkanLoader()) list.pop();
  list.push({ options: ['backend=opengles'], name: 'opengles', compat: true });
  return list;
}

/** Whether libvulkan.so.1 is in a library folder the dynamic loader searches. */
function hasVulkanLoader(): boolean {
  const fs = process.getBuiltinModule('node:fs');
  const dirs = ['/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib64', '/usr/lib', '/usr/local/lib', '/lib/x86_64-linux-gnu', '/lib64'];
  return [...dirs, ...(process.env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean)].some((d) => fs.existsSync(`${d}/libvulkan.so.1`));
}

async function open(opts: WebGPUOptions): Promise<WebGPUBackend> {
  // loaded on first use: importing the tensor library never loads the native module
  const { create } = await import('webgpu');
  const failures: string[] = [];
  for (const c of candidates(opts.backend ?? process.env.NANOVLM_WEBGPU_BACKEND)) {
    // EGL reads this when the GLES backend starts: no X11/Wayland display needed
    if (c.compat) process.env.EGL_PLATFORM ??= 'surfaceless';
    let gpu: GPU;
    let adapter: GPUAdapter | null;
    try {
      gpu = create(c.options);
      instances.push(gpu);
      adapter = await gpu.requestAdapter(c.compat ? { featureLevel: 'compatibility' } : { powerPreference: 'high-performance' });
    } catch {
      continue; // a backend Dawn was not built with, or a driver that fails to load
    }
    if (!adapter) continue;
    const requiredLimits: Record<string, number> = {};
    for (const k of LIMITS) requiredLimits[k] = adapter.limits[k];
    let device: GPUDevice;
    try {
      device = await adapter.requestDevice({ requiredLimits });
    } catch (e) {
      failures.push(`${c.name}: ${(e as Error).message}`); // an adapter without a usable device: try the next backend
      continue;
    }
    const info = adapter.info;
    const name = [info.device, info.description].filter((s) => s).join(', ') || info.vendor || 'unknown adapter';
    // llvmpipe, SwiftShader and friends run shaders on the CPU: correct, but slower than our CPU backend
    const software = info.isFallbackAdapter || /llvmpipe|softpipe|swiftshader|lavapipe/i.test(`${name} ${info.vendor} ${info.architecture}`);
    const desc: AdapterDescription = { name, backend: c.name, featureLevel: c.compat ? 'compatibility' : 'core', software };
    const b = new WebGPUBackend(device, desc, gpu);
    void device.lost.then((lost) => {
      if (backend === b && lost.reason !== 'destroyed') console.error(`webgpu: device lost (${lost.reason}): ${lost.message}`);
    });
    if (!opts.quiet) console.log(`webgpu: ${name} (${c.name} backend, ${desc.featureLevel})`);
    return b;
  }
  throw new Error(failures.length ? `${NO_ADAPTER_MESSAGE} (${failures.join('; ')})` : NO_ADAPTER_MESSAGE);
}

/**
 * Opens the GPU (once; later calls return the same backend) and registers the
 * 'webgpu' device. Throws NO_ADAPTER_MESSAGE when there is no adapter at all.
 */
export async function initWebGPU(opts: WebGPUOptions = {}): Promise<WebGPUBackend> {
  if (backend) return backend;
  opening ??= open(opts).then(
    (b) => {
      backend = b;
      registerBackend(b);
      return b;
    },
    (e) => {
      opening = null;
      throw e;
    },
  );
  return opening;
}

/** The open WebGPU backend, or null. */
export function webgpuBackend(): WebGPUBackend | null {
  return backend;
}

/** Destroys the device and drops every reference to Dawn, so the process can exit. */
export function closeWebGPU(): void {
  if (!backend) return;
  unregisterBackend('webgpu');
  backend.destroy();
  backend = null;
  opening = null;
}

/**
 * The device for a `--device auto|webgpu|cpu` flag: auto picks webgpu when a
 * hardware adapter exists, else cpu (a software adapter such as llvmpipe is
 * only used when asked for by name); webgpu without an adapter fails with one
 * line naming what to install.
 */
export async function resolveDevice(requested: 'auto' | DeviceName, opts: WebGPUOptions = {}): Promise<DeviceName> {
  if (requested === 'cpu') return 'cpu';
  if (requested !== 'auto' && requested !== 'webgpu') throw new Error(`unknown device '${requested}': use auto, webgpu or cpu`);
  try {
    const b = await initWebGPU({ ...opts, quiet: opts.quiet || requested === 'auto' });
    if (requested === 'auto' && b.adapter.software) {
      if (!opts.quiet) console.log(`webgpu: only a software adapter (${b.adapter.name}), slower than the cpu backend: using the cpu (--device webgpu to use it anyway)`);
      closeWebGPU();
      return 'cpu';
    }
    if (requested === 'auto' && !opts.quiet) console.log(`webgpu: ${b.adapter.name} (${b.adapter.backend} backend, ${b.adapter.featureLevel})`);
    return 'webgpu';
  } catch (e) {
    if (requested === 'webgpu') throw e;
    if (!opts.quiet) console.log(`webgpu: ${(e as Error).message.replace(/^no WebGPU adapter found: .*/, 'no adapter found')}, using the cpu`);
    return 'cpu';
  }
}
