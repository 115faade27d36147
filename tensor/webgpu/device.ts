// Finding a GPU and opening it, in a browser and in Node alike. This file
// imports nothing from Node: where the platform has WebGPU (navigator.gpu in
// a browser), that is the GPU; Node has none of its own, so a provider
// registered with setGPUProvider() supplies it (node/dawn.ts: Dawn's native
// bindings, the npm `webgpu` package, with its backend choice and quiet
// driver probing). A registered provider wins over navigator.gpu: it is an
// explicit choice.
//
// What we ask for: the features a fast kernel can use where the adapter has
// them (shader-f16, subgroups, timestamp-query) and every limit at the
// adapter's maximum: the default maxStorageBufferBindingSize of 128 MiB is
// smaller than the vocabulary logits of a 222M batch, and NVIDIA offers 2 GiB.
//
// A provider lists candidates (a GPU instance and the feature level to ask
// for), tried in order until one gives an adapter and a device: Dawn's
// platform backend (Vulkan, Metal, D3D12), then OpenGL ES in WebGPU's
// "compatibility" level; a browser's core adapter, then its compatibility one.
//
// Lifetime: the GPU instance must stay referenced for as long as its device
// is in use (Dawn crashes once it is garbage-collected), so the backend holds
// it until closeWebGPU(), which drops both so the process can exit.

import type { DeviceName } from '../backend.ts';
import { registerBackend, unregisterBackend } from '../device.ts';
import { type AdapterDescription, WebGPUBackend } from './backend.ts';

/** Options for initWebGPU. */
export interface WebGPUOptions {
  /** Do not print the adapter line. */
  quiet?: boolean;
  /**
   * Force one of the provider's backends (Dawn: 'vulkan', 'metal', 'd3d12', 'opengles', ...).
   * Dawn defaults to NANOVLM_WEBGPU_BACKEND, else its platform's own with the GLES fallback.
   */
  backend?: string;
  /** Use the first adapter whose name contains this text (Dawn defaults to NANOVLM_WEBGPU_ADAPTER). */
  adapter?: string;
  /** Only look where a hardware adapter can be (what `--device auto` does): Dawn skips GLES without a GPU node. */
  hardwareOnly?: boolean;
}

/** One place to look for an adapter. */
export interface GPUCandidate {
  /** The backend's name, for messages ('vulkan', 'opengles', 'browser'). */
  name: string;
  /** Ask for WebGPU's compatibility feature level (OpenGL ES) instead of core. */
  compat: boolean;
  /** The GPU instance to ask; it may throw (a backend Dawn lacks, an adapter name that matches none). */
  gpu(): GPU;
}

/** Where GPU instances come from when the platform has no navigator.gpu (Node: node/dawn.ts). */
export interface GPUProvider {
  /** The candidates to try in order, and the adapter name asked for (for the error when none matches). */
  candidates(opts: WebGPUOptions): Promise<{ list: GPUCandidate[]; adapter?: string }>;
  /** The error when no candidate gives an adapter: what to install. */
  noAdapterMessage: string;
}

let provider: GPUProvider | null = null;

/** Registers where GPU instances come from (null: only navigator.gpu). Takes effect at the next initWebGPU(). */
export function setGPUProvider(p: GPUProvider | null): void {
  provider = p;
}

/** The platform's own WebGPU: a browser's navigator.gpu. */
function browserProvider(gpu: GPU): GPUProvider {
  const candidate = (compat: boolean): GPUCandidate => ({ name: 'browser', compat, gpu: () => gpu });
  return {
    candidates: async () => ({ list: [candidate(false), candidate(true)] }),
    noAdapterMessage:
      'no WebGPU adapter found: this browser has WebGPU but offers no adapter ' +
      '(WebGPU disabled in its settings, or the GPU or its driver blocklisted)',
  };
}

