// Kernels that work a row at a time on contiguous float32 rows: sums,
// softmax (and the exp sums behind log-softmax and cross-entropy), LayerNorm
// and RMSNorm, and the two norms' backward passes. Each row is read as vectors of four; the
// last 1 to 3 elements of a row are done one at a time. Statistics (max, sum,
// mean, variance) are kept in four lanes and added up across lanes at the end.

import { type Code, type Func, type Local, type ModuleBuilder, for_, f32, f32x4, i32, seq, v128 } from './emit.ts';
import { UNARY } from './elementwise.ts';

const c = (n: number) => i32.const(n);

/** The sum of a vector's four lanes, as an f32. */
export function lanesSum(v: Local): Code {
  return f32.add(
    f32.add(f32x4.extractLane(v.get(), 0), f32x4.extractLane(v.get(), 1)),
    f32.add(f32x4.extractLane(v.get(), 2), f32x4.extractLane(v.get(), 3)),
  );
}

/** The largest of a vector's four lanes (NaN if any is NaN). */
export function lanesMax(v: Local): Code {
  return f32.max(
    f32.max(f32x4.extractLane(v.get(), 0), f32x4.extractLane(v.get(), 1)),
    f32.max(f32x4.extractLane(v.get(), 2), f32x4.extractLane(v.get(), 3)),
  );
}

/**
 * A loop over one row of `n` floats: `vector(at)` for each group of four (at
 * is the byte offset in the row), then `scalar(at)` for the 1 to 3 left over.
 */
export function overRow(f: Func, n: Local, vector: (at: Local) => Code, scalar: (at: Local) => Code): Code {
  const [k, at] = [f.local('i32'), f.local('i32')];
  return seq(
    for_(k, c(0), i32.and(n.get(), c(~3)), 4, seq(at.set(i32.shl(k.get(), c(2))), vector(at))),
    for_(k, i32.and(n.get(), c(~3)), n.get(), 1, seq(at.set(i32.shl(k.get(), c(2))), scalar(at))),
  );
}

