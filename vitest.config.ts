import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { defineConfig } from 'vitest/config';

// One runner for the whole suite. Numeric tests are CPU-heavy: run files in
// forked processes (Dawn's native bindings are not safe in worker threads).
//
// Three projects. `main` is every test file, WebGPU on whatever driver the
// environment selects (CI: Dawn's OpenGL ES backend on llvmpipe). The other two
// run the WebGPU files again on Dawn's Vulkan backend, core WebGPU like a real
// GPU, over two software Vulkan drivers that differ where real GPUs differ:
// - `swiftshader` has subgroups and uses the freedom WGSL gives in float math.
//   Debian's `chromium-common` package ships it.
// - `lavapipe` (Mesa 25's Vulkan driver, from bookworm-backports: .ci/run
//   unpacks it) offers `shader-f16`, so the float16 kernels run for real.
// NANOVLM_SWIFTSHADER / NANOVLM_LAVAPIPE: 0 skips the project, 1 requires it
// (CI), path/to/icd.json points at another copy; unset runs it where found.

function vulkanProject(name: string, variable: string, defaultIcd: string, install: string, env = {}) {
  const choice = process.env[variable] ?? '';
  const icd = choice.endsWith('.json') ? choice : defaultIcd;
  if ((choice === '1' || choice.endsWith('.json')) && !existsSync(icd)) {
    throw new Error(`${variable}=${choice}: no ${name} Vulkan driver at ${icd} (${install})`);
  }
  if (choice === '0' || process.env.NANOVLM_SKIP_WEBGPU === '1' || !existsSync(icd)) return [];
  return [
    {
      extends: true as const,
      test: {
        name,
        include: ['test/webgpu*.test.ts', 'test/nanovlm.test.ts'],
        // XDG_RUNTIME_DIR: lavapipe's window-system code asks for it and prints an error line without it
        env: {
          NANOVLM_WEBGPU_BACKEND: 'vulkan',
          VK_DRIVER_FILES: icd,
          VK_ICD_FILENAMES: icd,
          XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? tmpdir(),
          ...env,
        },
      },
    },
  ];
}

export default defineConfig({
  test: {
    pool: 'forks',
    setupFiles: ['test/setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    projects: [
      { extends: true, test: { name: 'main', include: ['test/**/*.test.ts'] } },
      ...vulkanProject(
        'swiftshader',
        'NANOVLM_SWIFTSHADER',
        '/usr/lib/chromium/vk_swiftshader_icd.json',
        'apt-get install --no-install-recommends chromium-common libvulkan1',
      ),
      // the float16 kernels' test fails here instead of skipping when the feature is missing
      ...vulkanProject('lavapipe', 'NANOVLM_LAVAPIPE', '/opt/lavapipe/lvp_icd.json', 'see .ci/run', {
        NANOVLM_REQUIRE_SHADER_F16: '1',
      }),
    ],
  },
});
