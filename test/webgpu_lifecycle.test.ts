// The device's lifetime, in child processes so a hang or a crash is caught by
// a timeout instead of taking the test runner down: Dawn's instance survives
// garbage collection, the process exits by itself after closeWebGPU(), and
// device resolution gives one clear line when there is no adapter.

import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { initWebGPU, resolveDevice } from '../tensor/index.ts';
import { hasVulkanDriver } from '../node/dawn.ts';
import { describeWebGPU } from './webgpu_helpers.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const lib = fileURLToPath(new URL('../tensor/index.ts', import.meta.url));
const dawn = fileURLToPath(new URL('../node/dawn.ts', import.meta.url));

/** Runs an ES module snippet in `node --import tsx` (with extra flags), with a hard timeout. */
function child(code: string, opts: { flags?: string[]; env?: Record<string, string>; timeoutMs?: number } = {}) {
  const r = spawnSync(process.execPath, [...(opts.flags ?? []), '--import', 'tsx', '--input-type=module', '-e', code], {
    cwd: root,
    env: { ...process.env, ...opts.env },
    encoding: 'utf8',
    timeout: opts.timeoutMs ?? 90_000,
  });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr, timedOut: r.error !== undefined };
}

describeWebGPU('webgpu device lifetime', () => {
  it('survives garbage collection between ops: reads still resolve (Dawn instance kept referenced)', () => {
    const r = child(
      `
      const T = await import(${JSON.stringify(lib)});
      (await import(${JSON.stringify(dawn)})).useDawn();
      await T.initWebGPU({ quiet: true });
      const work = async (seed) => {
        const a = await T.randn([48, 48], { generator: new T.Generator(seed) }).to('webgpu');
        return a.matmul(a.transpose(0, 1)).relu().sum().item();
      };
      const first = await work(1);
      for (let i = 0; i < 6; i++) {
        for (let k = 0; k < 50; k++) new Array(100000).fill(k); // garbage to collect
        globalThis.gc();
        await new Promise((r) => setTimeout(r, 20));
        globalThis.gc();
        if ((await work(1)) !== first) throw new Error('results changed after gc');
      }
      T.closeWebGPU();
      console.log('gc ok');
    `,
      { flags: ['--expose-gc'] },
    );
    expect(r.timedOut, `hung: ${r.stderr}`).toBe(false);
    expect(r.signal, r.stderr).toBeNull();
    expect(r.stdout).toContain('gc ok');
    expect(r.status).toBe(0);
  });

  it('survives garbage collection after the device is closed, and after a backend that found no adapter', () => {
    // Vulkan is asked first: where it has no driver that instance finds nothing; it, and the
    // closed device's instance, must never be collected (Dawn crashes when they are).
    const r = child(
      `
      const T = await import(${JSON.stringify(lib)});
      (await import(${JSON.stringify(dawn)})).useDawn();
      console.log('device', await T.resolveDevice('auto', { quiet: true, backend: 'vulkan' }));
      await T.initWebGPU({ quiet: true });
      T.closeWebGPU();
      for (let i = 0; i < 4; i++) {
        for (let k = 0; k < 50; k++) new Array(100000).fill(k);
        globalThis.gc();
        await new Promise((r) => setTimeout(r, 20));
      }
      console.log('gc ok');
    `,
      { flags: ['--expose-gc'] },
    );
    expect(r.signal, r.stderr).toBeNull();
    expect(r.stdout).toContain('gc ok');
    expect(r.status).toBe(0);
  });

  it('the process exits by itself after closeWebGPU(), and the device can be reopened', () => {
    const r = child(
      `
      const T = await import(${JSON.stringify(lib)});
      (await import(${JSON.stringify(dawn)})).useDawn();
      await T.initWebGPU({ quiet: true });
      const x = await T.tensor([1, 2, 3]).to('webgpu');
      console.log('sum', await x.mul(2).sum().item());
      T.closeWebGPU();
      await T.initWebGPU({ quiet: true }); // reopening after a close works
      const y = await T.tensor([4, 5]).to('webgpu');
      console.log('again', await y.sum().item());
      T.closeWebGPU();
    `,
      { timeoutMs: 60_000 },
    );
    expect(r.timedOut, `did not exit: ${r.stderr}`).toBe(false);
    expect(r.stdout).toContain('sum 12');
    expect(r.stdout).toContain('again 9');
    expect(r.status).toBe(0);
  });

  it('with no adapter: auto falls back to the cpu, webgpu fails with one line naming what to install', () => {
    // a backend that does not exist on this OS stands in for a machine without a GPU
    const missing = process.platform === 'darwin' ? 'd3d12' : 'metal';
    const r = child(
      `
      const T = await import(${JSON.stringify(lib)});
      (await import(${JSON.stringify(dawn)})).useDawn();
      console.log('auto ->', await T.resolveDevice('auto', { quiet: true }));
      try { await T.resolveDevice('webgpu'); } catch (e) { console.log('error:', e.message); }
    `,
      { env: { NANOVLM_WEBGPU_BACKEND: missing }, timeoutMs: 60_000 },
    );
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('auto -> cpu');
    expect(r.stdout).toMatch(/error: no WebGPU adapter found: install .*apt-get install/);
  });

  it('resolveDevice: auto passes over a software adapter, webgpu takes it', async () => {
    const b = await initWebGPU({ quiet: true });
    expect(await resolveDevice('auto', { quiet: true })).toBe(b.adapter.software ? 'cpu' : 'webgpu');
    expect(await resolveDevice('webgpu')).toBe('webgpu');
    expect(await resolveDevice('cpu')).toBe('cpu');
  });
});