/** Emits sum_rows, sum_cols, softmax, exp_sums, layer_norm, rms_norm, layer_norm_bwd and rms_norm_bwd. */
export function emitRows(m: ModuleBuilder): void {
  // sum_rows(x, rows, cols, o): o[r] = sum of row r.
  {
    const f = m.func('sum_rows', ['i32', 'i32', 'i32', 'i32']);
    const [x, rows, cols, o] = f.params;
    const [r, acc, s] = [f.local('i32'), f.local('v128'), f.local('f32')];
    f.body = for_(
      r,
      c(0),
      rows.get(),
      1,
      seq(
        acc.set(f32x4.const(0)),
        s.set(f32.const(0)),
        overRow(
          f,
          cols,
          (at) => acc.set(f32x4.add(acc.get(), v128.load(i32.add(x.get(), at.get())))),
          (at) => s.set(f32.add(s.get(), f32.load(i32.add(x.get(), at.get())))),
        ),
        f32.store(i32.add(o.get(), i32.shl(r.get(), c(2))), f32.add(lanesSum(acc), s.get())),
        x.set(i32.add(x.get(), i32.shl(cols.get(), c(2)))),
      ),
    );
  }

  // sum_cols(x, outer, len, inner, o): o[p][q] = sum over l of x[p][l][q]. Row
  // l = 0 is copied, the others added in order: every pass streams through
  // memory and the output row stays in cache.
  {
    const f = m.func('sum_cols', ['i32', 'i32', 'i32', 'i32', 'i32']);
    const [x, outer, len, inner, o] = f.params;
    const [p, l] = [f.local('i32'), f.local('i32')];
    const addRow = (first: boolean) =>
      overRow(
        f,
        inner,
        (at) =>
          v128.store(
            i32.add(o.get(), at.get()),
            first
              ? v128.load(i32.add(x.get(), at.get()))
              : f32x4.add(v128.load(i32.add(o.get(), at.get())), v128.load(i32.add(x.get(), at.get()))),
          ),
        (at) =>
          f32.store(
            i32.add(o.get(), at.get()),
            first
              ? f32.load(i32.add(x.get(), at.get()))
              : f32.add(f32.load(i32.add(o.get(), at.get())), f32.load(i32.add(x.get(), at.get()))),
          ),
      );
    const nextRow = (ptr: Local) => ptr.set(i32.add(ptr.get(), i32.shl(inner.get(), c(2))));
    f.body = for_(
      p,
      c(0),
      outer.get(),
      1,
      seq(addRow(true), nextRow(x), for_(l, c(1), len.get(), 1, seq(addRow(false), nextRow(x))), nextRow(o)),
    );
  }

  // softmax(x, rows, cols, o): per row, the max, then e^(x - max) and its sum,
  // then a scaling by 1/sum. exp_sums(x, rows, cols, o) stops after the sum
  // and writes [max, sum] per row: log-softmax and cross-entropy finish with
  // log(sum) on the host (there is no log instruction, and it is one per row).
  for (const full of [true, false]) {
    const f = m.func(full ? 'softmax' : 'exp_sums', ['i32', 'i32', 'i32', 'i32']);
    const [x, rows, cols, o] = f.params;
    const [r, mx, sum, v, e] = [f.local('i32'), f.local('v128'), f.local('v128'), f.local('v128'), f.local('v128')];
    const [m1, s1, inv] = [f.local('f32'), f.local('f32'), f.local('f32')];
    const xAt = (at: Local) => i32.add(x.get(), at.get());
    const oAt = (at: Local) => i32.add(o.get(), at.get());
    const expOf = (value: Code) => seq(v.set(f32x4.sub(value, f32x4.splat(m1.get()))), UNARY.exp(f, v));
    f.body = for_(
      r,
      c(0),
      rows.get(),
      1,
      seq(
        mx.set(f32x4.const(-Infinity)),
        m1.set(f32.const(-Infinity)),
        overRow(
          f,
          cols,
          (at) => mx.set(f32x4.max(mx.get(), v128.load(xAt(at)))),
          (at) => m1.set(f32.max(m1.get(), f32.load(xAt(at)))),
        ),
        m1.set(f32.max(m1.get(), lanesMax(mx))),
        sum.set(f32x4.const(0)),
        s1.set(f32.const(0)),
        overRow(
          f,
          cols,
          (at) =>
            seq(
              e.set(expOf(v128.load(xAt(at)))),
              full ? v128.store(oAt(at), e.get()) : [],
              sum.set(f32x4.add(sum.get(), e.get())),
            ),
          (at) =>
            seq(
              e.set(expOf(v128.load32Splat(xAt(at)))),
              full ? f32.store(oAt(at), f32x4.extractLane(e.get(), 0)) : [],
              s1.set(f32.add(s1.get(), f32x4.extractLane(e.get(), 0))),
            ),
        ),
        s1.set(f32.add(s1.get(), lanesSum(sum))),
        full
          ? seq(
              inv.set(f32.div(f32.const(1), s1.get())),
              overRow(
                f,
                cols,
                (at) => v128.store(oAt(at), f32x4.mul(v128.load(oAt(at)), f32x4.splat(inv.get()))),
                (at) => f32.store(oAt(at), f32.mul(f32.load(oAt(at)), inv.get())),
              ),
              o.set(i32.add(o.get(), i32.shl(cols.get(), c(2)))),
            )
          : seq(f32.store(o.get(), m1.get()), f32.store(o.get(), s1.get(), 4), o.set(i32.add(o.get(), c(8)))),
        x.set(i32.add(x.get(), i32.shl(cols.get(), c(2)))),
      ),
    );
  }

  // layer_norm(x, w, b, rows, cols, eps, o) and rms_norm(x, w, rows, cols, eps, o):
  // (x - mean) / sqrt(var + eps) * w + b, and x / sqrt(mean(x^2) + eps) * w.
  for (const layer of [true, false]) {
    const f = m.func(
      layer ? 'layer_norm' : 'rms_norm',
      layer ? ['i32', 'i32', 'i32', 'i32', 'i32', 'f32', 'i32'] : ['i32', 'i32', 'i32', 'i32', 'f32', 'i32'],
    );
    const [x, w] = f.params;
    const b = layer ? f.params[2] : null;
    const [rows, cols, eps, o] = f.params.slice(layer ? 3 : 2);
    const [r, mean, rstd] = [f.local('i32'), f.local('f32'), f.local('f32')];
    const at = (base: Local, k: Local) => i32.add(base.get(), k.get());
    const centred = (v: Code) => (layer ? f32x4.sub(v, f32x4.splat(mean.get())) : v);
    const centred1 = (v: Code) => (layer ? f32.sub(v, mean.get()) : v);
    const scaled = (k: Local) =>
      f32x4.mul(f32x4.mul(centred(v128.load(at(x, k))), f32x4.splat(rstd.get())), v128.load(at(w, k)));
    const scaled1 = (k: Local) => f32.mul(f32.mul(centred1(f32.load(at(x, k))), rstd.get()), f32.load(at(w, k)));
    f.body = for_(
      r,
      c(0),
      rows.get(),
      1,
      seq(
        rowStats(f, x, cols, eps, layer, mean, rstd),
        overRow(
          f,
          cols,
          (k) => v128.store(at(o, k), b ? f32x4.add(scaled(k), v128.load(at(b, k))) : scaled(k)),
          (k) => f32.store(at(o, k), b ? f32.add(scaled1(k), f32.load(at(b, k))) : scaled1(k)),
        ),
        x.set(i32.add(x.get(), i32.shl(cols.get(), c(2)))),
        o.set(i32.add(o.get(), i32.shl(cols.get(), c(2)))),
      ),
    );
  }

  emitNormBackward(m);
}