/** The provider initWebGPU uses: the registered one, else navigator.gpu, else an error saying what is missing. */
function currentProvider(): GPUProvider {
  if (provider) return provider;
  const gpu = (globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu;
  if (gpu) return browserProvider(gpu);
  throw new Error(
    'no WebGPU here: this platform has no navigator.gpu and no GPU provider is registered ' +
      '(in Node, call useDawn() from node/dawn.ts first; in a browser, use one with WebGPU)',
  );
}

// The open backend; it also holds the GPU instance (see above) until closeWebGPU().
let backend: WebGPUBackend | null = null;
let opening: Promise<WebGPUBackend> | null = null;

/** Features our kernels can use, requested where the adapter offers them. */
const FEATURES = ['shader-f16', 'subgroups', 'timestamp-query'] as const;

async function open(opts: WebGPUOptions): Promise<WebGPUBackend> {
  const p = currentProvider();
  const { list, adapter: wanted } = await p.candidates(opts);
  const failures: string[] = [];
  for (const c of list) {
    let gpu: GPU;
    let adapter: GPUAdapter | null;
    try {
      gpu = c.gpu();
      adapter = await gpu.requestAdapter(
        c.compat ? { featureLevel: 'compatibility' } : { powerPreference: 'high-performance' },
      );
    } catch (e) {
      // no adapter of that name (Dawn lists the ones there are), a backend Dawn was not built with,
      // or a driver that fails to load
      if (wanted) failures.push(`${c.name}: ${(e as Error).message.replace(/\n\s*/g, ' ')}`);
      continue;
    }
    if (!adapter) continue;
    // every limit at the adapter's maximum, and the features we use where offered
    const requiredLimits: Record<string, number> = {};
    for (const k in adapter.limits) {
      const v = adapter.limits[k as keyof GPUSupportedLimits];
      if (typeof v === 'number') requiredLimits[k] = v;
    }
    const requiredFeatures = FEATURES.filter((f) => adapter.features.has(f));
    let device: GPUDevice;
    try {
      device = await adapter.requestDevice({ requiredLimits, requiredFeatures });
    } catch (e) {
      failures.push(`${c.name}: ${(e as Error).message}`); // an adapter without a usable device: try the next one
      continue;
    }
    const info = adapter.info;
    const name = [info.device, info.description].filter((s) => s).join(', ') || info.vendor || 'unknown adapter';
    // llvmpipe, SwiftShader and friends run shaders on the CPU: correct, but slower than our CPU backend
    const software =
      info.isFallbackAdapter ||
      /llvmpipe|softpipe|swiftshader|lavapipe/i.test(`${name} ${info.vendor} ${info.architecture}`);
    const features = requiredFeatures.filter((f) => device.features.has(f));
    const desc: AdapterDescription = {
      name,
      backend: c.name,
      featureLevel: c.compat ? 'compatibility' : 'core',
      software,
      features,
    };
    const b = new WebGPUBackend(device, desc, gpu);
    if (!opts.quiet) console.log(`webgpu: ${describeAdapter(desc)}`);
    return b;
  }
  if (wanted)
    throw new Error(
      `no WebGPU adapter named like '${wanted}' (NANOVLM_WEBGPU_ADAPTER / adapter option): ` +
        (failures.join('; ') || 'no adapter at all'),
    );
  throw new Error(failures.length ? `${p.noAdapterMessage} (${failures.join('; ')})` : p.noAdapterMessage);
}

/** "name (backend, feature level; features)", the line the scripts print. */
export function describeAdapter(a: AdapterDescription): string {
  return `${a.name} (${a.backend} backend, ${a.featureLevel}${a.features.length ? `; ${a.features.join(', ')}` : ''})`;
}

/**
 * Opens the GPU (once; later calls return the same backend) and registers the
 * 'webgpu' device. Throws the provider's no-adapter message when there is no adapter at all.
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

/** Destroys the device and drops every reference to the GPU instance, so the process can exit. */
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
  if (requested !== 'auto' && requested !== 'webgpu')
    throw new Error(`unknown device '${requested}': use auto, webgpu or cpu`);
  try {
    const auto = requested === 'auto';
    const b = await initWebGPU({ ...opts, quiet: opts.quiet || auto, hardwareOnly: opts.hardwareOnly ?? auto });
    if (requested === 'auto' && b.adapter.software) {
      if (!opts.quiet) {
        const why = `only a software adapter (${b.adapter.name}), slower than the cpu backend`;
        console.log(`webgpu: ${why}: using the cpu (--device webgpu to use it anyway)`);
      }
      closeWebGPU();
      return 'cpu';
    }
    if (requested === 'auto' && !opts.quiet) console.log(`webgpu: ${describeAdapter(b.adapter)}`);
    return 'webgpu';
  } catch (e) {
    if (requested === 'webgpu') throw e;
    if (!opts.quiet)
      console.log(
        `webgpu: ${(e as Error).message.replace(/^no WebGPU adapter found: .*/, 'no adapter found')}, using the cpu`,
      );
    return 'cpu';
  }
}
