// The training-curve plot: decoded back with pngjs and checked pixel by pixel for size,
// background, each curve's colour, unbroken lines, odd inputs and repeatability.

import { PNG } from 'pngjs';
import { describe, expect, it } from 'vitest';
import { PLOT_COLORS, plotTrainingCurves, type TrainingCurves } from '../plot.ts';

type Color = readonly [number, number, number];

/** The decoded image of some curves. */
function render(curves: TrainingCurves, opts?: { width?: number; height?: number }): PNG {
  return PNG.sync.read(Buffer.from(plotTrainingCurves(curves, opts)));
}

/** The colour of one pixel. */
function pixel(png: PNG, x: number, y: number): number[] {
  const i = (y * png.width + x) * 4;
  return [png.data[i], png.data[i + 1], png.data[i + 2]];
}

/** How many pixels have exactly this colour, in rows from `fromRow` down. */
function count(png: PNG, color: Color, fromRow = 0): number {
  let n = 0;
  for (let y = fromRow; y < png.height; y++) {
    for (let x = 0; x < png.width; x++) {
      const i = (y * png.width + x) * 4;
      if (png.data[i] === color[0] && png.data[i + 1] === color[1] && png.data[i + 2] === color[2]) n++;
    }
  }
  return n;
}

/** A made-up run: falling noisy loss, evaluations every 50 steps with rising accuracy. */
function exampleRun(): TrainingCurves {
  const curves: TrainingCurves = { train: [], val: [], accuracy: [], title: 'nanovlm-ts test run' };
  for (let step = 0; step <= 500; step++) {
    const loss = 0.5 + 3 * Math.exp(-step / 100);
    curves.train.push([step, loss * (1 + 0.2 * Math.sin(step * 1.7))]);
    if (step % 50 === 0) {
      curves.val.push([step, loss * 1.1]);
      curves.accuracy.push([step, 0.9 * (1 - Math.exp(-step / 150))]);
    }
  }
  return curves;
}

const EMPTY: TrainingCurves = { train: [], val: [], accuracy: [] };