/**
 * Sets `mean` (LayerNorm only) and `rstd` = 1 / sqrt(var + eps) for the row of `cols` floats at x, in passes
 * as the TypeScript kernel computes them: the variance from x - mean, not from the mean of squares (RMSNorm:
 * the mean of squares, rstd = 1 / rms). The forward and the backward kernels share it, so both see the same
 * statistics.
 */
function rowStats(f: Func, x: Local, cols: Local, eps: Local, layer: boolean, mean: Local, rstd: Local): Code {
  const [acc, t, s, t1, n] = [f.local('v128'), f.local('v128'), f.local('f32'), f.local('f32'), f.local('f32')];
  const at = (k: Local) => i32.add(x.get(), k.get());
  // s = the sum over the row of g(x): four lanes, then the 1 to 3 left over
  const rowSum = (g: (v: Code) => Code, g1: (v: Code) => Code) =>
    seq(
      acc.set(f32x4.const(0)),
      s.set(f32.const(0)),
      overRow(
        f,
        cols,
        (k) => acc.set(f32x4.add(acc.get(), g(v128.load(at(k))))),
        (k) => s.set(f32.add(s.get(), g1(f32.load(at(k))))),
      ),
      s.set(f32.add(s.get(), lanesSum(acc))),
    );
  const centred = (v: Code) => (layer ? f32x4.sub(v, f32x4.splat(mean.get())) : v);
  const centred1 = (v: Code) => (layer ? f32.sub(v, mean.get()) : v);
  return seq(
    n.set(f32.fromI32U(cols.get())),
    layer
      ? seq(
          rowSum(
            (v) => v,
            (v) => v,
          ),
          mean.set(f32.div(s.get(), n.get())),
        )
      : [],
    rowSum(
      (v) => seq(t.set(centred(v)), f32x4.mul(t.get(), t.get())),
      (v) => seq(t1.set(centred1(v)), f32.mul(t1.get(), t1.get())),
    ),
    rstd.set(f32.div(f32.const(1), f32.sqrt(f32.add(f32.div(s.get(), n.get()), eps.get())))),
  );
}

/**
 * layer_norm_bwd(x, w, g, rows, cols, eps, dx, dw, db) and rms_norm_bwd(x, w, g, rows, cols, eps, dx, dw):
 * the gradients of the two norms given g, the gradient of their output. With xhat the normalised row and
 * gx = g * w, dx = rstd * (gx - mean(gx) - xhat * mean(gx * xhat)) (RMSNorm: no mean(gx) term, its rstd
 * is 1 / rms). dw (and db) are sums over the rows, *added* to what is there: each thread gets its own
 * zeroed partial sums, which the caller adds up. Four passes over a row for LayerNorm, three for RMSNorm:
 * the statistics as the forward pass computes them (rowStats), the two means, then the outputs.
 */
