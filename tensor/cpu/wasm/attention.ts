// Fused attention in WebAssembly, FlashAttention's recipe on the CPU: the
// queries of one head are taken a block of rows at a time, the keys a block
// at a time, and the scores of a block (rows x keys, in a small per-thread
// buffer) never reach a tensor. The block products are the GEMM's own
// (gemm_block in gemm.ts: packed panels, a 6 x 8 register tile), or, in the
// _blas kernels, OpenBLAS's sgemm through a function of the host (2-4x the
// WebAssembly GEMM on the AVX-512 cores measured). What is new here are the passes over
// a block of scores between two products. The plain TypeScript loops of
// ../backend.ts (attention, scoreRow) are the reference these compute.
//
// Forward, for a block of query rows (an online softmax: each row keeps its
// running max m and sum l, so no row needs all its scores at once):
//   S = Q K_j^T * scale + mask         for each key block j (keys after the causal limit: P = 0)
//   m' = max(m, max S);  P = e^(S - m');  l = l e^(m - m') + sum P
//   O = O e^(m - m') + P V_j           (P with dropout applied)
//   out = O / l, and (m, l) of each row: the host makes lse = m + log l.
// Backward, for one key/value head and the query heads that share it, key
// block by key block (each task owns its rows of dk and dv, and of dq):
//   P = e^(Q K_j^T * scale + mask - lse)       the forward's probabilities again
//   dV_j += P^T dO;  dP = dO V_j^T
//   dS = P (dP - delta) * scale, delta = rowsum(dO * O)    (through the softmax)
//   dQ += dS K_j;  dK_j += dS^T Q
//
// Dropout recomputes the keep mask from the flat score index, as the
// contract (AttentionDropout in ../../backend.ts) defines it: i32 arithmetic
// wraps mod 2^32, which is what the hash needs.

import {
  type Code,
  type Func,
  type Local,
  type ModuleBuilder,
  call,
  choose,
  f32,
  f32x4,
  for_,
  i32,
  if_,
  seq,
  v128,
} from './emit.ts';
import { UNARY } from './elementwise.ts';
import { GEMM_SCRATCH, type GemmBlocks } from './gemm.ts';
import { lanesMax, lanesSum, overRow } from './rows.ts';

/**
 * The parameter block of a call, written by the host into the memory: word
 * offsets, i32 unless marked f32. Strides are in elements: *R between rows
 * (positions), *C between columns, *H between the query heads of a group.
 */
export const ATT = {
  QR: 0,
  QC: 1,
  KR: 2,
  KC: 3,
  VR: 4,
  VC: 5,
  OR: 6,
  GR: 7,
  MR: 8,
  MC: 9,
  QH: 10,
  OH: 11,
  GH: 12,
  LH: 13,
  MH: 14,
  DQR: 15,
  DQH: 16,
  DKR: 17,
  NH: 18 /* dropout index per head: T * Tk */,
  GROUP: 19 /* query heads per key head */,
  T: 20,
  TK: 21,
  D: 22,
  CAUSAL: 23,
  SHIFT: 24 /* Tk - T: query t is at position SHIFT + t */,
  SCALE: 25 /* f32 */,
  DROPOUT: 26,
  THRESHOLD: 27 /* keep when hash >= it, unsigned */,
  SEED: 28,
  KEEP_SCALE: 29 /* f32: 1 / (1 - p) */,
  NK: 30 /* keys per block */,
  MQ: 31 /* query rows per block */,
  SCRATCH: 32,
  SCRATCH_BYTES: 33 /* per thread */,
  GEMM_SCRATCH: 34,
  /** A zero word: the mask of a call without one (its strides 0). */
  ZERO: 35,
  WORDS: 36,
};

type Name = Exclude<keyof typeof ATT, 'ZERO' | 'WORDS'>;
type Params = Record<Name, Local>;

const c = (n: number) => i32.const(n);
const k4 = (x: number) => f32x4.const(x);
const splat = (x: Local) => f32x4.splat(x.get());
/** The address `at` bytes into the row at `base`. */
const addr = (base: Local, at: Local) => i32.add(base.get(), at.get());
/** base + 4 * r * len: row r of rows of `len` floats. */
const rowOf = (base: Local, r: Code, len: Local) => i32.add(base.get(), i32.shl(i32.mul(r, len.get()), c(2)));
/** base + 4 * i: float i. */
const word = (base: Local, i: Code) => i32.add(base.get(), i32.shl(i, c(2)));

