// Node file access for vlm/ (the one place it touches the disk, so the model
// code itself also runs in a browser): checkpoint folders, Hugging Face model
// folders (including the hub cache layout and sharded weights), config files.

import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { RawTensor } from '../nn/safetensors.ts';
import { loadSafetensors, saveSafetensors } from '../nn/safetensors_fs.ts';
import type { WriteTensor } from '../nn/safetensors.ts';

/**
 * A local folder for a model: the path itself, or a Hugging Face cache folder
 * (models--org--name/snapshots/<hash>), or a hub name found in the local
 * cache. Nothing is downloaded.
 */
export function resolveModelDir(nameOrPath: string): string {
  const snapshot = (dir: string): string => {
    const snaps = join(dir, 'snapshots');
    if (!existsSync(snaps)) return dir;
    const ref = join(dir, 'refs', 'main');
    const hash = existsSync(ref) ? readFileSync(ref, 'utf8').trim() : readdirSync(snaps)[0];
    return join(snaps, hash);
  };
  if (existsSync(nameOrPath) && statSync(nameOrPath).isDirectory()) return snapshot(nameOrPath);
  const hub = process.env.HF_HUB_CACHE ?? join(process.env.HF_HOME ?? join(homedir(), '.cache', 'huggingface'), 'hub');
  const cached = join(hub, `models--${nameOrPath.replace('/', '--')}`);
  if (/^[\w.-]+\/[\w.-]+$/.test(nameOrPath) && existsSync(cached)) return snapshot(cached);
  throw new Error(`model folder not found: ${nameOrPath} (nanovlm-ts does not download from the Hugging Face Hub: pass a local folder with config.json and model.safetensors)`);
}

/** Parses dir/config.json, with a clear error when it is missing or broken. */
export function readConfigJSON(dir: string): Record<string, unknown> {
  const file = join(dir, 'config.json');
  if (!existsSync(file)) throw new Error(`${file}: not found (a model folder needs config.json and model.safetensors)`);
  try {
    return JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`${file}: invalid JSON (${(e as Error).message})`);
  }
}

/** Every tensor of dir/model.safetensors, or of the shards listed in model.safetensors.index.json. */
export function readWeights(dir: string): Map<string, RawTensor> {
  const single = join(dir, 'model.safetensors');
  if (existsSync(single)) return loadSafetensors(single);
  const index = join(dir, 'model.safetensors.index.json');
  if (!existsSync(index)) throw new Error(`${dir}: no model.safetensors (or model.safetensors.index.json) found`);
  const shards = new Set(Object.values(JSON.parse(readFileSync(index, 'utf8')).weight_map as Record<string, string>));
  const all = new Map<string, RawTensor>();
  for (const shard of shards) for (const [k, v] of loadSafetensors(join(dir, shard))) all.set(k, v);
  return all;
}

/** Writes config.json and model.safetensors into dir, each atomically (temp file, then rename). */
export function writeCheckpoint(dir: string, configText: string, tensors: Record<string, WriteTensor>): void {
  mkdirSync(dir, { recursive: true });
  saveSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'pt' });
  const tmp = join(dir, `config.json.tmp-${process.pid}`);
  writeFileSync(tmp, configText);
  renameSync(tmp, join(dir, 'config.json'));
}