describe('plotTrainingCurves', () => {
  it('is a white 800 x 500 PNG by default, and any size asked for', () => {
    const png = render(exampleRun());
    expect([png.width, png.height]).toEqual([800, 500]);
    for (const [x, y] of [[0, 0], [799, 0], [0, 499], [799, 499]]) expect(pixel(png, x, y)).toEqual([255, 255, 255]);
    const big = render(exampleRun(), { width: 1200, height: 900 });
    expect([big.width, big.height]).toEqual([1200, 900]);
    expect(pixel(big, 0, 0)).toEqual([255, 255, 255]);
  });

  it('draws every curve in its colour, beyond the legend an empty plot has too', () => {
    const png = render(exampleRun());
    const empty = render(EMPTY);
    for (const name of ['trainRaw', 'train', 'val', 'accuracy'] as const) {
      expect(count(empty, PLOT_COLORS[name])).toBeGreaterThan(0); // the legend's sample
      expect(count(png, PLOT_COLORS[name]), name).toBeGreaterThan(count(empty, PLOT_COLORS[name]) + 200);
    }
  });

  it('draws lines without gaps', () => {
    // Two points are not smoothed, so the smoothed curve is one straight line across the plot;
    // the val point stretches the loss axis to 0..4, keeping that line well below the legend.
    const png = render({ train: [[0, 2], [100, 1]], val: [[0, 4]], accuracy: [] });
    const columns: number[] = [];
    for (let x = 0; x < png.width; x++) {
      for (let y = 60; y < png.height; y++) {
        if (pixel(png, x, y).join() === PLOT_COLORS.train.join()) {
          columns.push(x);
          break;
        }
      }
    }
    expect(columns.length).toBeGreaterThan(600);
    expect(columns[columns.length - 1] - columns[0] + 1).toBe(columns.length); // one unbroken run
  });

  it('draws just the axes for empty series, and skips NaN and Infinity', () => {
    const empty = plotTrainingCurves(EMPTY);
    const png = PNG.sync.read(Buffer.from(empty));
    expect([png.width, png.height]).toEqual([800, 500]);
    expect(count(png, PLOT_COLORS.axis)).toBeGreaterThan(1000);
    const junk: TrainingCurves = {
      train: [[0, NaN], [NaN, 1], [2, Infinity]],
      val: [[1, -Infinity]],
      accuracy: [[Infinity, 0.5]],
    };
    expect(Buffer.from(plotTrainingCurves(junk)).equals(Buffer.from(empty))).toBe(true);
    // NaN among good points only drops that point.
    const holes = exampleRun();
    holes.train[100][1] = NaN;
    holes.val[3][1] = Infinity;
    expect(count(render(holes), PLOT_COLORS.val)).toBeGreaterThan(count(render(EMPTY), PLOT_COLORS.val) + 200);
  });

  it('plots a single point and all-equal values', () => {
    const single = render({ train: [[0, 2.5]], val: [[0, 2.6]], accuracy: [[0, 0.2]], title: 'one point' });
    const empty = render(EMPTY);
    for (const name of ['val', 'accuracy'] as const) {
      expect(count(single, PLOT_COLORS[name])).toBeGreaterThan(count(empty, PLOT_COLORS[name]));
    }
    const flat = render({ train: [[0, 1], [1, 1], [2, 1]], val: [[2, 1]], accuracy: [[0, 1], [2, 1]] });
    expect(count(flat, PLOT_COLORS.train)).toBeGreaterThan(count(empty, PLOT_COLORS.train) + 200);
    const zeros = render({ train: [[5, 0], [5, 0]], val: [[5, 0]], accuracy: [[5, 0]] });
    expect(count(zeros, PLOT_COLORS.val)).toBeGreaterThan(count(empty, PLOT_COLORS.val));
  });

  it('copes with millions of steps and extreme losses', () => {
    const train: [number, number][] = [];
    for (let step = 0; step <= 2_000_000; step += 100) train.push([step, 1 + 1 / (1 + step / 1e4)]);
    const png = render({ train, val: [[2_000_000, 1.1]], accuracy: [[1_000_000, 0.5]] });
    expect(count(png, PLOT_COLORS.train)).toBeGreaterThan(count(render(EMPTY), PLOT_COLORS.train) + 200);
    expect(() => plotTrainingCurves({ train: [[0, 1e30], [1, -1e30]], val: [], accuracy: [] })).not.toThrow();
    expect(() => plotTrainingCurves({ train: [[0, 1e-12], [1, 2e-12]], val: [], accuracy: [] })).not.toThrow();
    expect(() => plotTrainingCurves({ train: [[0, 1e308], [1, -1e308]], val: [[1e300, 1]], accuracy: [[0, 1e307], [1, -5]] })).not.toThrow();
    expect(() => plotTrainingCurves({ train: [[1e20, 1], [1e20 + 1e5, 2]], val: [], accuracy: [] })).not.toThrow();
  });

  it('fits a small image and a long title', () => {
    const curves = { ...exampleRun(), title: 'a very long title that could never fit in a small image at all' };
    const png = render(curves, { width: 320, height: 200 });
    expect([png.width, png.height]).toEqual([320, 200]);
    expect(() => plotTrainingCurves(curves, { width: 100, height: 100 })).toThrow(/at least/);
  });

  it('is deterministic and leaves its input alone', () => {
    const curves = exampleRun();
    curves.train.reverse(); // out of order on purpose: the plot sorts a copy
    const before = JSON.stringify(curves);
    const a = plotTrainingCurves(curves);
    const b = plotTrainingCurves(exampleRun());
    expect(JSON.stringify(curves)).toBe(before);
    expect(Buffer.from(a).equals(Buffer.from(b))).toBe(true);
    expect(Buffer.from(a).equals(Buffer.from(plotTrainingCurves(curves)))).toBe(true);
  });
});
