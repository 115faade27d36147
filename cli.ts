// The command line of the scripts. Each script declares its flags once, in a table (name, type,
// default, range, help), and gets from it the parsing, a one-line error for a wrong value, and
// --help. train.ts, generate.ts and bench/ share it, the progress line and the device flags.
//
//   const flags = defineFlags({ steps: { type: 'int', default: 10, min: 1, help: 'how many steps' } });
//   const args = parseCommandLine(flags, 'npm run thing --');   // args.steps: number

import { cpuKernelInfo, getCpuThreads, setCpuKernels, setCpuThreads, type DeviceName } from './tensor/index.ts';
import { resolveDevice } from './tensor/webgpu/device.ts';

/** int and float are range-checked numbers, bool takes true|false, switch is a bare --x, strings repeats. */
export type FlagType = 'int' | 'float' | 'string' | 'strings' | 'bool' | 'switch';

/** One flag: its type, what it does, its default and the values it accepts. */
export interface Flag {
  type: FlagType;
  help: string;
  default?: number | string | boolean;
  /** Inclusive bounds of a number. */
  min?: number;
  max?: number;
  /** Exclusive bounds of a number (a learning rate above 0, a ratio below 1). */
  above?: number;
  below?: number;
  /** The only values a string flag takes. */
  choices?: readonly string[];
  /** The value's name in --help (by default N for int, X for float, PATH for strings). */
  metavar?: string;
}

/** Flags by name; the name is the flag without its dashes, e.g. max_steps for --max_steps. */
export type FlagTable = Record<string, Flag>;

type ValueOf<F extends Flag> = F['type'] extends 'int' | 'float'
  ? number
  : F['type'] extends 'bool' | 'switch'
    ? boolean
    : F['type'] extends 'strings'
      ? string[]
      : F extends { choices: readonly (infer C)[] }
        ? C
        : string;

/** The value of every flag of a table; one without a default (and not given) is undefined. */
export type FlagValues<T extends FlagTable> = {
  [K in keyof T]: T[K] extends { default: unknown } | { type: 'switch' | 'strings' }
    ? ValueOf<T[K]>
    : ValueOf<T[K]> | undefined;
};

/** A wrong command line: the scripts print its message and exit with status 2. */
export class UsageError extends Error {
  /** `helpHint`: the message ends with a pointer to --help (for a flag that is unknown or has a wrong value). */
  constructor(
    message: string,
    readonly helpHint = false,
  ) {
    super(message);
  }
}

/** A flag table with its literal types kept, so that FlagValues knows each flag's type. */
export function defineFlags<const T extends FlagTable>(table: T): T {
  return table;
}

/**
 * The flags given in argv, each parsed and range-checked, without defaults. A value may start
 * with a dash (`--top_k -1` is the value -1, which the range check then refuses); `--x=v` works too.
 */
export function parseFlags<T extends FlagTable>(
  table: T,
  argv: string[],
): { given: Partial<FlagValues<T>>; help: boolean } {
  const given: Record<string, unknown> = {};
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--help' || arg === '-h') {
      help = true;
      continue;
    }
    if (!arg.startsWith('--')) throw new UsageError(`unexpected argument '${arg}' (flags start with --)`, true);
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    const flag = table[name];
    if (!flag) throw new UsageError(`unknown flag --${name}${suggestion(name, Object.keys(table))}`, true);
    let text = eq < 0 ? undefined : arg.slice(eq + 1);
    if (flag.type === 'switch') {
      if (text !== undefined) throw new UsageError(`--${name} takes no value`, true);
      given[name] = true;
      continue;
    }
    if (text === undefined) {
      text = argv[++i];
      if (text === undefined || text.startsWith('--')) throw new UsageError(`--${name} needs a value`, true);
    }
    const value = parseValue(name, flag, text);
    // a list collects every value; another flag given twice keeps the last, as in argparse
    given[name] = flag.type === 'strings' ? [...((given[name] as string[]) ?? []), value] : value;
  }
  return { given: given as Partial<FlagValues<T>>, help };
}

