// Matrix multiply in WebAssembly SIMD, the GotoBLAS / BLIS recipe (pack the
// operands, block for the caches, keep a tile of C in registers), with four
// float32 lanes per instruction. The TypeScript reference in ../backend.ts is
// the plain triple loop this computes.
//
//  - The register tile is MR x NR = 6 x 8: twelve f32x4 accumulators. Each
//    step along K loads 8 values of B (two vectors) and broadcasts 6 values of
//    A, for 12 multiply-adds. With the two B vectors and the broadcast that is
//    15 live vectors, all that V8 gives us on x86-64 (xmm15 is its scratch).
//    Why not 4 x 8 (8 accumulators, what this kernel had first): a fused
//    multiply-add takes 4 cycles and a core starts 2 per cycle, so 8
//    independent sums are exactly enough to keep it busy, with no slack. Any
//    stall (a late load, a cycle lost to a busy neighbour on the same core)
//    then costs throughput directly; measured pinned to one vCPU, the 6 x 8
//    tile is 10-20% faster and its slowest runs much less slow. Unrolling K
//    did not help: V8 hoisted the extra loads and spilled.
//  - The broadcasts of A read at constant offsets from one address (a memarg
//    offset), which V8 folds into the load: no address arithmetic per row.
//  - Packing copies a KC-deep slab of B into 8-wide column panels and an
//    MC-row block of A into 6-row panels, zero-padded: the micro-kernel always
//    computes a full tile and only the write-back knows about edges. Packing
//    reads any strides, so transposed and batched views cost nothing extra.
//  - With relaxed SIMD, a*b+c is one fused instruction (f32x4.relaxed_madd);
//    without it, a multiply then an add.
//
// Addresses are byte offsets into the shared memory; strides given by the
// caller are in elements and scaled by 4 here.

import {
  type Code,
  type Func,
  type Local,
  type ModuleBuilder,
  call,
  choose,
  doWhile,
  f32,
  f32x4,
  for_,
  i32,
  i32x4,
  i8x16,
  if_,
  seq,
  v128,
} from './emit.ts';
import { lanesSum } from './rows.ts';

/** Rows of the register tile (of A and C). */
export const MR = 6;
/** Columns of the register tile (of B and C). */
export const NR = 8;
const KC = 256; // depth of a packed slab: an A panel (6 x 256) and a B panel (256 x 8) fit in L1
const MC = 96; // rows of A packed at once (a multiple of MR): 96 x 256 floats, 96 KiB, stay in L2
const NC = 1024; // columns of B packed at once: a 256 x 1024 slab, 1 MiB, half of a 2 MiB L2
/** Bytes of scratch one thread needs: a spilled tile, a packed A block, a packed B slab. */
export const GEMM_SCRATCH = 4 * (MR * NR + MC * KC + KC * NC);

/** The i32 constant n. */
const c = (n: number) => i32.const(n);

/**
 * The 4 x 4 transpose of four vectors (rows r0..r3) with shuffles: first
 * interleave pairs of rows, then pairs of pairs. Returns the four columns.
 */
function transpose4([r0, r1, r2, r3]: Local[]): Code[] {
  const lo = (a: Code, b: Code) => i8x16.shuffle(a, b, [0, 4, 1, 5]); // a0 b0 a1 b1
  const hi = (a: Code, b: Code) => i8x16.shuffle(a, b, [2, 6, 3, 7]); // a2 b2 a3 b3
  const first = (a: Code, b: Code) => i8x16.shuffle(a, b, [0, 1, 4, 5]); // a0 a1 b0 b1
  const second = (a: Code, b: Code) => i8x16.shuffle(a, b, [2, 3, 6, 7]); // a2 a3 b2 b3
  const [t0, t1, t2, t3] = [
    lo(r0.get(), r1.get()),
    hi(r0.get(), r1.get()),
    lo(r2.get(), r3.get()),
    hi(r2.get(), r3.get()),
  ];
  return [first(t0, t2), second(t0, t2), first(t1, t3), second(t1, t3)];
}

/** base + 4 * (i * si + j * sj): the byte address of element (i, j). */
function at(base: Code, i: Code, si: Code, j: Code, sj: Code): Code {
  return i32.add(base, i32.shl(i32.add(i32.mul(i, si), i32.mul(j, sj)), c(2)));
}

