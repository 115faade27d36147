// Finding a GPU and opening it. Dawn (the `webgpu` package) picks the
// platform's native API by default: Vulkan on Linux, Metal on macOS, D3D12
// on Windows. A Linux machine without a GPU driver still has WebGPU through
// Dawn's OpenGL ES backend on Mesa's software rasteriser (llvmpipe), in
// WebGPU's "compatibility" feature level, with EGL told to run without a
// display (EGL_PLATFORM=surfaceless). That path is slow but exact, and it is
// how CI runs the WebGPU tests.
//
// What we ask for: the features a fast kernel can use where the adapter has
// them (shader-f16, subgroups, timestamp-query) and every limit at the
// adapter's maximum: the default maxStorageBufferBindingSize of 128 MiB is
// smaller than the vocabulary logits of a 222M batch, and NVIDIA offers 2 GiB.
// Dawn hides shader-f16 on NVIDIA under Vulkan unless the instance is made
// with the vulkan_enable_f16_on_nvidia toggle, so it always is.
//
// Probing quietly: on Linux, Dawn's Vulkan backend prints the loader's
// "Found no drivers!" and a C++ trace to stderr when libvulkan is installed
// without a GPU driver (a common desktop and CI state). We only let Dawn try
// Vulkan when the loader and at least one driver manifest whose library
// exists are there (the loader's own search: VK_DRIVER_FILES /
// VK_ICD_FILENAMES, then the icd.d folders). Dawn's GLES backend warns about
// its limits when it starts, so `--device auto`, which only wants a GPU,
// skips it where no GPU render node (/dev/dri/renderD*) exists: there EGL
// could only offer llvmpipe.
//
// Several GPUs: Dawn ignores CUDA_VISIBLE_DEVICES and takes the first adapter
// it enumerates; `adapter` (or NANOVLM_WEBGPU_ADAPTER) picks the first whose
// name contains the given text. Identical cards have identical names, so
// this cannot tell them apart.
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
  /** Use the first adapter whose name contains this text. Defaults to NANOVLM_WEBGPU_ADAPTER. */
  adapter?: string;
  /** Only look where a hardware adapter can be (what `--device auto` does): no GLES without a GPU node. */
  hardwareOnly?: boolean;
}

/** What to install when no adapter exists: the one line every entry point prints. */
export const NO_ADAPTER_MESSAGE =
  'no WebGPU adapter found: install a GPU driver with Vulkan support ' +
  '(e.g. apt-get install libvulkan1 mesa-vulkan-drivers), ' +
  "or Mesa's EGL for the software path (apt-get install libegl-dev libgl1-mesa-dri; " +
  'Dawn opens the unversioned libEGL.so)';

// The open backend; it also holds the Dawn instance (see above) until closeWebGPU().
let backend: WebGPUBackend | null = null;
// Every Dawn instance ever created, including ones that found no adapter: Dawn
// crashes when it collects one (even unused) while the process runs on, so
// none is ever let go.
const instances: GPU[] = [];
let opening: Promise<WebGPUBackend> | null = null;

/** Features our kernels can use, requested where the adapter offers them. */
const FEATURES = ['shader-f16', 'subgroups', 'timestamp-query'] as const;

/** Instance toggles: NVIDIA's f16 support under Vulkan is off in Dawn without this one. */
const TOGGLES = 'enable-dawn-features=vulkan_enable_f16_on_nvidia';

/** The backends to try, in order: the platform's own (Vulkan, Metal, D3D12), then GLES (Linux only). */
function candidates(
  forced: string | undefined,
  hardwareOnly: boolean,
): { options: string[]; name: string; compat: boolean }[] {
  if (forced) return [{ options: [`backend=${forced}`], name: forced, compat: forced.startsWith('opengl') }];
  const native = { linux: 'vulkan', darwin: 'metal', win32: 'd3d12' }[process.platform as string] ?? 'default';
  const list = [{ options: [] as string[], name: native, compat: false }];
  if (process.platform !== 'linux') return list;
  // without a driver, Dawn's Vulkan attempt only prints the loader's error and a trace
  if (!hasVulkanDriver()) list.pop();
  if (!hardwareOnly || hasRenderNode()) list.push({ options: ['backend=opengles'], name: 'opengles', compat: true });
  return list;
}