/** The value of one flag from its text, or a UsageError saying what it expects. */
function parseValue(name: string, flag: Flag, text: string): number | string | boolean {
  if (text.trim() === '') throw new UsageError(`--${name} needs a value`, true);
  if (flag.type === 'bool') {
    if (text !== 'true' && text !== 'false') throw new UsageError(`--${name} expects true or false, got ${text}`, true);
    return text === 'true';
  }
  if (flag.type === 'int' || flag.type === 'float') {
    const value = Number(text);
    if (flag.type === 'int' && !Number.isInteger(value)) {
      throw new UsageError(`--${name} expects a whole number, got ${text}`, true);
    }
    if (!Number.isFinite(value)) throw new UsageError(`--${name} expects a number, got ${text}`, true);
    const range = rangeText(flag);
    const inRange =
      (flag.min === undefined || value >= flag.min) &&
      (flag.max === undefined || value <= flag.max) &&
      (flag.above === undefined || value > flag.above) &&
      (flag.below === undefined || value < flag.below);
    if (!inRange) throw new UsageError(`--${name} must be ${range}, got ${text}`, true);
    return value;
  }
  if (flag.choices && !flag.choices.includes(text)) {
    throw new UsageError(`--${name} expects one of ${flag.choices.join(', ')}; got ${text}`, true);
  }
  return text;
}

/** Every flag's default: a switch is off, a list empty, a flag without a default undefined. */
export function defaultsOf<T extends FlagTable>(table: T): FlagValues<T> {
  const values: Record<string, unknown> = {};
  for (const [name, flag] of Object.entries(table)) {
    values[name] = flag.type === 'switch' ? false : flag.type === 'strings' ? [] : flag.default;
  }
  return values as FlagValues<T>;
}

/**
 * The --help text: the usage line, then each section's flags with what they do, their default
 * (from `defaults` where given, e.g. a preset's) and the range they accept.
 */
export function helpText(
  command: string,
  sections: [title: string, table: FlagTable][],
  defaults: Record<string, unknown> = {},
): string {
  const lines = [`usage: ${command} [flags]`];
  for (const [title, table] of sections) {
    lines.push('', `${title}:`);
    for (const [name, flag] of Object.entries(table)) {
      const value = name in defaults ? defaults[name] : flag.default;
      const notes = [
        value !== undefined && !Array.isArray(value) && flag.type !== 'switch' && `default: ${value}`,
        rangeText(flag),
        flag.type === 'strings' && 'repeat for several',
      ].filter(Boolean);
      const head = `  --${name} ${metavar(flag)}`.trimEnd();
      const text = `${flag.help}${notes.length ? ` (${notes.join('; ')})` : ''}`;
      lines.push(...wrap(head, text));
    }
  }
  return lines.join('\n');
}

/**
 * For a script: the values of its flags (defaults filled in). --help prints the help and exits
 * with 0; a wrong flag prints one line and exits with 2. `command` is how the README runs it.
 */
export function parseCommandLine<T extends FlagTable>(
  table: T,
  command: string,
  argv = process.argv.slice(2),
): FlagValues<T> {
  try {
    const { given, help } = parseFlags(table, argv);
    if (help) {
      console.log(helpText(command, [['flags', table]]));
      process.exit(0);
    }
    return { ...defaultsOf(table), ...given };
  } catch (e) {
    reportError(e, command);
    process.exit();
  }
}

/** Prints an error as one line and sets the exit status: 2 for a UsageError, else 1. */
export function reportError(e: unknown, command: string): void {
  const hint = e instanceof UsageError && e.helpHint ? ` (${command} --help lists the flags)` : '';
  console.error(`error: ${e instanceof Error ? e.message : String(e)}${hint}`);
  process.exitCode = e instanceof UsageError ? 2 : 1;
}

function rangeText(flag: Flag): string {
  const low = flag.min !== undefined ? `at least ${flag.min}` : flag.above !== undefined ? `above ${flag.above}` : '';
  const high = flag.max !== undefined ? `at most ${flag.max}` : flag.below !== undefined ? `below ${flag.below}` : '';
  return [low, high].filter(Boolean).join(' and ');
}

function metavar(flag: Flag): string {
  if (flag.metavar) return flag.metavar;
  if (flag.choices) return flag.choices.join('|');
  return { int: 'N', float: 'X', bool: 'true|false', switch: '', string: 'TEXT', strings: 'PATH' }[flag.type];
}

