// The pure shape helpers, without any backend.

import { describe, expect, it } from 'vitest';
import {
  broadcastReduceDims,
  broadcastShapes,
  broadcastStrides,
  contiguousStrides,
  inferReshape,
  isContiguous,
  normalizeDim,
  viewStrides,
} from '../tensor/shape.ts';

describe('shape helpers', () => {
  it('computes row-major strides and contiguity', () => {
    expect(contiguousStrides([2, 3, 4])).toEqual([12, 4, 1]);
    expect(contiguousStrides([])).toEqual([]);
    expect(isContiguous([2, 3], [3, 1])).toBe(true);
    expect(isContiguous([3, 2], [1, 3])).toBe(false);
    expect(isContiguous([2, 1, 3], [3, 99, 1])).toBe(true); // size-1 dims do not matter
  });
  it('broadcasts shapes and strides', () => {
    expect(broadcastShapes('add', [3, 1], [2])).toEqual([3, 2]);
    expect(broadcastShapes('add', [], [2, 2])).toEqual([2, 2]);
    expect(() => broadcastShapes('mul', [2, 3], [4, 3])).toThrow(
      'mul: shapes [2,3] and [4,3] cannot be broadcast together',
    );
    expect(broadcastStrides([3, 1], [1, 1], [2, 3, 4])).toEqual([0, 1, 0]);
    expect(broadcastReduceDims([3, 1], [2, 3, 4])).toEqual([0, 2]);
  });
  it('normalises dims and infers -1', () => {
    expect(normalizeDim(-1, 3, 'sum')).toBe(2);
    expect(() => normalizeDim(3, 3, 'sum')).toThrow('sum: dim 3 is out of range for a tensor of rank 3');
    expect(inferReshape([2, 6], [3, -1])).toEqual([3, 4]);
    expect(() => inferReshape([2, 6], [5, -1])).toThrow(/reshape/);
  });
  it('decides when a reshape can be a view (PyTorch rule)', () => {
    expect(viewStrides([2, 3, 4], [12, 4, 1], [6, 4])).toEqual([4, 1]);
    expect(viewStrides([2, 3, 4], [12, 4, 1], [2, 12])).toEqual([12, 1]);
    // a transposed [3, 2] (strides [1, 3]) cannot be flattened without a copy
    expect(viewStrides([3, 2], [1, 3], [6])).toBeNull();
    // but splitting or adding size-1 dims works on any layout
    expect(viewStrides([4, 3], [1, 4], [2, 2, 3])).toEqual([2, 1, 4]);
    const s = viewStrides([4, 3], [1, 4], [4, 1, 3])!; // the size-1 dim's stride is arbitrary
    expect([s[0], s[2]]).toEqual([1, 4]);
    // a sliced row-major block: rows 12 apart, only the inner dim merges
    expect(viewStrides([2, 2, 3], [12, 3, 1], [2, 6])).toEqual([12, 1]);
    expect(viewStrides([2, 2, 3], [12, 3, 1], [12])).toBeNull();
  });
});