/** Whether a GPU render node exists (Linux): without one, EGL only has the software rasteriser. */
function hasRenderNode(): boolean {
  const fs = process.getBuiltinModule('node:fs');
  try {
    return fs.readdirSync('/dev/dri').some((f) => f.startsWith('renderD'));
  } catch {
    return false;
  }
}

/** Library folders the dynamic loader searches (LD_LIBRARY_PATH first). */
function libraryDirs(): string[] {
  const standard = [
    '/usr/lib/x86_64-linux-gnu',
    '/usr/lib/aarch64-linux-gnu',
    '/usr/lib64',
    '/usr/lib',
    '/usr/local/lib',
    '/lib/x86_64-linux-gnu',
    '/lib64',
  ];
  return [...(process.env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean), ...standard];
}

/**
 * Whether the Vulkan loader would find a driver: libvulkan.so.1 is installed
 * and some driver manifest (ICD json) names a library that exists. Follows
 * the loader's search order, without loading anything.
 */
export function hasVulkanDriver(env: NodeJS.ProcessEnv = process.env): boolean {
  const fs = process.getBuiltinModule('node:fs');
  const path = process.getBuiltinModule('node:path');
  const libs = libraryDirs();
  if (!libs.some((d) => fs.existsSync(`${d}/libvulkan.so.1`))) return false;
  const listed = (v: string | undefined) => (v ?? '').split(':').filter(Boolean);
  const jsonIn = (p: string): string[] => {
    try {
      return fs.statSync(p).isDirectory()
        ? fs
            .readdirSync(p)
            .filter((f) => f.endsWith('.json'))
            .map((f) => path.join(p, f))
        : [p];
    } catch {
      return [];
    }
  };
  const explicit = listed(env.VK_DRIVER_FILES ?? env.VK_ICD_FILENAMES);
  const home = env.HOME ?? '';
  const config = [
    env.XDG_CONFIG_HOME ?? `${home}/.config`,
    ...listed(env.XDG_CONFIG_DIRS ?? '/etc/xdg'),
    '/usr/local/etc',
    '/etc',
  ];
  const data = [
    env.XDG_DATA_HOME ?? `${home}/.local/share`,
    ...listed(env.XDG_DATA_DIRS ?? '/usr/local/share:/usr/share'),
  ];
  const searched = explicit.length ? explicit : [...config, ...data].map((d) => `${d}/vulkan/icd.d`);
  const manifests = [...searched, ...listed(env.VK_ADD_DRIVER_FILES)].flatMap(jsonIn);
  return manifests.some((file) => {
    try {
      const lib: string = JSON.parse(fs.readFileSync(file, 'utf8')).ICD?.library_path ?? '';
      if (!lib) return false;
      // a bare file name is looked up like any shared library; a path is relative to the manifest
      if (!lib.includes('/')) return libs.some((d) => fs.existsSync(`${d}/${lib}`));
      return fs.existsSync(path.resolve(path.dirname(file), lib));
    } catch {
      return false;
    }
  });
}

async function open(opts: WebGPUOptions): Promise<WebGPUBackend> {
  // loaded on first use: importing the tensor library never loads the native module
  const { create } = await import('webgpu');
  const failures: string[] = [];
  const wanted = opts.adapter ?? process.env.NANOVLM_WEBGPU_ADAPTER;
  for (const c of candidates(opts.backend ?? process.env.NANOVLM_WEBGPU_BACKEND, opts.hardwareOnly ?? false)) {
    // EGL reads this when the GLES backend starts: no X11/Wayland display needed
    if (c.compat) process.env.EGL_PLATFORM ??= 'surfaceless';
    let gpu: GPU;
    let adapter: GPUAdapter | null;
    try {
      gpu = create([...c.options, TOGGLES, ...(wanted ? [`adapter=${wanted}`] : [])]);
      instances.push(gpu);
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
      failures.push(`${c.name}: ${(e as Error).message}`); // an adapter without a usable device: try the next backend
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
  throw new Error(failures.length ? `${NO_ADAPTER_MESSAGE} (${failures.join('; ')})` : NO_ADAPTER_MESSAGE);
}

/** "name (backend, feature level; features)", the line the scripts print. */
export function describeAdapter(a: AdapterDescription): string {
  return `${a.name} (${a.backend} backend, ${a.featureLevel}${a.features.length ? `; ${a.features.join(', ')}` : ''})`;
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
