// The library runs in a browser as it is: tensor/, nn/, vlm/ and data/ import nothing from Node
// (no node:* or other built-in module, no `webgpu` package, no use of the `process` global). File
// access, worker threads and Dawn live in node/; the web page (web/) and test/web.test.ts load the
// library in Chromium itself.

import { readdirSync, readFileSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = new URL('..', import.meta.url).pathname;
const LIBRARY = ['tensor', 'nn', 'vlm', 'data'];
const NODE_ONLY = new Set([...builtinModules, 'webgpu']);

function sources(dir: string): string[] {
  return readdirSync(join(ROOT, dir), { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.ts'))
    .map((f) => join(dir, f));
}

/** The module specifiers a file imports: static imports and re-exports, import(), import type too. */
function specifiers(code: string): string[] {
  const found = [...code.matchAll(/(?:^|[\s;])(?:import|export)\s[^'"`;]*?from\s*['"]([^'"]+)['"]/g)].map((m) => m[1]);
  found.push(...[...code.matchAll(/\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)/g)].map((m) => m[1]));
  found.push(...[...code.matchAll(/^\s*import\s*['"]([^'"]+)['"]/gm)].map((m) => m[1]));
  return found;
}

/** Code without comments and without the text of string and template literals. */
function codeOnly(code: string): string {
  return code
    .replace(/\/\*[\s\S]*?\*\//g, '')
    .replace(/\/\/.*$/gm, '')
    .replace(/`(?:\\[\s\S]|[^`\\])*`/g, '``')
    .replace(/'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*"/g, "''");
}

describe('the library imports nothing from Node', () => {
  const files = LIBRARY.flatMap(sources);

  it('finds the library files', () => {
    expect(files.length).toBeGreaterThan(30);
    expect(files).toContain(join('vlm', 'vision_language_model.ts'));
  });

  it('no node:* or built-in module, no webgpu package', () => {
    const offending = files.flatMap((file) => {
      const text = readFileSync(join(ROOT, file), 'utf8')
        .replace(/\/\*[\s\S]*?\*\//g, '')
        .replace(/\/\/.*$/gm, '');
      return specifiers(text)
        .filter((s) => s.startsWith('node:') || NODE_ONLY.has(s))
        .map((s) => `${file} imports ${s}`);
    });
    expect(offending).toEqual([]);
  });

  it('no use of the process global (feature detection through globalThis is allowed)', () => {
    const usesProcess = (code: string) => /(?<![.\w$])process\s*(?:\.|\?\.|\[)/.test(codeOnly(code));
    const offending = files.filter((file) => usesProcess(readFileSync(join(ROOT, file), 'utf8')));
    expect(offending).toEqual([]);
  });

  it('the checks see what they look for', () => {
    expect(specifiers("import fs from 'node:fs';\nexport { x } from 'webgpu';\nawait import('node:os');")).toEqual([
      'node:fs',
      'webgpu',
      'node:os',
    ]);
    expect(specifiers("import type { Worker } from 'node:worker_threads';")).toEqual(['node:worker_threads']);
    const code = 'const a = process.env.X; // process.y\nconst s = `process.z`;';
    expect(codeOnly(code)).toMatch(/^const a = process\.env/);
    expect(codeOnly('const s = `process.z`;')).not.toMatch(/process/);
  });
});
