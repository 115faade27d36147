import { existsSync } from 'node:fs';
import { defineConfig } from 'vitest/config';

// One runner for the whole suite. Numeric tests are CPU-heavy: run files in
// forked processes (Dawn's native bindings are not safe in worker threads).
//
// Two projects. `main` is every test file, WebGPU on whatever driver the
// environment selects (CI: Dawn's OpenGL ES backend on llvmpipe). `swiftshader`
// runs the WebGPU files a second time on Dawn's Vulkan backend over
// SwiftShader: core WebGPU with subgroups, like a real GPU, and a driver that
// uses the freedom WGSL gives in float math. It runs where SwiftShader's
// Vulkan driver is installed (Debian's `chromium-common` package ships it).
// NANOVLM_SWIFTSHADER=0 skips it, =1 requires it (CI), =path/to/icd.json
// points at another copy.

const choice = process.env.NANOVLM_SWIFTSHADER ?? '';
const icd = choice.endsWith('.json') ? choice : '/usr/lib/chromium/vk_swiftshader_icd.json';
const required = choice === '1' || choice.endsWith('.json');
if (required && !existsSync(icd)) {
  const install = 'apt-get install --no-install-recommends chromium-common libvulkan1';
  throw new Error(`NANOVLM_SWIFTSHADER=${choice}: no SwiftShader Vulkan driver at ${icd} (${install})`);
}
const swiftshader = choice !== '0' && process.env.NANOVLM_SKIP_WEBGPU !== '1' && existsSync(icd);

export default defineConfig({
  test: {
    pool: 'forks',
    setupFiles: ['test/setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    projects: [
      { extends: true, test: { name: 'main', include: ['test/**/*.test.ts'] } },
      ...(swiftshader
        ? [
            {
              extends: true as const,
              test: {
                name: 'swiftshader',
                include: ['test/webgpu*.test.ts', 'test/nanovlm.test.ts'],
                env: { NANOVLM_WEBGPU_BACKEND: 'vulkan', VK_DRIVER_FILES: icd, VK_ICD_FILENAMES: icd },
              },
            },
          ]
        : []),
    ],
  },
});