/** The block products of the module: with mul+add, and with fused multiply-add (when emitted). */
export interface GemmBlocks {
  plain: Func;
  fma: Func | null;
}

/**
 * Emits pack_b, pack_a, and gemm_tile, gemm_block and gemm with a mul+add
 * micro-kernel; with `fma`, also gemm_tile_fma, gemm_block_fma and gemm_fma,
 * which use relaxed SIMD's fused multiply-add. Then the matrix-vector
 * products: gemv, and gemv_bf16 (and gemv_bf16_fma) for weights kept as
 * bfloat16.
 */
export function emitGemm(m: ModuleBuilder, fma: boolean): GemmBlocks {
  // pack(src, ls, ds, lines, depth, dst) copies `lines` strided vectors of
  // length `depth` (columns of B, or rows of A; ls is the stride between
  // lines, ds the stride along them) into panels of W lines: for each step
  // along the depth, the panel's W values side by side, the order the
  // micro-kernel reads them. Lines past the end are zero. Two layouts are
  // fast: when a step's W values are contiguous (a row-major B, a transposed
  // A) each step is a vector copy, and when the lines are contiguous (a
  // row-major A, the transposed weights of x @ W^T) four steps of four lines
  // are loaded as four vectors and transposed in registers.
  const pack = (name: string, W: number) => {
    const f = m.func(name, ['i32', 'i32', 'i32', 'i32', 'i32', 'i32']);
    const [src, ls, ds, lines, depth, dst] = f.params;
    const [l, d, s, width, w, end] = [
      f.local('i32'),
      f.local('i32'),
      f.local('i32'),
      f.local('i32'),
      f.local('i32'),
      f.local('i32'),
    ];
    const rows = [f.local('v128'), f.local('v128'), f.local('v128'), f.local('v128')];
    const next = (steps: number) =>
      seq(s.set(i32.add(s.get(), i32.mul(ds.get(), c(steps)))), dst.set(i32.add(dst.get(), c(4 * W * steps))));
    // a step's W contiguous values, as vectors (the last one overlaps the one before when 4 does not divide W)
    const vectorAt = Array.from({ length: Math.ceil(W / 4) }, (_, q) => Math.min(16 * q, 4 * W - 16));
    const copy = seq(...vectorAt.map((at) => v128.store(dst.get(), v128.load(s.get(), at), at)));
    const oneByOne = for_(
      w,
      c(0),
      c(W),
      1,
      f32.store(
        i32.add(dst.get(), i32.shl(w.get(), c(2))),
        choose(
          'f32',
          i32.ltU(w.get(), width.get()),
          f32.load(i32.add(s.get(), i32.mul(w.get(), ls.get()))),
          f32.const(0),
        ),
      ),
    );
    // lines 4g..4g+3, four steps each: rows[r] = line 4g+r; after the
    // transpose, vector t holds step t of the four lines. The last W % 4
    // lines (A's panels are 6 wide) go lane by lane.
    const lineAt = (line: number) => v128.load(i32.add(s.get(), i32.mul(ls.get(), c(line))));
    const transposed = seq(
      ...Array.from({ length: Math.floor(W / 4) }, (_, g) =>
        seq(
          ...rows.map((r, q) => r.set(lineAt(4 * g + q))),
          ...transpose4(rows).map((v, t) => v128.store(dst.get(), v, 4 * W * t + 16 * g)),
        ),
      ),
      ...Array.from({ length: W % 4 }, (_, q) => W - (W % 4) + q).map((line) =>
        seq(
          rows[0].set(lineAt(line)),
          ...[0, 1, 2, 3].map((t) => f32.store(dst.get(), f32x4.extractLane(rows[0].get(), t), 4 * W * t + 4 * line)),
        ),
      ),
    );
    f.body = seq(
      ls.set(i32.shl(ls.get(), c(2))),
      ds.set(i32.shl(ds.get(), c(2))),
      end.set(i32.and(depth.get(), c(~3))),
      for_(
        l,
        c(0),
        lines.get(),
        W,
        seq(
          width.set(i32.minU(c(W), i32.sub(lines.get(), l.get()))),
          s.set(i32.add(src.get(), i32.mul(l.get(), ls.get()))),
          if_(
            i32.and(i32.eq(width.get(), c(W)), i32.eq(ls.get(), c(4))),
            for_(d, c(0), depth.get(), 1, seq(copy, next(1))),
            seq(
              if_(
                i32.and(i32.eq(width.get(), c(W)), i32.eq(ds.get(), c(4))),
                for_(d, c(0), end.get(), 4, seq(transposed, next(4))),
                d.set(c(0)),
              ),
              for_(d, d.get(), depth.get(), 1, seq(oneByOne, next(1))),
            ),
          ),
        ),
      ),
    );
    return f;
  };
  const packB = pack('pack_b', NR);
  const packA = pack('pack_a', MR);
  const blocks = { plain: emitVariant(m, packA, packB, false), fma: fma ? emitVariant(m, packA, packB, true) : null };
  emitGemv(m);
  emitGemvBf16(m, false);
  if (fma) emitGemvBf16(m, true);
  return blocks;
}