function emitNormBackward(m: ModuleBuilder): void {
  for (const layer of [true, false]) {
    const f = m.func(layer ? 'layer_norm_bwd' : 'rms_norm_bwd', [
      ...(['i32', 'i32', 'i32', 'i32', 'i32', 'f32', 'i32', 'i32'] as const),
      ...(layer ? (['i32'] as const) : []),
    ]);
    const [x, w, g, rows, cols, eps, dx, dw] = f.params;
    const db = layer ? f.params[8] : null;
    const [r, acc, acc2, t] = [f.local('i32'), f.local('v128'), f.local('v128'), f.local('v128')];
    const [s, s2, t1, n, mean, rstd, meanGx, meanGxXhat] = Array.from({ length: 8 }, () => f.local('f32'));
    const at = (base: Local, k: Local) => i32.add(base.get(), k.get());
    // x - mean (LayerNorm) or x (RMSNorm), and g * w: four lanes, and one
    const X = (k: Local) => (layer ? f32x4.sub(v128.load(at(x, k)), f32x4.splat(mean.get())) : v128.load(at(x, k)));
    const X1 = (k: Local) => (layer ? f32.sub(f32.load(at(x, k)), mean.get()) : f32.load(at(x, k)));
    const GW = (k: Local) => f32x4.mul(v128.load(at(g, k)), v128.load(at(w, k)));
    const GW1 = (k: Local) => f32.mul(f32.load(at(g, k)), f32.load(at(w, k)));
    /** s = the sum over the row of v, and s2 that of u when given. */
    const rowSums = (v: (k: Local) => Code, v1: (k: Local) => Code, u?: (k: Local) => Code, u1?: (k: Local) => Code) =>
      seq(
        acc.set(f32x4.const(0)),
        acc2.set(f32x4.const(0)),
        s.set(f32.const(0)),
        s2.set(f32.const(0)),
        overRow(
          f,
          cols,
          (k) => seq(acc.set(f32x4.add(acc.get(), v(k))), u ? acc2.set(f32x4.add(acc2.get(), u(k))) : []),
          (k) => seq(s.set(f32.add(s.get(), v1(k))), u1 ? s2.set(f32.add(s2.get(), u1(k))) : []),
        ),
        s.set(f32.add(s.get(), lanesSum(acc))),
        s2.set(f32.add(s2.get(), lanesSum(acc2))),
      );
    // the outputs at one group of four: t = xhat, then dx, dw += g xhat, db += g
    const outputs = (k: Local) =>
      seq(
        t.set(f32x4.mul(X(k), f32x4.splat(rstd.get()))),
        v128.store(
          at(dx, k),
          f32x4.mul(
            f32x4.splat(rstd.get()),
            f32x4.sub(
              layer ? f32x4.sub(GW(k), f32x4.splat(meanGx.get())) : GW(k),
              f32x4.mul(t.get(), f32x4.splat(meanGxXhat.get())),
            ),
          ),
        ),
        v128.store(at(dw, k), f32x4.add(v128.load(at(dw, k)), f32x4.mul(v128.load(at(g, k)), t.get()))),
        db ? v128.store(at(db, k), f32x4.add(v128.load(at(db, k)), v128.load(at(g, k)))) : [],
      );
    const outputs1 = (k: Local) =>
      seq(
        t1.set(f32.mul(X1(k), rstd.get())),
        f32.store(
          at(dx, k),
          f32.mul(
            rstd.get(),
            f32.sub(layer ? f32.sub(GW1(k), meanGx.get()) : GW1(k), f32.mul(t1.get(), meanGxXhat.get())),
          ),
        ),
        f32.store(at(dw, k), f32.add(f32.load(at(dw, k)), f32.mul(f32.load(at(g, k)), t1.get()))),
        db ? f32.store(at(db, k), f32.add(f32.load(at(db, k)), f32.load(at(g, k)))) : [],
      );
    const next = (ptr: Local) => ptr.set(i32.add(ptr.get(), i32.shl(cols.get(), c(2))));
    f.body = seq(
      n.set(f32.fromI32U(cols.get())),
      for_(
        r,
        c(0),
        rows.get(),
        1,
        seq(
          rowStats(f, x, cols, eps, layer, mean, rstd),
          // s = sum of gx, s2 = sum of gx (x - mean): mean(gx) and mean(gx xhat) = s2 rstd / n
          layer
            ? rowSums(
                GW,
                GW1,
                (k) => f32x4.mul(GW(k), X(k)),
                (k) => f32.mul(GW1(k), X1(k)),
              )
            : rowSums(
                (k) => f32x4.mul(GW(k), X(k)),
                (k) => f32.mul(GW1(k), X1(k)),
              ),
          layer
            ? seq(
                meanGx.set(f32.div(s.get(), n.get())),
                meanGxXhat.set(f32.div(f32.mul(s2.get(), rstd.get()), n.get())),
              )
            : meanGxXhat.set(f32.div(f32.mul(s.get(), rstd.get()), n.get())),
          overRow(f, cols, outputs, outputs1),
          next(x),
          next(g),
          next(dx),
        ),
      ),
    );
  }
}
