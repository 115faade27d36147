// WebGPU in Node: Dawn's native bindings (the npm `webgpu` package), the GPU
// provider of tensor/webgpu/device.ts, which imports nothing from Node (a
// browser has navigator.gpu instead). Every Node entry point calls useDawn()
// once before it opens a device: the scripts (cli.ts openDevice), the
// benchmarks and the tests (test/setup.ts).
//
// Dawn picks the platform's native API: Vulkan on Linux, Metal on macOS,
// D3D12 on Windows. A Linux machine without a GPU driver still has WebGPU
// through Dawn's OpenGL ES backend on Mesa's software rasteriser (llvmpipe),
// in WebGPU's "compatibility" feature level, with EGL told to run without a
// display (EGL_PLATFORM=surfaceless). That path is slow but exact, and it is
// how CI runs the WebGPU tests. Two Dawn toggles are always set (TOGGLES).
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
// Lifetime: every Dawn instance ever created stays referenced here, including
// ones that found no adapter: Dawn crashes when it collects one (even unused)
// while the process runs on. The backend holds the one in use until
// closeWebGPU(), so the process can still exit.

import fs from 'node:fs';
import path from 'node:path';
import { type GPUCandidate, type GPUProvider, type WebGPUOptions, setGPUProvider } from '../tensor/webgpu/device.ts';

/** What to install when no adapter exists: the one line every entry point prints. */
export const NO_ADAPTER_MESSAGE =
  'no WebGPU adapter found: install a GPU driver with Vulkan support ' +
  '(e.g. apt-get install libvulkan1 mesa-vulkan-drivers), ' +
  "or Mesa's EGL for the software path (apt-get install libegl-dev libgl1-mesa-dri; " +
  'Dawn opens the unversioned libEGL.so)';

const instances: GPU[] = [];

/**
 * Device toggles. vulkan_enable_f16_on_nvidia: NVIDIA's f16 support under
 * Vulkan is off in Dawn without it. disable_workgroup_init: WGSL zero-fills
 * workgroup memory at the start of every workgroup; each of our kernels
 * writes its workgroup memory before it reads it, so the fill is pure cost:
 * a loop per workgroup on a GPU, and on SwiftShader seconds of shader
 * compilation per kernel (the attention and matmul kernels: 6 s and 3 s
 * with it, 1 s and 0.25 s without).
 */
const TOGGLES = 'enable-dawn-features=vulkan_enable_f16_on_nvidia,disable_workgroup_init';

/** Dawn as the GPU provider. */
const dawn: GPUProvider = {
  async candidates(opts: WebGPUOptions) {
    // loaded on first use: importing the library (or a script run on the cpu) never loads the native module
    const { create } = await import('webgpu');
    const adapter = opts.adapter ?? process.env.NANOVLM_WEBGPU_ADAPTER;
    const backends = dawnBackends(opts.backend ?? process.env.NANOVLM_WEBGPU_BACKEND, opts.hardwareOnly ?? false);
    const list = backends.map((c): GPUCandidate => ({
      name: c.name,
      compat: c.compat,
      gpu() {
        // EGL reads this when the GLES backend starts: no X11/Wayland display needed
        if (c.compat) process.env.EGL_PLATFORM ??= 'surfaceless';
        const gpu = create([...c.options, TOGGLES, ...(adapter ? [`adapter=${adapter}`] : [])]);
        instances.push(gpu);
        return gpu;
      },
    }));
    return { list, adapter };
  },
  noAdapterMessage: NO_ADAPTER_MESSAGE,
};

/** Makes initWebGPU() open Dawn's GPU (once is enough; calling it again changes nothing). */
export function useDawn(): void {
  setGPUProvider(dawn);
}

/** Dawn's backends to try, in order: the platform's own (Vulkan, Metal, D3D12), then GLES (Linux only). */
function dawnBackends(
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