/**
 * gemv(a, as, b, brs, bcs, c, K, N): one row of C, c[j] = sum over k of
 * a[k] b[k][j], for products too thin to pay for packing (one token at a
 * time while generating). Two layouts of B are read directly: columns
 * contiguous (x @ W^T: dot products of a with four rows of W at a time) or
 * rows contiguous (x @ W: a[k] times row k of B, added into 16 columns of C
 * kept in registers). The caller sends any other layout to gemm.
 */
function emitGemv(m: ModuleBuilder): void {
  const f = m.func('gemv', ['i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32']);
  const [a, as, b, brs, bcs, cp, K, N] = f.params;
  const [j, k, end, col, ak] = [f.local('i32'), f.local('i32'), f.local('i32'), f.local('i32'), f.local('i32')];
  const acc = [f.local('v128'), f.local('v128'), f.local('v128'), f.local('v128')];
  const [av, s] = [f.local('v128'), f.local('f32')];
  const zero = seq(...acc.map((x) => x.set(f32x4.const(0))));
  // column j + q of B (clamped to the last one: its dot product is computed twice, stored once)
  const column = (q: number) =>
    i32.add(b.get(), i32.shl(i32.mul(i32.minU(i32.add(j.get(), c(q)), i32.sub(N.get(), c(1))), bcs.get()), c(2)));
  const dots = for_(
    j,
    c(0),
    N.get(),
    4,
    seq(
      zero,
      for_(
        k,
        c(0),
        end.get(),
        4,
        seq(
          av.set(v128.load(i32.add(a.get(), i32.shl(k.get(), c(2))))),
          ...acc.map((x, q) =>
            x.set(f32x4.add(x.get(), f32x4.mul(av.get(), v128.load(i32.add(column(q), i32.shl(k.get(), c(2))))))),
          ),
        ),
      ),
      ...acc.map((x, q) =>
        if_(
          i32.ltU(i32.add(j.get(), c(q)), N.get()),
          seq(
            s.set(lanesSum(x)),
            for_(
              k,
              end.get(),
              K.get(),
              1,
              s.set(
                f32.add(
                  s.get(),
                  f32.mul(
                    f32.load(i32.add(a.get(), i32.shl(k.get(), c(2)))),
                    f32.load(i32.add(column(q), i32.shl(k.get(), c(2)))),
                  ),
                ),
              ),
            ),
            f32.store(i32.add(cp.get(), i32.shl(i32.add(j.get(), c(q)), c(2))), s.get()),
          ),
        ),
      ),
    ),
  );
  // 16 columns at a time, then the last few one by one
  const rowAt = (kk: Code) => i32.add(b.get(), i32.shl(i32.mul(kk, brs.get()), c(2)));
  const axpys = seq(
    end.set(i32.and(N.get(), c(~15))),
    for_(
      j,
      c(0),
      end.get(),
      16,
      seq(
        zero,
        for_(
          k,
          c(0),
          K.get(),
          1,
          seq(
            av.set(v128.load32Splat(i32.add(a.get(), i32.shl(i32.mul(k.get(), as.get()), c(2))))),
            col.set(i32.add(rowAt(k.get()), i32.shl(j.get(), c(2)))),
            ...acc.map((x, q) => x.set(f32x4.add(x.get(), f32x4.mul(av.get(), v128.load(col.get(), 16 * q))))),
          ),
        ),
        ...acc.map((x, q) => v128.store(i32.add(cp.get(), i32.shl(j.get(), c(2))), x.get(), 16 * q)),
      ),
    ),
    for_(
      j,
      end.get(),
      N.get(),
      1,
      seq(
        s.set(f32.const(0)),
        for_(
          k,
          c(0),
          K.get(),
          1,
          seq(
            ak.set(i32.add(a.get(), i32.shl(i32.mul(k.get(), as.get()), c(2)))),
            s.set(
              f32.add(s.get(), f32.mul(f32.load(ak.get()), f32.load(i32.add(rowAt(k.get()), i32.shl(j.get(), c(2)))))),
            ),
          ),
        ),
        f32.store(i32.add(cp.get(), i32.shl(j.get(), c(2))), s.get()),
      ),
    ),
  );
  f.body = seq(
    end.set(i32.and(K.get(), c(~3))),
    if_(i32.and(i32.eq(brs.get(), c(1)), i32.eq(as.get(), c(1))), dots, axpys),
  );
}

