// The training-curve plot: an SVG document, read back as text. Checks that every curve is drawn
// in its colour, that the loss axis is logarithmic and follows the data, that the smoothed curve
// does not lag, that odd inputs are skipped rather than drawn, and repeatability.

import { describe, expect, it } from 'vitest';
import { PLOT_COLORS, plotTrainingCurves, smooth, type TrainingCurves } from '../plot.ts';

/** Each polyline's class, colour and points. */
function polylines(svg: string): Record<string, { color: string; points: [number, number][] }> {
  const lines: Record<string, { color: string; points: [number, number][] }> = {};
  for (const m of svg.matchAll(/<polyline class="([\w-]+)" points="([^"]*)" fill="none" stroke="([^"]+)"/g)) {
    const points = m[2] ? m[2].split(' ').map((p) => p.split(',').map(Number) as [number, number]) : [];
    lines[m[1]] = { color: m[3], points };
  }
  return lines;
}

/** The numbers written as tick labels at the left of the panels. */
function yLabels(svg: string): number[] {
  return [...svg.matchAll(/<text x="\d+" y="[\d.]+" text-anchor="end">([^<]+)<\/text>/g)].map((m) => Number(m[1]));
}

/** Whether every element is closed, in order (a small XML well-formedness check). */
function wellFormed(svg: string): boolean {
  const stack: string[] = [];
  for (const [, close, name, selfClosing] of svg.matchAll(/<(\/?)([a-zA-Z]+)[^>]*?(\/?)>/g)) {
    if (selfClosing) continue;
    if (!close) stack.push(name);
    else if (stack.pop() !== name) return false;
  }
  return stack.length === 0;
}