describe('quiet device probing', () => {
  it('a Vulkan driver counts only if a manifest names a library that exists', () => {
    const dir = mkdtempSync(join(tmpdir(), 'icd-'));
    try {
      const empty = { HOME: dir, XDG_CONFIG_DIRS: dir, XDG_DATA_DIRS: dir };
      expect(hasVulkanDriver({ ...empty, VK_DRIVER_FILES: join(dir, 'missing.json') })).toBe(false);
      writeFileSync(join(dir, 'broken.json'), JSON.stringify({ ICD: { library_path: '/nonexistent/libvk_none.so' } }));
      expect(hasVulkanDriver({ ...empty, VK_DRIVER_FILES: join(dir, 'broken.json') })).toBe(false);
      expect(hasVulkanDriver({ ...empty, VK_ICD_FILENAMES: dir })).toBe(false); // a folder of manifests
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  it("--device auto without a GPU driver prints one line of ours, none of the Vulkan loader's", () => {
    // a manifest whose library is missing: Dawn would print "Found no drivers!" and a C++ trace
    const dir = mkdtempSync(join(tmpdir(), 'icd-'));
    try {
      writeFileSync(join(dir, 'broken.json'), JSON.stringify({ ICD: { library_path: '/nonexistent/libvk_none.so' } }));
      const env = {
        VK_DRIVER_FILES: join(dir, 'broken.json'),
        VK_ICD_FILENAMES: join(dir, 'broken.json'),
        NANOVLM_WEBGPU_BACKEND: '',
      };
      const r = child(
        `
        const T = await import(${JSON.stringify(lib)});
        (await import(${JSON.stringify(dawn)})).useDawn();
        console.log('device', await T.resolveDevice('auto'));`,
        { env, timeoutMs: 60_000 },
      );
      expect(r.status, r.stderr).toBe(0);
      expect(r.stderr).not.toMatch(/vkCreateInstance|Found no drivers|loader_icd_scan/);
      const lines = r.stdout.trim().split('\n');
      expect(lines.at(-1)).toMatch(/^device (cpu|webgpu)$/);
      expect(lines.slice(0, -1).length, r.stdout).toBe(1);
      expect(lines[0]).toMatch(/^webgpu: /);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });
});

describe('the browser seam: tensor/webgpu runs on navigator.gpu, and imports nothing from Node', () => {
  it('no file under tensor/webgpu imports node:*, the webgpu package or uses process', () => {
    const dir = fileURLToPath(new URL('../tensor/webgpu/', import.meta.url));
    const files = readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.ts'));
    expect(files.length).toBeGreaterThan(5);
    for (const f of files) {
      // comments may name them; code may not
      const code = readFileSync(join(dir, f), 'utf8').replace(/\/\/.*$/gm, '');
      expect(code, f).not.toMatch(/from '(node:[\w/]+|webgpu)'|import\('(node:[\w/]+|webgpu)'\)|\bprocess\.|\brequire\(/);
    }
  });

  it('without a registered provider, initWebGPU takes navigator.gpu (Dawn standing in for a browser)', () => {
    const r = child(
      `
      const { create } = await import('webgpu');
      const backend = process.env.NANOVLM_WEBGPU_BACKEND;
      if (backend?.startsWith('opengl')) process.env.EGL_PLATFORM ??= 'surfaceless';
      const gpu = create(backend ? ['backend=' + backend] : []);
      Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true });
      const T = await import(${JSON.stringify(lib)});
      const b = await T.initWebGPU({ quiet: true });
      console.log('backend', b.adapter.backend, b.adapter.featureLevel);
      const x = await T.tensor([1, 2, 3]).to('webgpu');
      console.log('sum', await x.mul(2).sum().item());
      T.closeWebGPU();
    `,
      { timeoutMs: 60_000 },
    );
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/backend browser (core|compatibility)/);
    expect(r.stdout).toContain('sum 12');
  });

  it('with neither navigator.gpu nor a provider, one line says what to do', () => {
    const r = child(
      `
      const T = await import(${JSON.stringify(lib)});
      console.log('auto ->', await T.resolveDevice('auto', { quiet: true }));
      try { await T.initWebGPU(); } catch (e) { console.log('error:', e.message); }
    `,
      { timeoutMs: 60_000 },
    );
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('auto -> cpu');
    expect(r.stdout).toMatch(/error: no WebGPU here: .*no navigator.gpu .*call useDawn\(\) from node\/dawn.ts/);
  });
});