/**
 * gemv_bf16(a, b, bcs, c, K, N): c[j] = sum over k of a[k] b[j][k], the
 * dots layout of gemv (x @ W^T, rows of W contiguous) with W held as
 * bfloat16 (see keepBf16Copies in ../backend.ts): the upper 16 bits of a
 * float32, so a value is its bits moved back up. bcs is W's row stride in
 * elements. Eight weights per load, four rows of W at a time. A vector of
 * eight bf16 values is four 32-bit lanes, each holding two weights: masking
 * off the low half of each lane gives the odd ones as float32, shifting it
 * left 16 bits the even ones (one instruction each); a is split the same
 * way, once per eight k for all four rows.
 */
function emitGemvBf16(m: ModuleBuilder, fma: boolean): void {
  const f = m.func(fma ? 'gemv_bf16_fma' : 'gemv_bf16', ['i32', 'i32', 'i32', 'i32', 'i32', 'i32']);
  const [a, b, bcs, cp, K, N] = f.params;
  const [j, k, end, ak, wk] = [f.local('i32'), f.local('i32'), f.local('i32'), f.local('i32'), f.local('i32')];
  const rows = [f.local('i32'), f.local('i32'), f.local('i32'), f.local('i32')];
  const acc = [f.local('v128'), f.local('v128'), f.local('v128'), f.local('v128')];
  const [a0, a1, even, odd, w] = [f.local('v128'), f.local('v128'), f.local('v128'), f.local('v128'), f.local('v128')];
  const s = f.local('f32');
  const madd = (x: Code, y: Code, z: Code) => (fma ? f32x4.relaxedMadd(x, y, z) : f32x4.add(f32x4.mul(x, y), z));
  // rows j..j+3 of W, as byte addresses (clamped to the last row: its dot product is computed twice, stored once)
  const rowStarts = rows.map((r, q) => {
    const row = i32.minU(i32.add(j.get(), c(q)), i32.sub(N.get(), c(1)));
    return r.set(i32.add(b.get(), i32.shl(i32.mul(row, bcs.get()), c(1))));
  });
  const step = seq(
    ak.set(i32.add(a.get(), i32.shl(k.get(), c(2)))),
    wk.set(i32.shl(k.get(), c(1))),
    a0.set(v128.load(ak.get())),
    a1.set(v128.load(ak.get(), 16)),
    even.set(i8x16.shuffle(a0.get(), a1.get(), [0, 2, 4, 6])), // a[k], a[k + 2], a[k + 4], a[k + 6]
    odd.set(i8x16.shuffle(a0.get(), a1.get(), [1, 3, 5, 7])),
    ...acc.map((x, q) =>
      seq(
        w.set(v128.load(i32.add(rows[q].get(), wk.get()))),
        x.set(
          madd(
            odd.get(),
            v128.and(w.get(), i32x4.const(-0x10000)),
            madd(even.get(), i32x4.shl(w.get(), c(16)), x.get()),
          ),
        ),
      ),
    ),
  );
  const tail = (q: number) =>
    for_(
      k,
      end.get(),
      K.get(),
      1,
      s.set(
        f32.add(
          s.get(),
          f32.mul(
            f32.load(i32.add(a.get(), i32.shl(k.get(), c(2)))),
            f32.fromBits(i32.shl(i32.load16U(i32.add(rows[q].get(), i32.shl(k.get(), c(1)))), c(16))),
          ),
        ),
      ),
    );
  f.body = seq(
    end.set(i32.and(K.get(), c(~7))),
    for_(
      j,
      c(0),
      N.get(),
      4,
      seq(
        ...rowStarts,
        ...acc.map((x) => x.set(f32x4.const(0))),
        for_(k, c(0), end.get(), 8, step),
        ...acc.map((x, q) =>
          if_(
            i32.ltU(i32.add(j.get(), c(q)), N.get()),
            seq(
              s.set(lanesSum(x)),
              tail(q),
              f32.store(i32.add(cp.get(), i32.shl(i32.add(j.get(), c(q)), c(2))), s.get()),
            ),
          ),
        ),
      ),
    ),
  );
}

