// Node file access for vlm/ (the one place it touches the disk, so the model
// code itself also runs in a browser): checkpoint folders, Hugging Face model
// folders (including the hub cache layout and sharded weights), config files.

import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { RawTensor } from '../nn/safetensors.ts';
import { loadSafetensors, saveSafetensors } from '../nn/safetensors_fs.ts';
import type { WriteTensor } from '../nn/safetensors.ts';

/** huggingface_hub's cache: $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME (or ~/.cache)/huggingface/hub. */
export function hubCacheDir(): string {
  const cacheHome = process.env.XDG_CACHE_HOME || join(homedir(), '.cache');
  const hfHome = process.env.HF_HOME || join(cacheHome, 'huggingface');
  return process.env.HF_HUB_CACHE || join(hfHome, 'hub');
}

/**
 * The local folder for a model or tokenizer, without downloading anything: an existing folder,
 * a hub-cache folder (models--org--name) or a hub name ("org/name") found in the local cache.
 * In a cache folder, the snapshot refs/main names comes first, then the others in sorted order;
 * the first one holding `file` wins (if none does, the first, so the caller names what is missing).
 * Undefined when nothing local matches.
 */
export function resolveLocalDir(nameOrPath: string, file: string): string | undefined {
  let dir = nameOrPath;
  if (!existsSync(dir) || !statSync(dir).isDirectory()) {
    if (!isHubName(nameOrPath)) return undefined;
    dir = hubCachePath(nameOrPath);
    if (!existsSync(dir)) return undefined;
  }
  const snapshots = join(dir, 'snapshots');
  if (!existsSync(snapshots)) return dir;
  const ref = join(dir, 'refs', 'main');
  const hashes = [...(existsSync(ref) ? [readFileSync(ref, 'utf8').trim()] : []), ...readdirSync(snapshots).sort()];
  const candidates = hashes.map((hash) => join(snapshots, hash));
  return candidates.find((snapshot) => existsSync(join(snapshot, file))) ?? candidates[0] ?? dir;
}

/** Whether a name looks like a hub repository, "org/name". */
export function isHubName(name: string): boolean {
  return /^[\w.-]+\/[\w.-]+$/.test(name);
}

/** Where the hub cache keeps "org/name": models--org--name. */
export function hubCachePath(name: string): string {
  return join(hubCacheDir(), `models--${name.replaceAll('/', '--')}`);
}

/** resolveLocalDir for a model folder (config.json), or an error saying what to pass. */
export function resolveModelDir(nameOrPath: string): string {
  const dir = resolveLocalDir(nameOrPath, 'config.json');
  if (dir) return dir;
  const fix = 'pass a local folder with config.json and model.safetensors';
  const why = 'nanovlm-ts does not download from the Hugging Face Hub';
  throw new Error(`model folder not found: ${nameOrPath} (${why}: ${fix})`);
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
