// Where the test fixtures live. The gold files were produced by the original
// PyTorch nanoVLM, PIL/torchvision and the Rust tokenizers (see
// fixtures/gold/README.md); NANOVLM_GOLD points the model parity test at
// another folder of the same layout.

import { existsSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** test/fixtures/ */
export const FIXTURES = fileURLToPath(new URL('./fixtures/', import.meta.url));
/** Reference outputs of the original implementations. */
export const GOLD = `${FIXTURES}gold/`;
/** The tiny nanoVLM checkpoint and every intermediate result (overridable with NANOVLM_GOLD). */
export const NANOVLM_GOLD = process.env.NANOVLM_GOLD ?? `${GOLD}nanovlm-tiny/`;
/**
 * The case folders the model parity test runs: every fixtures/gold/ folder with a checkpoint,
 * or NANOVLM_GOLD alone.
 */
export const NANOVLM_GOLD_CASES: string[] = process.env.NANOVLM_GOLD
  ? [process.env.NANOVLM_GOLD]
  : readdirSync(GOLD)
      .filter((d) => existsSync(`${GOLD}${d}/checkpoint/config.json`))
      .sort()
      .map((d) => `${GOLD}${d}/`);
/** The real SmolLM2 tokenizer. */
export const SMOLLM2_TOKENIZER = `${FIXTURES}tokenizers/smollm2/`;
/** Public-domain example photos. */
export const ASSETS = fileURLToPath(new URL('../assets/', import.meta.url));
