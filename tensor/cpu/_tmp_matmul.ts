type Arr = Float32Array | Float64Array;
interface G<T extends Arr> { batch: number; M: number; N: number; K: number; a: T; aOffsets: ArrayLike<number>; aRowStride: number; aColStride: number; b: T; bOffsets: ArrayLike<number>; bRowStride: number; bColStride: number; c: T }
function mm<T extends Arr>(g: G<T>): void {
  for (let p = 0; p < g.batch; p++) for (let i = 0; i < g.M; i++) for (let j = 0; j < g.N; j++) {
    let s = 0;
    for (let k = 0; k < g.K; k++) s += g.a[g.aOffsets[p] + i * g.aRowStride + k * g.aColStride] * g.b[g.bOffsets[p] + k * g.bRowStride + j * g.bColStride];
    g.c[(p * g.M + i) * g.N + j] = s;
  }
}
export const matmulF32 = mm<Float32Array>;
export const matmulF64 = mm<Float64Array>;