/** A made-up run: falling noisy loss, evaluations every 50 steps with rising accuracy. */
function exampleRun(): TrainingCurves {
  const curves: TrainingCurves = { train: [], val: [], accuracy: [], title: 'nanovlm-ts test run' };
  for (let step = 1; step <= 500; step++) {
    const loss = 0.05 + 3 * Math.exp(-step / 100);
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
  it('is an SVG document of the size asked for, every curve in its colour', () => {
    const svg = plotTrainingCurves(exampleRun());
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg" width="800" height="500"')).toBe(true);
    expect(wellFormed(svg)).toBe(true);
    const lines = polylines(svg);
    expect(lines['train-raw']).toEqual({ color: PLOT_COLORS.trainRaw, points: expect.any(Array) });
    expect(lines.train.color).toBe(PLOT_COLORS.train);
    expect(lines.val.color).toBe(PLOT_COLORS.val);
    expect(lines.accuracy.color).toBe(PLOT_COLORS.accuracy);
    const counts = [lines['train-raw'], lines.train, lines.val, lines.accuracy].map((l) => l.points.length);
    expect(counts).toEqual([500, 500, 10, 10]);
    expect(svg).toContain('nanovlm-ts test run');
    expect(svg.match(/<circle /g)).toHaveLength(20); // a dot at each evaluation, on both panels
    expect(plotTrainingCurves(exampleRun(), { width: 1200, height: 900 })).toContain('width="1200" height="900"');
  });

  it('has a logarithmic loss axis that spans the data', () => {
    const svg = plotTrainingCurves({
      train: [
        [0, 1],
        [1, 0.1],
        [2, 0.01],
      ],
      val: [],
      accuracy: [],
    });
    const ys = polylines(svg)['train-raw'].points.map((p) => p[1]);
    expect(ys[1] - ys[0]).toBeGreaterThan(50); // a lower loss is drawn lower
    expect(ys[2] - ys[1]).toBeCloseTo(ys[1] - ys[0], 0); // each tenfold drop is the same distance
    expect(yLabels(svg)).toEqual(expect.arrayContaining([0.01, 0.1, 1]));
    // a loss between 0.05 and 0.06 gets ticks in that range, not 0 to 5
    const narrow = plotTrainingCurves({
      train: [
        [0, 0.06],
        [1, 0.055],
        [2, 0.05],
      ],
      val: [],
      accuracy: [],
    });
    const lossTicks = yLabels(narrow).slice(0, -5); // the last five are the accuracy panel's
    expect(lossTicks.length).toBeGreaterThanOrEqual(3);
    for (const v of lossTicks) expect(v > 0.045 && v < 0.065, String(v)).toBe(true);
  });

  it('smooths without lag: a straight line stays where it is, a step is centred', () => {
    const line = Array.from({ length: 200 }, (_, i) => 3 - i / 100);
    smooth(line, 10).forEach((v, i) => expect(v).toBeCloseTo(line[i], 10)); // the ends too: no lag
    const step = [...Array(50).fill(1), ...Array(50).fill(4)];
    const s = smooth(step, 10);
    for (let i = 0; i < 50; i++) expect(s[i] + s[99 - i]).toBeCloseTo(5, 10); // symmetric about the step
    expect(s[49]).toBeLessThan(2.5);
    expect(s[50]).toBeGreaterThan(2.5);
    // the smoothed curve of a noisy run runs through the noiseless one (an exponential average
    // with beta 0.9 would trail it by about 10 steps: up to 10% too high here)
    const run = exampleRun();
    const smoothed = smooth(
      run.train.map((p) => p[1]),
      5,
    );
    for (const i of [100, 200, 300, 400]) {
      const clean = 0.05 + 3 * Math.exp(-run.train[i][0] / 100);
      expect(Math.abs(smoothed[i] / clean - 1)).toBeLessThan(0.02);
    }
  });

  it('skips NaN, Infinity and losses a log axis cannot show, drawing just the axes for nothing', () => {
    const empty = plotTrainingCurves(EMPTY);
    expect(empty).toContain('no data yet');
    expect(wellFormed(empty)).toBe(true);
    const junk: TrainingCurves = {
      train: [
        [0, NaN],
        [NaN, 1],
        [2, Infinity],
        [3, 0],
        [4, -1],
      ],
      val: [[1, -Infinity]],
      accuracy: [[Infinity, 0.5]],
    };
    expect(plotTrainingCurves(junk)).toBe(empty);
    const holes = exampleRun();
    holes.train[100][1] = NaN;
    holes.val[3][1] = Infinity;
    const lines = polylines(plotTrainingCurves(holes));
    expect([lines.train.points.length, lines.val.points.length]).toEqual([499, 9]);
  });

  it('plots a single point, all-equal values, millions of steps and extreme values', () => {
    const cases: TrainingCurves[] = [
      { train: [[0, 2.5]], val: [[0, 2.6]], accuracy: [[0, 0.2]], title: 'one point' },
      {
        train: [
          [0, 1],
          [1, 1],
          [2, 1],
        ],
        val: [[2, 1]],
        accuracy: [
          [0, 1],
          [2, 1],
        ],
      },
      { train: Array.from({ length: 20_001 }, (_, i) => [i * 100, 1 + 1 / (1 + i / 100)]), val: [], accuracy: [] },
      {
        train: [
          [0, 1e30],
          [1, 1e-30],
        ],
        val: [],
        accuracy: [],
      },
      {
        train: [
          [0, 1e-12],
          [1, 2e-12],
        ],
        val: [],
        accuracy: [],
      },
      {
        train: [
          [0, 1e308],
          [1, 5e-324],
        ],
        val: [[1e300, 1]],
        accuracy: [
          [0, 1e307],
          [1, -5],
        ],
      },
      {
        train: [
          [1e20, 1],
          [1e20 + 1e5, 2],
        ],
        val: [],
        accuracy: [],
      },
    ];
    for (const curves of cases) {
      const svg = plotTrainingCurves(curves);
      expect(wellFormed(svg)).toBe(true);
      expect(svg).not.toMatch(/NaN|Infinity/);
      expect(polylines(svg).train.points.length).toBe(curves.train.length);
    }
  });

  it('escapes the title, fits a small image and refuses a tiny one', () => {
    const svg = plotTrainingCurves({ ...EMPTY, title: 'a <b> & c' }, { width: 320, height: 200 });
    expect(svg).toContain('a &lt;b&gt; &amp; c');
    expect(wellFormed(svg)).toBe(true);
    expect(() => plotTrainingCurves(EMPTY, { width: 100, height: 100 })).toThrow(/at least 320 x 200/);
  });

  it('is deterministic and leaves its input alone', () => {
    const curves = exampleRun();
    curves.train.reverse(); // out of order on purpose: the plot sorts a copy
    const before = JSON.stringify(curves);
    const a = plotTrainingCurves(curves);
    expect(JSON.stringify(curves)).toBe(before);
    expect(a).toBe(plotTrainingCurves(exampleRun()));
  });
});