/**
 * Emits attention_fwd and attention_bwd (and their _fma twins when the module
 * has FMA), and the _blas twins, whose block products call `hostGemm`
 * instead: the host's function with gemm_block's parameters, which hands them
 * to OpenBLAS (kernels.ts). The passes over the scores are the same code.
 */
export function emitAttention(m: ModuleBuilder, blocks: GemmBlocks, hostGemm: Func): void {
  for (const [suffix, gemm] of [
    ['', blocks.plain],
    ['_fma', blocks.fma],
    ['_blas', hostGemm],
  ] as const) {
    if (!gemm) continue;
    emitForward(m, `attention_fwd${suffix}`, gemm);
    emitBackward(m, `attention_bwd${suffix}`, gemm);
  }
}

/** The call's parameters, loaded into locals once. */
function loadParams(f: Func, params: Local): { p: Params; code: Code } {
  const p = {} as Params;
  const code: Code[] = [];
  for (const name of Object.keys(ATT).filter((n) => n !== 'ZERO' && n !== 'WORDS') as Name[]) {
    const float = name === 'SCALE' || name === 'KEEP_SCALE';
    p[name] = f.local(float ? 'f32' : 'i32');
    code.push(p[name].set(float ? f32.load(params.get(), 4 * ATT[name]) : i32.load(params.get(), 4 * ATT[name])));
  }
  return { p, code };
}

/** A matrix operand of gemm_block: its address and element strides between rows and between columns. */
type Operand = [at: Code, rowStride: Code, colStride: Code];

/** C (+)= A @ B through gemm_block, for M x N of C (row stride ldc) over K, packing in the thread's buffers `gs`. */
function product(
  gemm: Func,
  gs: Local,
  o: { M: Code; N: Code; K: Code; a: Operand; b: Operand; c: [at: Code, ldc: Code]; add: boolean },
): Code {
  const [a, b, cc] = [o.a, o.b, o.c];
  return call(gemm, a[0], b[0], cc[0], o.M, o.N, o.K, a[1], a[2], b[1], b[2], cc[1], c(o.add ? 1 : 0), gs.get());
}

/** e^x of one f32, through the vector exp (lane 0). */
function exp1(f: Func, x: Code): Code {
  const v = f.local('v128');
  return seq(v.set(f32x4.splat(x)), f32x4.extractLane(UNARY.exp(f, v), 0));
}

/** 1 / (1 - p) where the score with flat index n survives dropout, else 0 (the contract's hash, unsigned compare). */
function keepScale(f: Func, p: Params, n: Code): Code {
  const x = f.local('i32');
  const mix = (shift: number) => x.set(i32.xor(x.get(), i32.shrU(x.get(), c(shift))));
  return seq(
    x.set(i32.add(i32.mul(n, c(0x9e3779b9 | 0)), p.SEED.get())),
    mix(16),
    x.set(i32.mul(x.get(), c(0x7feb352d))),
    mix(15),
    x.set(i32.mul(x.get(), c(0x846ca68b | 0))),
    mix(16),
    choose('f32', i32.geU(x.get(), p.THRESHOLD.get()), p.KEEP_SCALE.get(), f32.const(0)),
  );
}

/**
 * The scores of one row of a block, in place: s * scale + mask, then `then`,
 * for the keys up to the causal limit `last` (an absolute key index; the
 * block starts at key j0): `seen` is set to how many keys of the block that
 * is, and the keys after it get 0, the probability of a key the query may
 * not see. The mask row is read by its key stride, chosen once per row: 1:
 * vectors; 0: one value (a broadcast, or a call without a mask, which passes
 * the zero word); else lane by lane.
 */