/** The micro-kernel and the loops around it, with or without fused multiply-add. */
function emitVariant(m: ModuleBuilder, packA: Func, packB: Func, fma: boolean): Func {
  const suffix = fma ? '_fma' : '';

  // gemm_tile(pa, pb, kc, c, ldc, rows, cols, add, spill): the micro-kernel.
  // The 6 x 8 product of a packed A panel and a packed B panel over kc steps,
  // in eight accumulators; then rows x cols of it go to C (row stride ldc
  // elements), added to C's values when `add` is set (every slab after the
  // first). Edge tiles go through the 192-byte `spill` buffer.
  const tile = m.func(`gemm_tile${suffix}`, ['i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32']);
  {
    const f = tile;
    const [pa, pb, kc, cp, ldc, rows, cols, add, spill] = f.params;
    const acc = Array.from({ length: MR }, () => [f.local('v128'), f.local('v128')]);
    const [av, b0, b1] = [f.local('v128'), f.local('v128'), f.local('v128')];
    const [end, r, j, dst] = [f.local('i32'), f.local('i32'), f.local('i32'), f.local('i32')];
    const madd = (x: Code, y: Code, z: Code) => (fma ? f32x4.relaxedMadd(x, y, z) : f32x4.add(f32x4.mul(x, y), z));
    // One k step: two loads of B, six broadcasts of A, twelve multiply-adds.
    const step = seq(
      b0.set(v128.load(pb.get())),
      b1.set(v128.load(pb.get(), 16)),
      ...acc.flatMap(([lo, hi], row) => [
        av.set(v128.load32Splat(pa.get(), 4 * row)),
        lo.set(madd(av.get(), b0.get(), lo.get())),
        hi.set(madd(av.get(), b1.get(), hi.get())),
      ]),
      pa.set(i32.add(pa.get(), c(4 * MR))),
      pb.set(i32.add(pb.get(), c(4 * NR))),
    );
    const rowAt = (row: number) => i32.add(cp.get(), i32.mul(c(row), ldc.get()));
    const put = (acc: Local, row: number, offset: number) =>
      v128.store(
        rowAt(row),
        choose('v128', add.get(), f32x4.add(v128.load(rowAt(row), offset), acc.get()), acc.get()),
        offset,
      );
    f.body = seq(
      ldc.set(i32.shl(ldc.get(), c(2))),
      end.set(i32.add(pa.get(), i32.mul(kc.get(), c(4 * MR)))),
      // kc >= 1, so the test in front is redundant; but V8 compiled the loop
      // 15-25% faster with it (measured against the same loop without, in one process)
      if_(i32.ltU(pa.get(), end.get()), doWhile(step, i32.ltU(pa.get(), end.get()))),
      if_(
        i32.and(i32.eq(rows.get(), c(MR)), i32.eq(cols.get(), c(NR))),
        seq(...acc.flatMap(([lo, hi], row) => [put(lo, row, 0), put(hi, row, 16)])),
        seq(
          ...acc.flatMap(([lo, hi], row) => [
            v128.store(spill.get(), lo.get(), 32 * row),
            v128.store(spill.get(), hi.get(), 32 * row + 16),
          ]),
          for_(
            r,
            c(0),
            rows.get(),
            1,
            seq(
              dst.set(i32.add(cp.get(), i32.mul(r.get(), ldc.get()))),
              for_(
                j,
                c(0),
                cols.get(),
                1,
                f32.store(
                  i32.add(dst.get(), i32.shl(j.get(), c(2))),
                  f32.add(
                    f32.load(i32.add(spill.get(), i32.shl(i32.add(i32.shl(r.get(), c(3)), j.get()), c(2)))),
                    choose('f32', add.get(), f32.load(i32.add(dst.get(), i32.shl(j.get(), c(2)))), f32.const(0)),
                  ),
                ),
              ),
            ),
          ),
        ),
      ),
    );
  }

  // gemm_block(a, b, c, M, N, K, ars, acs, brs, bcs, ldc, accumulate, scratch):
  // C = A @ B (C += A @ B with `accumulate`) for one M x N block of C, with
  // the given element strides, packing into the GEMM_SCRATCH bytes at
  // `scratch`. BLIS's loops: NC columns of C at a time; a KC-deep slab of B
  // packed once and reused by every MC-row block of A; one B panel stays in
  // L1 while the block's A panels stream past it. (The attention kernels
  // call it for their blocks too.)
  const block = m.func(`gemm_block${suffix}`, Array(13).fill('i32'));
  {
    const f = block;
    const [a, b, cc, M, N, K, ars, acs, brs, bcs, ldc, accumulate, scratch] = f.params;
    const [jc, pc, ic, jr, ir, nc, kc, mc, pa, pb] = Array.from({ length: 10 }, () => f.local('i32'));
    f.body = seq(
      pa.set(i32.add(scratch.get(), c(4 * MR * NR))),
      pb.set(i32.add(pa.get(), c(4 * MC * KC))),
      for_(
        jc,
        c(0),
        N.get(),
        NC,
        seq(
          nc.set(i32.minU(c(NC), i32.sub(N.get(), jc.get()))),
          for_(
            pc,
            c(0),
            K.get(),
            KC,
            seq(
              kc.set(i32.minU(c(KC), i32.sub(K.get(), pc.get()))),
              call(
                packB,
                at(b.get(), pc.get(), brs.get(), jc.get(), bcs.get()),
                bcs.get(),
                brs.get(),
                nc.get(),
                kc.get(),
                pb.get(),
              ),
              for_(
                ic,
                c(0),
                M.get(),
                MC,
                seq(
                  mc.set(i32.minU(c(MC), i32.sub(M.get(), ic.get()))),
                  call(
                    packA,
                    at(a.get(), ic.get(), ars.get(), pc.get(), acs.get()),
                    ars.get(),
                    acs.get(),
                    mc.get(),
                    kc.get(),
                    pa.get(),
                  ),
                  for_(
                    jr,
                    c(0),
                    nc.get(),
                    NR,
                    for_(
                      ir,
                      c(0),
                      mc.get(),
                      MR,
                      call(
                        tile,
                        i32.add(pa.get(), i32.mul(ir.get(), i32.shl(kc.get(), c(2)))),
                        i32.add(pb.get(), i32.mul(jr.get(), i32.shl(kc.get(), c(2)))),
                        kc.get(),
                        at(cc.get(), i32.add(ic.get(), ir.get()), ldc.get(), i32.add(jc.get(), jr.get()), c(1)),
                        ldc.get(),
                        i32.minU(c(MR), i32.sub(mc.get(), ir.get())),
                        i32.minU(c(NR), i32.sub(nc.get(), jr.get())),
                        i32.or(accumulate.get(), i32.ne(pc.get(), c(0))),
                        scratch.get(),
                      ),
                    ),
                  ),
                ),
              ),
            ),
          ),
        ),
      ),
    );
  }

  // gemm(units, count, K, ars, acs, brs, bcs, ldc, scratch, thread): for each
  // of `count` work units (5 i32 each: A, B and C addresses, M, N), C = A @ B,
  // in the thread's scratch: scratch + thread * GEMM_SCRATCH.
  const f = m.func(`gemm${suffix}`, ['i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32']);
  const [units, count, K, ars, acs, brs, bcs, ldc, scratch, thread] = f.params;
  const u = f.local('i32');
  f.body = seq(
    scratch.set(i32.add(scratch.get(), i32.mul(thread.get(), c(GEMM_SCRATCH)))),
    for_(
      u,
      c(0),
      count.get(),
      1,
      seq(
        call(
          block,
          i32.load(units.get()),
          i32.load(units.get(), 4),
          i32.load(units.get(), 8),
          i32.load(units.get(), 12),
          i32.load(units.get(), 16),
          K.get(),
          ars.get(),
          acs.get(),
          brs.get(),
          bcs.get(),
          ldc.get(),
          c(0),
          scratch.get(),
        ),
        units.set(i32.add(units.get(), c(20))),
      ),
    ),
  );
  return block;
}
