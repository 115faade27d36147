// Indexing kernels: embedding lookup (gather) and its adjoint (scatter-add),
// stable per-row sort.
//
// Scatter-add without float atomics, deterministically: sort the ids
// (stable, so equal ids keep their original order), then give each output
// element (row r, column d) one thread that binary-searches the run of
// positions holding id r and sums their source rows in that order. The
// additions happen in exactly the CPU's order, so the gradient of an
// embedding is bit-identical to the CPU's, and no two threads write the
// same element.
//
// The sort is rank-based: each element counts how many elements of its row
// come before it (smaller, or equal with a smaller index) and writes itself
// to that position. O(n^2) per row, but fully parallel, stable by
// construction and free of data-dependent control flow; the row is streamed
// through workgroup memory in tiles so each value is read from global memory
// once per workgroup rather than once per thread.

import type { DType } from '../../dtype.ts';
import { type Kernel, binding, memo, prelude, stridedOffsets, wgslType } from './common.ts';
import { EW_WORKGROUP, perElement } from './elementwise.ts';

/** Elements per sort tile (and threads per sort workgroup). */
export const SORT_TILE = 64;

/**
 * out[i, d] = table[ids[i], d]; an id outside [0, V) reads zeros (a GPU cannot
 * throw). Params: [n = N * D, D, V, tableOffset, tableRowStride, tableColStride, idsOffset, idsStride].
 */
export const gatherKernel = memo((dtype: DType): Kernel => {
  const t = wgslType(dtype);
  const code = /* wgsl */ `${prelude}
${binding(1, 'out', t, 'read_write')}
${binding(2, 'table', t, 'read')}
${binding(3, 'ids', 'i32', 'read')}
${perElement(`
  let D = p(1u);
  let row = i / D;
  let id = ids[p(6u) + row * p(7u)];
  var v = ${t}(0);
  if (id >= 0 && u32(id) < p(2u)) { v = table[p(3u) + u32(id) * p(4u) + (i % D) * p(5u)]; }
  out[i] = v;`)}`;
  return { key: `gather:${dtype}`, code, workgroupSize: EW_WORKGROUP, storage: ['read_write', 'read', 'read'] };
});

/**
 * The summing half of scatter-add. sorted/perm are the ids sorted stably and
 * their original positions. out[r, d] = sum of src[perm[k], d] over the run
 * of k with sorted[k] == r. Params: [rows * D, D, N, srcOffset, srcRowStride, srcColStride].
 */
export const scatterSumKernel = memo((dtype: DType): Kernel => {
  const t = wgslType(dtype);
  const code = /* wgsl */ `${prelude}
${binding(1, 'out', t, 'read_write')}
${binding(2, 'sorted', 'i32', 'read')}
${binding(3, 'perm', 'i32', 'read')}
${binding(4, 'src', t, 'read')}
// first k with sorted[k] >= r
fn lowerBound(r: i32) -> u32 {
  var lo = 0u;
  var hi = p(2u);
  while (lo < hi) {
    let mid = (lo + hi) / 2u;
    if (sorted[mid] < r) { lo = mid + 1u; } else { hi = mid; }
  }
  return lo;
}
${perElement(`
  let D = p(1u);
  let r = i32(i / D);
  let col = (i % D) * p(5u);
  var acc = ${t}(0);
  let end = lowerBound(r + 1);
  for (var k = lowerBound(r); k < end; k++) { acc += src[p(3u) + u32(perm[k]) * p(4u) + col]; }
  out[i] = acc;`)}`;
  return {
    key: `scatterSum:${dtype}`,
    code,
    workgroupSize: EW_WORKGROUP,
    storage: ['read_write', 'read', 'read', 'read'],
  };
});

/**
 * Stable sort of each row (NaN sorts as the largest value, like the CPU).
 * Params: [rows, cols, colStride, R outer dims: shape[0..R), offset, strides[0..R)].
 * One workgroup per SORT_TILE elements of a row.
 */
export const sortKernel = memo((dtype: DType, rank: number, descending: boolean): Kernel => {
  const t = wgslType(dtype);
  const key = t === 'f32' ? 'select(v, inf(), isnan_(v))' : 'v';
  const before = descending ? 'kj > km' : 'kj < km';
  const code = /* wgsl */ `${prelude}
${binding(1, 'values', t, 'read_write')}
${binding(2, 'indices', 'i32', 'read_write')}
${binding(3, 'x', t, 'read')}
var<workgroup> tile: array<${t}, ${SORT_TILE}>;
fn sortKey(v: ${t}) -> ${t} { return ${key}; }
@compute @workgroup_size(${SORT_TILE})
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let cols = p(1u);
  let cs = p(2u);
  let tilesPerRow = (cols + ${SORT_TILE - 1}u) / ${SORT_TILE}u;
  let g = groupIndex(wid, nwg);
  let row = g / tilesPerRow;
  if (row >= p(0u)) { return; }
  ${stridedOffsets('row', rank, 3, [3 + rank])}
  let c = (g % tilesPerRow) * ${SORT_TILE}u + lid;
  var mine = ${t}(0);
  if (c < cols) { mine = x[o0 + c * cs]; }
  let km = sortKey(mine);
  var rank = 0u;
  for (var t0 = 0u; t0 < cols; t0 += ${SORT_TILE}u) {
    if (t0 + lid < cols) { tile[lid] = sortKey(x[o0 + (t0 + lid) * cs]); }
    workgroupBarrier();
    let count = min(${SORT_TILE}u, cols - t0);
    for (var jj = 0u; jj < count; jj++) {
      let kj = tile[jj];
      if (${before} || (kj == km && t0 + jj < c)) { rank++; }
    }
    workgroupBarrier();
  }
  if (c < cols) {
    values[row * cols + rank] = mine;
    indices[row * cols + rank] = i32(c);
  }
}`;
  return {
    key: `sort:${dtype}:${rank}:${descending ? 'desc' : 'asc'}`,
    code,
    workgroupSize: SORT_TILE,
    storage: ['read_write', 'read_write', 'read'],
  };
});