// The flag column is 30 wide; help text wraps at 100 columns, and a longer flag gets a line of its own.
function wrap(head: string, text: string): string[] {
  const indent = ' '.repeat(30);
  const lines = head.length < 30 ? [head.padEnd(30)] : [head, indent];
  for (const word of text.split(' ')) {
    const i = lines.length - 1;
    if (lines[i].length > 30 && lines[i].length + 1 + word.length > 100) lines.push(indent + word);
    else lines[i] += (lines[i].length > 30 ? ' ' : '') + word;
  }
  return lines;
}

// "did you mean --max_steps?" for a flag one or two edits away from a real one.
function suggestion(name: string, names: string[]): string {
  const distance = (a: string, b: string): number => {
    let row = Array.from({ length: b.length + 1 }, (_, j) => j);
    for (let i = 1; i <= a.length; i++) {
      const next = [i];
      for (let j = 1; j <= b.length; j++) {
        next[j] = Math.min(row[j] + 1, next[j - 1] + 1, row[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
      }
      row = next;
    }
    return row[b.length];
  };
  const best = names.map((n) => ({ n, d: distance(name, n) })).sort((x, y) => x.d - y.d)[0];
  return best && best.d <= 2 ? ` (did you mean --${best.n}?)` : '';
}

// ---------------------------------------------------------------- progress

let lastPrinted = -Infinity;
/** One line that redraws itself on a terminal; elsewhere (CI, tee, a notebook) one every 5 s, as tqdm does. */
export function progress(step: number, total: number, text: string): void {
  const filled = Math.round((24 * step) / total);
  const bar = '='.repeat(filled).padEnd(24);
  const line = `step ${String(step).padStart(String(total).length)}/${total} [${bar}] ${text}`;
  if (process.stdout.isTTY) process.stdout.write(`\r${line}`);
  else if (performance.now() - lastPrinted >= 5000 || step === total) {
    console.log(line);
    lastPrinted = performance.now();
  }
}

/** A duration as m:ss. */
export function minutes(ms: number): string {
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

// ---------------------------------------------------------------- the device flags every script shares

/** --device, --cpu_kernels and --threads. */
export const deviceFlags = defineFlags({
  device: {
    type: 'string',
    default: 'auto',
    choices: ['auto', 'webgpu', 'cpu'],
    help: 'auto: WebGPU where a hardware adapter exists, else the CPU backend',
  },
  adapter: {
    type: 'string',
    metavar: 'NAME',
    help:
      'WebGPU: the first GPU whose name contains NAME (default: NANOVLM_WEBGPU_ADAPTER, else the first; ' +
      'Dawn ignores CUDA_VISIBLE_DEVICES)',
  },
  cpu_kernels: {
    type: 'string',
    choices: ['ts', 'wasm'],
    help: "the CPU backend's kernels: wasm (WebAssembly SIMD, the default where it exists) or ts (plain TypeScript)",
  },
  threads: { type: 'int', min: 1, help: 'threads for large CPU kernels (default: min(2, cores))' },
});

/** Opens the device the flags ask for; on the CPU, applies --cpu_kernels and --threads and says what runs. */
export async function openDevice(flags: FlagValues<typeof deviceFlags>): Promise<DeviceName> {
  // WebGPU in Node comes from Dawn (a browser has navigator.gpu); imported here, when a script opens a
  // device, so that the flag tables above load in a web page too (the page reads train_config.ts's presets)
  const { useDawn } = await import('./node/dawn.ts');
  useDawn();
  const device = await resolveDevice(flags.device, { adapter: flags.adapter });
  if (device !== 'cpu') return device;
  if (flags.cpu_kernels) setCpuKernels(flags.cpu_kernels);
  if (flags.threads) setCpuThreads(flags.threads);
  const { kernels, fma, blas } = cpuKernelInfo();
  const threads = getCpuThreads();
  const matmul = blas ? `, matmul by ${blas}` : '';
  const what = `${kernels}${kernels === 'wasm' && fma ? ' (relaxed-SIMD FMA)' : ''}${matmul}`;
  // without OpenBLAS the products run on the WebAssembly GEMM, a third of its speed on an AVX-512 core
  const hint =
    kernels === 'wasm' && !blas && process.env.NANOVLM_BLAS !== '0'
      ? '; with OpenBLAS the matrix products run ~3x faster (apt-get install libopenblas0-pthread, ' +
        'dnf install openblas or brew install openblas, and npm install koffi if npm skipped it)'
      : '';
  console.log(`cpu kernels: ${what}, ${threads} thread${threads > 1 ? 's' : ''}${hint}`);
  return device;
}
