// Model folders on disk, in Node: what VisionLanguageModel.fromPretrained and fromBackbones read
// (vlm/pretrained.ts's ModelFiles) and what savePretrained gives to write. Also finds a model in
// the Hugging Face cache layout (models--org--name/snapshots/...) and reads sharded weights.
// Nothing is downloaded.
//
//   const model = VisionLanguageModel.fromPretrained(readModelFolder('path/to/nanoVLM-222M'));
//   writeModelFolder('out/', await model.savePretrained());

import { existsSync, mkdirSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { RawTensor } from '../nn/safetensors.ts';
import type { FolderFiles, ModelFiles } from '../vlm/pretrained.ts';
import { loadSafetensors, writeFileAtomic } from './safetensors.ts';

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

/**
 * nanoVLM's from_pretrained, file half: a model folder's config.json and weights, parsed, for
 * VisionLanguageModel.fromPretrained (a checkpoint) or fromBackbones (SigLIP and SmolLM2 folders).
 * `nameOrPath`: a folder, a hub-cache folder, or a hub name found in the local cache.
 */
export function readModelFolder(nameOrPath: string): ModelFiles {
  const dir = resolveModelDir(nameOrPath);
  return { source: dir, config: readConfigJSON(dir), weights: readWeights(dir) };
}

/** Parses dir/config.json, with a clear error when it is missing or broken. */
function readConfigJSON(dir: string): Record<string, unknown> {
  const file = join(dir, 'config.json');
  if (!existsSync(file)) throw new Error(`${file}: not found (a model folder needs config.json and model.safetensors)`);
  try {
    return JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`${file}: invalid JSON (${(e as Error).message})`);
  }
}

/** Every tensor of dir/model.safetensors, or of the shards listed in model.safetensors.index.json. */
function readWeights(dir: string): Map<string, RawTensor> {
  const single = join(dir, 'model.safetensors');
  if (existsSync(single)) return loadSafetensors(single);
  const index = join(dir, 'model.safetensors.index.json');
  if (!existsSync(index)) throw new Error(`${dir}: no model.safetensors (or model.safetensors.index.json) found`);
  const shards = new Set(Object.values(JSON.parse(readFileSync(index, 'utf8')).weight_map as Record<string, string>));
  const all = new Map<string, RawTensor>();
  for (const shard of shards) for (const [k, v] of loadSafetensors(join(dir, shard))) all.set(k, v);
  return all;
}

/**
 * nanoVLM's save_pretrained, file half: writes each file into `dir` (made if missing) atomically
 * (a temporary file, then renamed), in the order given.
 */
export function writeModelFolder(dir: string, files: FolderFiles): void {
  mkdirSync(dir, { recursive: true });
  for (const [name, content] of Object.entries(files)) {
    writeFileAtomic(join(dir, name), typeof content === 'string' ? [content] : content);
  }
}