function scoreRow(
  f: Func,
  p: Params,
  row: Local,
  n: Local,
  mask: Local,
  j0: Local,
  last: Code,
  seen: Local,
  then: (x: Code) => Code,
): Code {
  const [j, from, v, one] = [f.local('i32'), f.local('i32'), f.local('v128'), f.local('v128')];
  const maskAt = (at: Local) => i32.add(mask.get(), i32.mul(at.get(), p.MC.get())); // at is 4 j
  const lane = (at: Local, l: number) => f32.load(i32.add(maskAt(at), i32.shl(i32.mul(p.MC.get(), c(l)), c(2))));
  const gathered = (at: Local) =>
    [1, 2, 3].reduce((acc: Code, l) => f32x4.replaceLane(acc, l, lane(at, l)), v128.load32Splat(maskAt(at)));
  const scores = (maskVec: (at: Local) => Code) =>
    overRow(
      f,
      seen,
      (at) =>
        v128.store(addr(row, at), then(f32x4.add(f32x4.mul(v128.load(addr(row, at)), splat(p.SCALE)), maskVec(at)))),
      (at) =>
        seq(
          v.set(f32x4.splat(f32.add(f32.mul(f32.load(addr(row, at)), p.SCALE.get()), f32.load(maskAt(at))))),
          f32.store(addr(row, at), f32x4.extractLane(then(v.get()), 0)),
        ),
    );
  return seq(
    from.set(i32.sub(i32.add(last, c(1)), j0.get())),
    seen.set(
      choose(
        'i32',
        p.CAUSAL.get(),
        choose('i32', i32.ltS(from.get(), c(0)), c(0), i32.minU(from.get(), n.get())),
        n.get(),
      ),
    ),
    if_(
      i32.eq(p.MC.get(), c(1)),
      scores((at) => v128.load(maskAt(at))),
      if_(
        i32.eqz(p.MC.get()),
        seq(
          one.set(v128.load32Splat(mask.get())),
          scores(() => one.get()),
        ),
        scores(gathered),
      ),
    ),
    for_(j, seen.get(), n.get(), 1, f32.store(word(row, j.get()), f32.const(0))),
  );
}

/**
 * attention_fwd(params, q, k, v, o, stats, mask, i0, rows, nBase, thread): one
 * block of `rows` query rows (from row i0) of one head. q, o, stats and mask
 * point at the block's first row; k and v at the head's first key; nBase is
 * the flat dropout index of the block's first score. Per-thread buffers:
 * the block's scores S (MQ x NK), its output O (MQ x D), and m and l.
 */
