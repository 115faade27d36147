// The matrix products of the CPU backend (sgemm, and sgemv for the few rows of
// decoding) through the system's OpenBLAS, where there is one and Node can call
// C. This is what PyTorch's CPU path does (it calls MKL or OpenBLAS for every
// matmul): hand-written kernels for each CPU's widest vectors. WebAssembly SIMD
// is 128 bits (4 floats); an AVX-512 core does 16 per instruction, and on this
// project's 2-core Xeon OpenBLAS's sgemm ran at 3-4x our WebAssembly GEMM
// (bench/RESULTS.md). The tensors stay where they are: OpenBLAS reads and
// writes the WebAssembly memory in place, through pointers that koffi (an FFI
// library for Node) passes straight from typed-array views.
//
// Nothing here is needed: in a browser, without the koffi package or without
// the library, the WebAssembly GEMM runs (kernels.ts). NANOVLM_BLAS=0 turns
// this off, NANOVLM_BLAS=/path/libopenblas.so picks a library. Each kernel
// thread loads it for itself (the library is loaded once per process; koffi
// runs in worker threads), so the attention kernels can call it from any.

// Optional like worker threads (threads.ts): Node's built-ins through
// process.getBuiltinModule, so that this file imports nothing from Node.
const nodeProcess = (globalThis as { process?: NodeJS.Process }).process;

/** C = alpha * op(A) @ op(B) + beta * C, row-major, as cblas_sgemm; A, B, C are views of the memory. */
type Sgemm = (
  order: number,
  transA: number,
  transB: number,
  M: number,
  N: number,
  K: number,
  alpha: number,
  A: Float32Array,
  lda: number,
  B: Float32Array,
  ldb: number,
  beta: number,
  C: Float32Array,
  ldc: number,
) => void;

/** y = alpha * op(A) @ x + beta * y, row-major, as cblas_sgemv. */
type Sgemv = (
  order: number,
  trans: number,
  M: number,
  N: number,
  alpha: number,
  A: Float32Array,
  lda: number,
  x: Float32Array,
  incx: number,
  beta: number,
  y: Float32Array,
  incy: number,
) => void;

/** The loaded library: its name, sgemm and sgemv, and how to set its thread count. */
export interface Blas {
  name: string;
  sgemm: Sgemm;
  sgemv: Sgemv;
  setThreads: (n: number) => void;
}

// cblas's enums
export const ROW_MAJOR = 101;
export const NO_TRANS = 111;
export const TRANS = 112;

// Where OpenBLAS usually is: Debian/Ubuntu, Fedora, Homebrew, Windows.
const CANDIDATES = [
  'libopenblas.so.0',
  'libopenblas.so',
  '/opt/homebrew/opt/openblas/lib/libopenblas.dylib',
  '/usr/local/opt/openblas/lib/libopenblas.dylib',
  'libopenblas.dll',
];

/** Loads OpenBLAS through koffi; null where either is missing or NANOVLM_BLAS=0. */
function load(): Blas | null {
  const choice = nodeProcess?.env.NANOVLM_BLAS;
  if (!nodeProcess?.getBuiltinModule || choice === '0') return null;
  // OpenBLAS's threads spin 2^28 cycles (about 0.1 s) after each call before they sleep: they would take
  // the cores from the WebAssembly kernels that run between two products. 2^20 cycles is under a millisecond.
  nodeProcess.env.OPENBLAS_THREAD_TIMEOUT ??= '20';
  let koffi: typeof import('koffi');
  try {
    koffi = nodeProcess.getBuiltinModule('node:module').createRequire(import.meta.url)('koffi');
  } catch {
    return null; // the optional dependency is not installed
  }
  for (const name of choice ? [choice] : CANDIDATES) {
    try {
      const lib = koffi.load(name);
      const sgemm = lib.func(
        'void cblas_sgemm(int, int, int, int, int, int, float, const float *, int, const float *, int, float, ' +
          'float *, int)',
      ) as Sgemm;
      const sgemv = lib.func(
        'void cblas_sgemv(int, int, int, int, float, const float *, int, const float *, int, float, float *, int)',
      ) as Sgemv;
      const setThreads = lib.func('void openblas_set_num_threads(int)') as (n: number) => void;
      const config = lib.func('const char *openblas_get_config()') as () => string;
      return { name: config().split(' ').slice(0, 2).join(' '), sgemm, sgemv, setThreads };
    } catch {
      // not there (or not OpenBLAS): try the next
    }
  }
  if (choice) console.warn(`cpu backend: NANOVLM_BLAS=${choice} could not be loaded as OpenBLAS; using WebAssembly`);
  return null;
}

/** The system's OpenBLAS, or null. */
export const blas = load();

/**
 * How cblas reads a rows x cols matrix with these element strides: row-major as it is, or transposed (a
 * column-major one), with its leading dimension; null when neither (the WebAssembly GEMM takes any strides).
 * The stride of a dim of size 1 does not matter.
 */
export function blasLayout(rows: number, cols: number, rowStride: number, colStride: number): [number, number] | null {
  if ((cols === 1 || colStride === 1) && (rows === 1 || rowStride >= cols)) {
    return [NO_TRANS, rows === 1 ? cols : rowStride];
  }
  if ((rows === 1 || rowStride === 1) && (cols === 1 || colStride >= rows)) {
    return [TRANS, cols === 1 ? rows : colStride];
  }
  return null;
}

/**
 * The host function the _blas attention kernels import as env.gemm (attention.ts), for one thread's instance
 * of the module over `memory`: it takes gemm_block's parameters (byte addresses, element strides; `add`:
 * C += A @ B, else C = A @ B) and hands the product to OpenBLAS's sgemm, or to `gemmBlock` (the module's own
 * export, for strides cblas cannot describe, or where there is no OpenBLAS). `counted` is told of each sgemm.
 */
export function blockGemmImport(
  memory: WebAssembly.Memory,
  gemmBlock: () => (...args: number[]) => unknown,
  counted: () => void = () => {},
): (...args: number[]) => void {
  let heap = new Float32Array(memory.buffer);
  return (...args: number[]) => {
    const [a, b, c, M, N, K, aRowStride, aColStride, bRowStride, bColStride, ldc, add] = args;
    const [la, lb] = [blasLayout(M, K, aRowStride, aColStride), blasLayout(K, N, bRowStride, bColStride)];
    if (!blas || !la || !lb) {
      gemmBlock()(...args);
      return;
    }
    if (heap.buffer !== memory.buffer) heap = new Float32Array(memory.buffer); // the memory grew
    const [A, B, C] = [heap.subarray(a / 4), heap.subarray(b / 4), heap.subarray(c / 4)];
    counted();
    blas.sgemm(ROW_MAJOR, la[0], lb[0], M, N, K, 1, A, la[1], B, lb[1], add, C, ldc);
  };
}
