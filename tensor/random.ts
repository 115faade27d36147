// Seeded random numbers. Reproducible runs need every random draw (weight
// init, dropout masks, shuffling, sampling) to come from a generator whose
// state we control, so the same seed gives the same run on any backend:
// numbers are drawn on the host and uploaded.

/** A small, fast, seedable generator (mulberry32) with normal draws by Box-Muller. */
export class Generator {
  private state: number;
  private spare: number | null = null;

  constructor(seed = 0) {
    this.state = seed >>> 0;
  }

  /** Resets the generator to a seed. */
  manualSeed(seed: number): this {
    this.state = seed >>> 0;
    this.spare = null;
    return this;
  }

  /** The full state, for checkpoints that resume exactly. */
  getState(): { state: number; spare: number | null } {
    return { state: this.state, spare: this.spare };
  }

  /** Restores a state from getState(). */
  setState(s: { state: number; spare: number | null }): void {
    this.state = s.state >>> 0;
    this.spare = s.spare;
  }

  /** Uniform in [0, 1). */
  random(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Standard normal. Box-Muller makes two draws at a time; keep the second. */
  normal(): number {
    if (this.spare !== null) {
      const s = this.spare;
      this.spare = null;
      return s;
    }
    const u = 1 - this.random(); // in (0, 1]: log(u) is finite
    const v = this.random();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }

  /** Integer in [0, n). */
  randint(n: number): number {
    return Math.floor(this.random() * n);
  }

  /** Fisher-Yates shuffle of an array, in place. */
  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.randint(i + 1);
      [items[i], items[j]] = [items[j], items[i]];
    }
    return items;
  }
}

/** The generator used when none is passed. */
export const defaultGenerator = new Generator(0);

/** Seeds the default generator (torch.manual_seed). */
export function manualSeed(seed: number): void {
  defaultGenerator.manualSeed(seed);
}

/** lowbias32, an integer hash with good mixing: the attention dropout mask of every backend is built from it. */
export function hash32(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

/** Whether the attention score with flat index n survives dropout (see AttentionDropout in backend.ts). */
export function dropoutKeeps(n: number, seed: number, threshold: number): boolean {
  return hash32((Math.imul(n, 0x9e3779b9) + seed) >>> 0) >= threshold;
}