function emitForward(m: ModuleBuilder, name: string, gemm: Func): void {
  const f = m.func(name, Array(11).fill('i32'));
  const [params, q, k, v, o, stats, mask, i0, rows, nBase, thread] = f.params;
  const { p, code: load } = loadParams(f, params);
  const [S, O, M, L, gs, end, j0, nk, r, row, orow, mrow, j, seen] = Array.from({ length: 14 }, () => f.local('i32'));
  const [mOld, mNew, mSafe, alpha, s1, inv] = Array.from({ length: 6 }, () => f.local('f32'));
  const [mx, sum, x] = [f.local('v128'), f.local('v128'), f.local('v128')];
  const scale = (base: Local, by: Local) =>
    overRow(
      f,
      p.D,
      (at) => v128.store(addr(base, at), f32x4.mul(v128.load(addr(base, at)), splat(by))),
      (at) => f32.store(addr(base, at), f32.mul(f32.load(addr(base, at)), by.get())),
    );
  const softmaxRow = seq(
    row.set(rowOf(S, r.get(), nk)),
    mrow.set(i32.add(mask.get(), i32.shl(i32.add(i32.mul(r.get(), p.MR.get()), i32.mul(j0.get(), p.MC.get())), c(2)))),
    // the scores and their max in one pass (the keys the row may not see are 0 and left out)
    mx.set(k4(-Infinity)),
    scoreRow(f, p, row, nk, mrow, j0, i32.add(p.SHIFT.get(), i32.add(i0.get(), r.get())), seen, (s) =>
      seq(x.set(s), mx.set(f32x4.max(mx.get(), x.get())), x.get()),
    ),
    mOld.set(f32.load(word(M, r.get()))),
    mNew.set(f32.max(mOld.get(), lanesMax(mx))),
    // a row that has seen only -inf so far keeps m = -inf; its e^(s - 0) are 0 then
    mSafe.set(choose('f32', f32.eq(mNew.get(), f32.const(-Infinity)), f32.const(0), mNew.get())),
    alpha.set(exp1(f, f32.sub(mOld.get(), mSafe.get()))),
    sum.set(k4(0)),
    s1.set(f32.const(0)),
    overRow(
      f,
      seen,
      (at) =>
        seq(
          x.set(f32x4.sub(v128.load(addr(row, at)), splat(mSafe))),
          x.set(UNARY.exp(f, x)),
          v128.store(addr(row, at), x.get()),
          sum.set(f32x4.add(sum.get(), x.get())),
        ),
      (at) =>
        seq(
          x.set(f32x4.splat(f32.sub(f32.load(addr(row, at)), mSafe.get()))),
          x.set(UNARY.exp(f, x)),
          f32.store(addr(row, at), f32x4.extractLane(x.get(), 0)),
          s1.set(f32.add(s1.get(), f32x4.extractLane(x.get(), 0))),
        ),
    ),
    s1.set(f32.add(s1.get(), lanesSum(sum))),
    f32.store(word(L, r.get()), f32.add(f32.mul(f32.load(word(L, r.get())), alpha.get()), s1.get())),
    f32.store(word(M, r.get()), mNew.get()),
    // dropout scales the probabilities of the weighted sum (l sums all of them)
    if_(
      p.DROPOUT.get(),
      for_(
        j,
        c(0),
        nk.get(),
        1,
        f32.store(
          word(row, j.get()),
          f32.mul(
            f32.load(word(row, j.get())),
            keepScale(f, p, i32.add(nBase.get(), i32.add(i32.mul(r.get(), p.TK.get()), i32.add(j0.get(), j.get())))),
          ),
        ),
      ),
    ),
    // the first key block finds O at 0: nothing to rescale
    if_(j0.get(), seq(orow.set(rowOf(O, r.get(), p.D)), scale(orow, alpha))),
  );
  f.body = seq(
    load,
    S.set(i32.add(p.SCRATCH.get(), i32.mul(thread.get(), p.SCRATCH_BYTES.get()))),
    O.set(rowOf(S, p.MQ.get(), p.NK)),
    M.set(rowOf(O, p.MQ.get(), p.D)),
    L.set(word(M, p.MQ.get())),
    gs.set(i32.add(p.GEMM_SCRATCH.get(), i32.mul(thread.get(), c(GEMM_SCRATCH)))),
    for_(
      r,
      c(0),
      rows.get(),
      1,
      seq(f32.store(word(M, r.get()), f32.const(-Infinity)), f32.store(word(L, r.get()), f32.const(0))),
    ),
    for_(j, c(0), i32.mul(rows.get(), p.D.get()), 1, f32.store(word(O, j.get()), f32.const(0))),
    // the keys some row of the block sees: all, or (causal) up to the last row's position
    end.set(choose('i32', p.CAUSAL.get(), i32.add(p.SHIFT.get(), i32.add(i0.get(), rows.get())), p.TK.get())),
    for_(
      j0,
      c(0),
      end.get(),
      p.NK.get(),
      seq(
        nk.set(i32.minU(p.NK.get(), i32.sub(end.get(), j0.get()))),
        // S = Q K_j^T: K read transposed (row stride KC, column stride KR)
        product(gemm, gs, {
          M: rows.get(),
          N: nk.get(),
          K: p.D.get(),
          a: [q.get(), p.QR.get(), p.QC.get()],
          b: [rowOf(k, j0.get(), p.KR), p.KC.get(), p.KR.get()],
          c: [S.get(), nk.get()],
          add: false,
        }),
        for_(r, c(0), rows.get(), 1, softmaxRow),
        // O += P V_j
        product(gemm, gs, {
          M: rows.get(),
          N: p.D.get(),
          K: nk.get(),
          a: [S.get(), nk.get(), c(1)],
          b: [rowOf(v, j0.get(), p.VR), p.VR.get(), p.VC.get()],
          c: [O.get(), p.D.get()],
          add: true,
        }),
      ),
    ),
    for_(
      r,
      c(0),
      rows.get(),
      1,
      seq(
        inv.set(f32.div(f32.const(1), f32.load(word(L, r.get())))),
        orow.set(rowOf(O, r.get(), p.D)),
        row.set(rowOf(o, r.get(), p.OR)),
        overRow(
          f,
          p.D,
          (at) => v128.store(addr(row, at), f32x4.mul(v128.load(addr(orow, at)), splat(inv))),
          (at) => f32.store(addr(row, at), f32.mul(f32.load(addr(orow, at)), inv.get())),
        ),
        f32.store(word(stats, i32.shl(r.get(), c(1))), f32.load(word(M, r.get()))),
        f32.store(word(stats, i32.shl(r.get(), c(1))), f32.load(word(L, r.get())), 4),
      ),
    ),
  );
}

