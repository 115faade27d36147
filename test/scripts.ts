// Running train.ts and generate.ts as a user does, for the end-to-end tests.

import { spawnSync } from 'node:child_process';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;

/**
 * `npm run train` runs train.ts this way: plain node with tsx's loader, so Ctrl-C reaches the script itself
 * (see the README).
 */
export const NODE = [process.execPath, '--import', 'tsx'];

/** Runs a script of the project with `args` and waits for it: its exit status, stdout and stderr. */
export function runScript(script: string, args: string[]): { code: number | null; out: string; err: string } {
  const options = { cwd: root, encoding: 'utf8', timeout: 120_000 } as const;
  const r = spawnSync(NODE[0], [...NODE.slice(1), join(root, script), ...args], options);
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** A command line written as one string (no value here holds a space). */
export const argv = (line: string): string[] => line.split(' ');

/** The model flags of a tiny train.ts run: one block each side, width 32 (seconds on one core). */
export const TINY_MODEL = argv(
  '--vit_hidden_dim 32 --vit_inter_dim 64 --vit_patch_size 8 --vit_n_blocks 1 ' +
    '--lm_hidden_dim 32 --lm_inter_dim 64 --lm_n_blocks 1',
);