/**
 * attention_bwd(params, q, k, v, o, g, lse, mask, dq, dk, dv, nBase, thread):
 * the gradients through one key/value head, for the GROUP query heads that
 * share it. q, o, g (dLoss/dout), lse, mask, dq and nBase are those of the
 * group's first query head (the others follow at the head strides); k, v, dk
 * and dv are the key/value head's. dq, dk and dv are added to (the caller
 * zeroes them). Per-thread buffers: P and dP of a block (MQ x NK each), and
 * delta of every row of the head (T).
 */
function emitBackward(m: ModuleBuilder, name: string, gemm: Func): void {
  const f = m.func(name, Array(13).fill('i32'));
  const [params, q, k, v, o, g, lse, mask, dq, dk, dv, nBase, thread] = f.params;
  const { p, code: load } = loadParams(f, params);
  const [P, dP, delta, gs, h, qh, oh, gh, lh, mh, dqh, nb, t, j0, nk, i0, rows, r, row, drow, mrow, j, probs, seen] =
    Array.from({ length: 24 }, () => f.local('i32'));
  const [lseRow, deltaRow, dot] = [f.local('f32'), f.local('f32'), f.local('f32')];
  const [acc, x] = [f.local('v128'), f.local('v128')];
  const dropScale = (rr: Local, jj: Local) =>
    keepScale(
      f,
      p,
      i32.add(nb.get(), i32.add(i32.mul(i32.add(i0.get(), rr.get()), p.TK.get()), i32.add(j0.get(), jj.get()))),
    );
  const rowsOfBlock = (body: Code) =>
    for_(r, c(0), rows.get(), 1, seq(row.set(rowOf(P, r.get(), nk)), drow.set(rowOf(dP, r.get(), nk)), body));
  // delta[t] = gradOut[t] . out[t], for every row of the head
  const deltas = for_(
    t,
    c(0),
    p.T.get(),
    1,
    seq(
      row.set(rowOf(gh, t.get(), p.GR)),
      drow.set(rowOf(oh, t.get(), p.OR)),
      acc.set(k4(0)),
      dot.set(f32.const(0)),
      overRow(
        f,
        p.D,
        (at) => acc.set(f32x4.add(acc.get(), f32x4.mul(v128.load(addr(row, at)), v128.load(addr(drow, at))))),
        (at) => dot.set(f32.add(dot.get(), f32.mul(f32.load(addr(row, at)), f32.load(addr(drow, at))))),
      ),
      f32.store(word(delta, t.get()), f32.add(dot.get(), lanesSum(acc))),
    ),
  );
  // P = e^(S * scale + mask - lse)
  const probabilities = rowsOfBlock(
    seq(
      t.set(i32.add(i0.get(), r.get())),
      lseRow.set(f32.load(word(lh, t.get()))),
      mrow.set(i32.add(mh.get(), i32.shl(i32.add(i32.mul(t.get(), p.MR.get()), i32.mul(j0.get(), p.MC.get())), c(2)))),
      scoreRow(f, p, row, nk, mrow, j0, i32.add(p.SHIFT.get(), t.get()), seen, (s) =>
        seq(x.set(f32x4.sub(s, splat(lseRow))), UNARY.exp(f, x)),
      ),
    ),
  );
  // with dropout, dV takes the dropped probabilities: made in the dP buffer, before dP is
  const droppedProbabilities = rowsOfBlock(
    for_(j, c(0), nk.get(), 1, f32.store(word(drow, j.get()), f32.mul(f32.load(word(row, j.get())), dropScale(r, j)))),
  );
  // dS = P (dP * keep - delta) * scale, in place of dP
  const scoreGrads = rowsOfBlock(
    seq(
      deltaRow.set(f32.load(word(delta, i32.add(i0.get(), r.get())))),
      if_(
        p.DROPOUT.get(),
        for_(
          j,
          c(0),
          nk.get(),
          1,
          f32.store(word(drow, j.get()), f32.mul(f32.load(word(drow, j.get())), dropScale(r, j))),
        ),
      ),
      overRow(
        f,
        nk,
        (at) =>
          v128.store(
            addr(drow, at),
            f32x4.mul(
              f32x4.mul(v128.load(addr(row, at)), f32x4.sub(v128.load(addr(drow, at)), splat(deltaRow))),
              splat(p.SCALE),
            ),
          ),
        (at) =>
          f32.store(
            addr(drow, at),
            f32.mul(f32.mul(f32.load(addr(row, at)), f32.sub(f32.load(addr(drow, at)), deltaRow.get())), p.SCALE.get()),
          ),
      ),
    ),
  );
  const [qBlock, gBlock] = [rowOf(qh, i0.get(), p.QR), rowOf(gh, i0.get(), p.GR)];
  const [kBlock, vBlock] = [rowOf(k, j0.get(), p.KR), rowOf(v, j0.get(), p.VR)];
  const [dkBlock, dvBlock] = [rowOf(dk, j0.get(), p.DKR), rowOf(dv, j0.get(), p.DKR)];
  const block = seq(
    rows.set(i32.minU(p.MQ.get(), i32.sub(p.T.get(), i0.get()))),
    // (causal) a block of queries that sees none of these keys is skipped
    if_(
      i32.or(i32.eqz(p.CAUSAL.get()), i32.gtU(i32.add(p.SHIFT.get(), i32.add(i0.get(), rows.get())), j0.get())),
      seq(
        product(gemm, gs, {
          M: rows.get(),
          N: nk.get(),
          K: p.D.get(),
          a: [qBlock, p.QR.get(), p.QC.get()],
          b: [kBlock, p.KC.get(), p.KR.get()],
          c: [P.get(), nk.get()],
          add: false,
        }),
        probabilities,
        if_(p.DROPOUT.get(), droppedProbabilities),
        probs.set(choose('i32', p.DROPOUT.get(), dP.get(), P.get())),
        // dV_j += P^T dO: P read transposed (row stride 1, column stride nk)
        product(gemm, gs, {
          M: nk.get(),
          N: p.D.get(),
          K: rows.get(),
          a: [probs.get(), c(1), nk.get()],
          b: [gBlock, p.GR.get(), c(1)],
          c: [dvBlock, p.DKR.get()],
          add: true,
        }),
        // dP = dO V_j^T
        product(gemm, gs, {
          M: rows.get(),
          N: nk.get(),
          K: p.D.get(),
          a: [gBlock, p.GR.get(), c(1)],
          b: [vBlock, p.VC.get(), p.VR.get()],
          c: [dP.get(), nk.get()],
          add: false,
        }),
        scoreGrads,
        // dQ += dS K_j;  dK_j += dS^T Q
        product(gemm, gs, {
          M: rows.get(),
          N: p.D.get(),
          K: nk.get(),
          a: [dP.get(), nk.get(), c(1)],
          b: [kBlock, p.KR.get(), p.KC.get()],
          c: [rowOf(dqh, i0.get(), p.DQR), p.DQR.get()],
          add: true,
        }),
        product(gemm, gs, {
          M: nk.get(),
          N: p.D.get(),
          K: rows.get(),
          a: [dP.get(), c(1), nk.get()],
          b: [qBlock, p.QR.get(), p.QC.get()],
          c: [dkBlock, p.DKR.get()],
          add: true,
        }),
      ),
    ),
  );
  f.body = seq(
    load,
    P.set(i32.add(p.SCRATCH.get(), i32.mul(thread.get(), p.SCRATCH_BYTES.get()))),
    dP.set(rowOf(P, p.MQ.get(), p.NK)),
    delta.set(rowOf(dP, p.MQ.get(), p.NK)),
    gs.set(i32.add(p.GEMM_SCRATCH.get(), i32.mul(thread.get(), c(GEMM_SCRATCH)))),
    for_(
      h,
      c(0),
      p.GROUP.get(),
      1,
      seq(
        qh.set(rowOf(q, h.get(), p.QH)),
        oh.set(rowOf(o, h.get(), p.OH)),
        gh.set(rowOf(g, h.get(), p.GH)),
        lh.set(rowOf(lse, h.get(), p.LH)),
        mh.set(rowOf(mask, h.get(), p.MH)),
        dqh.set(rowOf(dq, h.get(), p.DQH)),
        nb.set(i32.add(nBase.get(), i32.mul(h.get(), p.NH.get()))),
        deltas,
        for_(
          j0,
          c(0),
          p.TK.get(),
          p.NK.get(),
          seq(
            nk.set(i32.minU(p.NK.get(), i32.sub(p.TK.get(), j0.get()))),
            for_(i0, c(0), p.T.get(), p.MQ.get(), block),
          ),
        ),
      ),
    ),
  );
}
