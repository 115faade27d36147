// Training curves as a PNG a person can open: train loss per step (faint raw curve with a
// smoothed one on top), validation loss and answer accuracy at evaluation steps. Everything
// is drawn by hand into a pixel buffer (lines, dots, a tiny bitmap font) and pngjs only
// encodes the result, so the plot needs no canvas library, no fonts and no browser.
//
// The accuracy gets its own panel below the loss panel, sharing the step axis: one y axis
// per panel means nobody has to work out which curve belongs to which scale.

import { PNG } from 'pngjs';

/** The series to plot; steps and losses as logged, accuracy as a fraction in [0, 1]. */
export interface TrainingCurves {
  train: [step: number, loss: number][];
  val: [step: number, loss: number][];
  accuracy: [step: number, accuracy: number][]; // accuracy in [0, 1]
  title?: string; // e.g. "nanovlm-ts default run, cpu"
}

/** The colours of the plot, exported so tests (and readers) can find each curve. */
export const PLOT_COLORS = {
  background: [255, 255, 255],
  text: [40, 40, 40],
  faintText: [150, 150, 150],
  axis: [90, 90, 90],
  grid: [232, 232, 232],
  trainRaw: [174, 199, 232], // a pale blue: the noisy per-step loss stays in the background
  train: [31, 119, 180],
  val: [255, 127, 14],
  accuracy: [44, 160, 44],
} as const;

type RGB = readonly [number, number, number];
type Point = [x: number, y: number];

// ---------------------------------------------------------------------------------------
// The font: 5 pixels wide, 7 rows from the top of a capital to the baseline. Letters that
// hang below the baseline (g j p q y) have 2 more rows. '#' is ink, '.' is paper.

const GLYPHS: Record<string, readonly string[]> = {
  a: ['.....', '.....', '.###.', '....#', '.####', '#...#', '.####'],
  b: ['#....', '#....', '#.##.', '##..#', '#...#', '#...#', '####.'],
  c: ['.....', '.....', '.###.', '#....', '#....', '#...#', '.###.'],
  d: ['....#', '....#', '.##.#', '#..##', '#...#', '#...#', '.####'],
  e: ['.....', '.....', '.###.', '#...#', '#####', '#....', '.###.'],
  f: ['..##.', '.#..#', '.#...', '###..', '.#...', '.#...', '.#...'],
  g: ['.....', '.....', '.####', '#...#', '#...#', '#...#', '.####', '....#', '.###.'],
  h: ['#....', '#....', '#.##.', '##..#', '#...#', '#...#', '#...#'],
  i: ['..#..', '.....', '.##..', '..#..', '..#..', '..#..', '.###.'],
  j: ['...#.', '.....', '..##.', '...#.', '...#.', '...#.', '...#.', '#..#.', '.##..'],
  k: ['#....', '#....', '#..#.', '#.#..', '##...', '#.#..', '#..#.'],
  l: ['.##..', '..#..', '..#..', '..#..', '..#..', '..#..', '.###.'],
  m: ['.....', '.....', '##.#.', '#.#.#', '#.#.#', '#.#.#', '#.#.#'],
  n: ['.....', '.....', '#.##.', '##..#', '#...#', '#...#', '#...#'],
  o: ['.....', '.....', '.###.', '#...#', '#...#', '#...#', '.###.'],
  p: ['.....', '.....', '####.', '#...#', '#...#', '#...#', '####.', '#....', '#....'],
  q: ['.....', '.....', '.####', '#...#', '#...#', '#...#', '.####', '....#', '....#'],
  r: ['.....', '.....', '#.##.', '##..#', '#....', '#....', '#....'],
  s: ['.....', '.....', '.####', '#....', '.###.', '....#', '####.'],
  t: ['.#...', '.#...', '###..', '.#...', '.#...', '.#..#', '..##.'],
  u: ['.....', '.....', '#...#', '#...#', '#...#', '#..##', '.##.#'],
  v: ['.....', '.....', '#...#', '#...#', '#...#', '.#.#.', '..#..'],
  w: ['.....', '.....', '#...#', '#...#', '#.#.#', '#.#.#', '.#.#.'],
  x: ['.....', '.....', '#...#', '.#.#.', '..#..', '.#.#.', '#...#'],
  y: ['.....', '.....', '#...#', '#...#', '#...#', '#...#', '.####', '....#', '.###.'],
  z: ['.....', '.....', '#####', '...#.', '..#..', '.#...', '#####'],
  A: ['.###.', '#...#', '#...#', '#...#', '#####', '#...#', '#...#'],
  B: ['####.', '#...#', '#...#', '####.', '#...#', '#...#', '####.'],
  C: ['.###.', '#...#', '#....', '#....', '#....', '#...#', '.###.'],
  D: ['###..', '#..#.', '#...#', '#...#', '#...#', '#..#.', '###..'],
  E: ['#####', '#....', '#....', '####.', '#....', '#....', '#####'],
  F: ['#####', '#....', '#....', '####.', '#....', '#....', '#....'],
  G: ['.###.', '#...#', '#....', '#.###', '#...#', '#...#', '.####'],
  H: ['#...#', '#...#', '#...#', '#####', '#...#', '#...#', '#...#'],
  I: ['.###.', '..#..', '..#..', '..#..', '..#..', '..#..', '.###.'],
  J: ['..###', '...#.', '...#.', '...#.', '...#.', '#..#.', '.##..'],
  K: ['#...#', '#..#.', '#.#..', '##...', '#.#..', '#..#.', '#...#'],
  L: ['#....', '#....', '#....', '#....', '#....', '#....', '#####'],
  M: ['#...#', '##.##', '#.#.#', '#.#.#', '#...#', '#...#', '#...#'],
  N: ['#...#', '#...#', '##..#', '#.#.#', '#..##', '#...#', '#...#'],
  O: ['.###.', '#...#', '#...#', '#...#', '#...#', '#...#', '.###.'],
  P: ['####.', '#...#', '#...#', '####.', '#....', '#....', '#....'],
  Q: ['.###.', '#...#', '#...#', '#...#', '#.#.#', '#..#.', '.##.#'],
  R: ['####.', '#...#', '#...#', '####.', '#.#..', '#..#.', '#...#'],
  S: ['.####', '#....', '#....', '.###.', '....#', '....#', '####.'],
  T: ['#####', '..#..', '..#..', '..#..', '..#..', '..#..', '..#..'],
  U: ['#...#', '#...#', '#...#', '#...#', '#...#', '#...#', '.###.'],
  V: ['#...#', '#...#', '#...#', '#...#', '#...#', '.#.#.', '..#..'],
  W: ['#...#', '#...#', '#...#', '#.#.#', '#.#.#', '#.#.#', '.#.#.'],
  X: ['#...#', '#...#', '.#.#.', '..#..', '.#.#.', '#...#', '#...#'],
  Y: ['#...#', '#...#', '.#.#.', '..#..', '..#..', '..#..', '..#..'],
  Z: ['#####', '....#', '...#.', '..#..', '.#...', '#....', '#####'],
  0: ['.###.', '#...#', '#..##', '#.#.#', '##..#', '#...#', '.###.'],
  1: ['..#..', '.##..', '..#..', '..#..', '..#..', '..#..', '.###.'],
  2: ['.###.', '#...#', '....#', '...#.', '..#..', '.#...', '#####'],
  3: ['#####', '...#.', '..#..', '...#.', '....#', '#...#', '.###.'],
  4: ['...#.', '..##.', '.#.#.', '#..#.', '#####', '...#.', '...#.'],
  5: ['#####', '#....', '####.', '....#', '....#', '#...#', '.###.'],
  6: ['..##.', '.#...', '#....', '####.', '#...#', '#...#', '.###.'],
  7: ['#####', '....#', '...#.', '..#..', '.#...', '.#...', '.#...'],
  8: ['.###.', '#...#', '#...#', '.###.', '#...#', '#...#', '.###.'],
  9: ['.###.', '#...#', '#...#', '.####', '....#', '...#.', '.##..'],
  ' ': ['.....', '.....', '.....', '.....', '.....', '.....', '.....'],
  '.': ['.....', '.....', '.....', '.....', '.....', '.##..', '.##..'],
  ',': ['.....', '.....', '.....', '.....', '.....', '.##..', '.##..', '..#..', '.#...'],
  ':': ['.....', '.##..', '.##..', '.....', '.##..', '.##..', '.....'],
  '-': ['.....', '.....', '.....', '.###.', '.....', '.....', '.....'],
  '+': ['.....', '..#..', '..#..', '#####', '..#..', '..#..', '.....'],
  '=': ['.....', '.....', '#####', '.....', '#####', '.....', '.....'],
  '%': ['##...', '##..#', '...#.', '..#..', '.#...', '#..##', '...##'],
  '/': ['.....', '....#', '...#.', '..#..', '.#...', '#....', '.....'],
  '(': ['...#.', '..#..', '.#...', '.#...', '.#...', '..#..', '...#.'],
  ')': ['.#...', '..#..', '...#.', '...#.', '...#.', '..#..', '.#...'],
  '[': ['.###.', '.#...', '.#...', '.#...', '.#...', '.#...', '.###.'],
  ']': ['.###.', '...#.', '...#.', '...#.', '...#.', '...#.', '.###.'],
  '_': ['.....', '.....', '.....', '.....', '.....', '.....', '#####'],
  "'": ['..#..', '..#..', '.#...', '.....', '.....', '.....', '.....'],
  '!': ['..#..', '..#..', '..#..', '..#..', '..#..', '.....', '..#..'],
  '?': ['.###.', '#...#', '....#', '...#.', '..#..', '.....', '..#..'],
};

const GLYPH_W = 5;
const GLYPH_H = 7; // cap height; descenders add 2 rows below
const ADVANCE = GLYPH_W + 1; // one column of paper between letters

/** Width in pixels of `text` in the built-in font at `scale`. */
function textWidth(text: string, scale = 1): number {
  return text.length === 0 ? 0 : (text.length * ADVANCE - 1) * scale;
}

// ---------------------------------------------------------------------------------------
// A pixel buffer with the few drawing operations a plot needs. Every write goes through
// set(), which drops pixels outside the clip rectangle: curves can then be drawn without
// caring whether a thick line pokes out of its panel.

interface Rect {
  left: number;
  top: number;
  right: number; // inclusive
  bottom: number; // inclusive
}

class Canvas {
  readonly png: PNG;
  clip: Rect;

  constructor(readonly width: number, readonly height: number) {
    this.png = new PNG({ width, height });
    this.png.data.fill(255); // white and opaque
    this.clip = { left: 0, top: 0, right: width - 1, bottom: height - 1 };
  }

  set(x: number, y: number, c: RGB): void {
    x = Math.round(x);
    y = Math.round(y);
    const { left, top, right, bottom } = this.clip;
    if (x < left || x > right || y < top || y > bottom) return;
    const i = (y * this.width + x) * 4;
    this.png.data[i] = c[0];
    this.png.data[i + 1] = c[1];
    this.png.data[i + 2] = c[2];
  }

  fillRect(x: number, y: number, w: number, h: number, c: RGB): void {
    for (let dy = 0; dy < h; dy++) for (let dx = 0; dx < w; dx++) this.set(x + dx, y + dy, c);
  }

  /** Bresenham's line, stamping a thickness x thickness square at each step. */
  line(x0: number, y0: number, x1: number, y1: number, c: RGB, thickness = 1): void {
    // Cut the line to the clip rectangle first: a wild value far off the axis must not
    // make Bresenham walk millions of pixels that would all be dropped anyway.
    const { left, top, right, bottom } = this.clip;
    const inside = clipSegment(x0, y0, x1, y1, { left: left - thickness, top: top - thickness, right: right + thickness, bottom: bottom + thickness });
    if (!inside) return;
    [x0, y0, x1, y1] = inside.map(Math.round);
    const dx = Math.abs(x1 - x0);
    const dy = -Math.abs(y1 - y0);
    const sx = x0 < x1 ? 1 : -1;
    const sy = y0 < y1 ? 1 : -1;
    const back = Math.floor((thickness - 1) / 2);
    let err = dx + dy;
    for (;;) {
      this.fillRect(x0 - back, y0 - back, thickness, thickness, c);
      if (x0 === x1 && y0 === y1) return;
      const e2 = 2 * err;
      if (e2 >= dy) {
        err += dy;
        x0 += sx;
      }
      if (e2 <= dx) {
        err += dx;
        y0 += sy;
      }
    }
  }

  /** A connected line through the points; a lone point still shows as a dot. */
  polyline(points: Point[], c: RGB, thickness: number): void {
    if (points.length === 1) this.fillRect(points[0][0] - 1, points[0][1] - 1, 3, 3, c);
    for (let i = 1; i < points.length; i++) {
      this.line(points[i - 1][0], points[i - 1][1], points[i][0], points[i][1], c, thickness);
    }
  }

  disc(cx: number, cy: number, r: number, c: RGB): void {
    cx = Math.round(cx);
    cy = Math.round(cy);
    for (let dy = -r; dy <= r; dy++) {
      for (let dx = -r; dx <= r; dx++) if (dx * dx + dy * dy <= r * r + r) this.set(cx + dx, cy + dy, c);
    }
  }

  /** Text with its top-left corner at (x, y); `up` turns it to read bottom to top from (x, y). */
  text(str: string, x: number, y: number, c: RGB, scale = 1, up = false): void {
    for (let k = 0; k < str.length; k++) {
      const glyph = GLYPHS[str[k]] ?? GLYPHS[str[k].toLowerCase()] ?? GLYPHS['?'];
      for (let row = 0; row < glyph.length; row++) {
        for (let col = 0; col < GLYPH_W; col++) {
          if (glyph[row][col] !== '#') continue;
          const along = (k * ADVANCE + col) * scale; // distance along the line of text
          const across = row * scale; // distance down from the top of the letters
          if (up) this.fillRect(x + across, y - along - scale + 1, scale, scale, c);
          else this.fillRect(x + along, y + across, scale, scale, c);
        }
      }
    }
  }
}

/** The part of a line segment inside a rectangle (Liang-Barsky), or null when none is. */
function clipSegment(x0: number, y0: number, x1: number, y1: number, r: Rect): number[] | null {
  const [dx, dy] = [x1 - x0, y1 - y0];
  let [t0, t1] = [0, 1]; // the visible stretch, as fractions of the way from (x0, y0) to (x1, y1)
  // Each edge as p * t <= q: the points at t satisfying all four are inside.
  for (const [p, q] of [[-dx, x0 - r.left], [dx, r.right - x0], [-dy, y0 - r.top], [dy, r.bottom - y0]]) {
    if (p === 0) {
      if (q < 0) return null; // parallel to this edge and outside it
    } else if (p < 0) {
      t0 = Math.max(t0, q / p);
    } else {
      t1 = Math.min(t1, q / p);
    }
  }
  return t0 <= t1 ? [x0 + t0 * dx, y0 + t0 * dy, x0 + t1 * dx, y0 + t1 * dy] : null;
}

// ---------------------------------------------------------------------------------------
// Axes: round limits and ticks at 1, 2 or 5 times a power of ten.

interface Axis {
  lo: number;
  hi: number;
  step: number;
  ticks: number[];
}

/** The smallest of 1, 2, 5, 10 x 10^k that is at least `raw`. */
function niceStep(raw: number): number {
  const power = 10 ** Math.floor(Math.log10(raw));
  const f = raw / power;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * power;
}

/** Limits widened to whole ticks, with about `count` intervals between lo and hi. */
function niceAxis(lo: number, hi: number, count: number, minStep = 0): Axis {
  const step = Math.max(niceStep((hi - lo) / Math.max(1, count)), minStep);
  // The small nudges keep 0.30000000000000004 / 0.1 from counting as more than 3 steps.
  const first = Math.floor(lo / step + 1e-9);
  const intervals = Math.max(1, Math.ceil(hi / step - 1e-9) - first);
  const ticks: number[] = [];
  for (let i = 0; i <= intervals; i++) ticks.push((first + i) * step);
  return { lo: ticks[0], hi: ticks[ticks.length - 1], step, ticks };
}

/**
 * The range to show for some values: start at 0 when 0 is near enough that the data would
 * still fill most of the axis, else zoom in on the data. Equal values get room around them.
 */
function dataRange(values: number[]): [number, number] {
  if (values.length === 0) return [0, 1];
  // A loop, not Math.min(...values): spreading a long run's values overflows the stack.
  let [lo, hi] = [Infinity, -Infinity];
  for (const v of values) [lo, hi] = [Math.min(lo, v), Math.max(hi, v)];
  if (!Number.isFinite(hi - lo)) return [-Number.MAX_VALUE / 4, Number.MAX_VALUE / 4];
  if (hi - lo <= 1e-9 * Math.max(1, Math.abs(hi))) {
    const pad = hi === 0 ? 1 : Math.abs(hi) / 2;
    // Keep non-negative data non-negative: a lone step 0 should not make a step -1.
    [lo, hi] = [lo >= 0 ? Math.max(0, lo - pad) : lo - pad, hi + pad];
  }
  if (lo >= 0 && lo <= hi - lo) lo = 0;
  return [lo, hi];
}

/** A tick label: as many decimals as the step needs, thousands as k and millions as M. */
function formatTick(value: number, step: number): string {
  if (Math.abs(value) < step / 2) return '0';
  const [unit, suffix] = step >= 1e5 ? [1e6, 'M'] : step >= 1e3 ? [1e3, 'k'] : [1, ''];
  const decimals = Math.min(20, Math.max(0, Math.ceil(-Math.log10(step / unit) - 1e-9)));
  return (value / unit).toFixed(decimals) + suffix;
}

/** A value for the legend, to 3 significant digits. */
function formatValue(value: number): string {
  return String(Number(value.toPrecision(3)));
}

// ---------------------------------------------------------------------------------------
// Data preparation.

/** Finite points only, in step order (a copy: the caller's arrays stay as they were). */
function finitePoints(series: readonly (readonly [number, number])[]): Point[] {
  return series
    .filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y))
    .map(([x, y]): Point => [x, y])
    .sort((a, b) => a[0] - b[0]);
}

/**
 * An exponential moving average, corrected for its start at 0 like TensorBoard's smoothing.
 * The window grows with the run (about a twentieth of its points, at most 50), so short runs
 * are barely smoothed and long, noisy ones become readable.
 */
function smooth(points: Point[]): Point[] {
  const window = Math.min(50, Math.max(1, points.length / 20));
  const beta = 1 - 1 / window;
  let average = 0;
  let weight = 0;
  return points.map(([x, y]): Point => {
    average = beta * average + (1 - beta) * y;
    weight = beta * weight + (1 - beta);
    return [x, average / weight];
  });
}

// ---------------------------------------------------------------------------------------
// The plot.

/** Renders the curves to PNG bytes (width x height, default 800 x 500). */
export function plotTrainingCurves(curves: TrainingCurves, opts: { width?: number; height?: number } = {}): Uint8Array {
  const { width = 800, height = 500 } = opts;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 320 || height < 200) {
    throw new RangeError(`plot size must be whole pixels, at least 320 x 200: got ${width} x ${height}`);
  }
  const C = PLOT_COLORS;
  const train = finitePoints(curves.train);
  const trainSmooth = smooth(train);
  const val = finitePoints(curves.val);
  const accuracy = finitePoints(curves.accuracy.map(([x, a]): Point => [x, a * 100]));

  const canvas = new Canvas(width, height);
  const s = Math.max(1, Math.round(Math.min(width / 800, height / 500))); // text scale
  const pad = 10 * s;
  const tick = 4 * s;
  let y = pad;

  // Title, centred: large if it fits, else small, else cut short.
  let title = curves.title?.trim() ?? '';
  if (title) {
    const scale = textWidth(title, 2 * s) <= width - 2 * pad ? 2 * s : s;
    const fits = Math.floor((width - 2 * pad + scale) / (ADVANCE * scale));
    if (title.length > fits) title = title.slice(0, fits - 3) + '...';
    canvas.text(title, Math.round((width - textWidth(title, scale)) / 2), y, C.text, scale);
    y += scale * GLYPH_H + 8 * s;
  }

  // Legend: one centred row (wrapped on a narrow image), latest values in it.
  const last = (points: Point[]): string => (points.length ? ' ' + formatValue(points[points.length - 1][1]) : '');
  const legend = [
    { label: 'train loss', color: C.trainRaw, thickness: 1, marker: false },
    { label: 'smoothed train loss' + last(trainSmooth), color: C.train, thickness: 2, marker: false },
    { label: 'val loss' + last(val), color: C.val, thickness: 2, marker: true },
    { label: 'accuracy' + (accuracy.length ? last(accuracy) + '%' : ''), color: C.accuracy, thickness: 2, marker: true },
  ].map((entry) => ({ ...entry, width: 22 * s + 5 * s + textWidth(entry.label, s) }));
  const gapBetween = 18 * s;
  const rows: (typeof legend)[] = [[]];
  let rowWidth = 0;
  for (const entry of legend) {
    const row = rows[rows.length - 1];
    if (row.length > 0 && rowWidth + gapBetween + entry.width > width - 2 * pad) {
      rows.push([entry]);
      rowWidth = entry.width;
    } else {
      rowWidth += (row.length ? gapBetween : 0) + entry.width;
      row.push(entry);
    }
  }
  for (const row of rows) {
    const total = row.reduce((sum, e) => sum + e.width, 0) + gapBetween * (row.length - 1);
    let x = Math.round((width - total) / 2);
    const mid = y + 3 * s;
    for (const e of row) {
      canvas.line(x, mid, x + 22 * s, mid, e.color, e.thickness * s);
      if (e.marker) canvas.disc(x + 11 * s, mid, 3 * s, e.color);
      canvas.text(e.label, x + 27 * s, y, C.text, s);
      x += e.width + gapBetween;
    }
    y += 9 * s + 6 * s;
  }

  // Panels: loss on top (about 2/3 of the height), accuracy below, sharing the step axis.
  const top = y + 6 * s;
  const bottom = height - 1 - pad - (9 * s + 6 * s) - (7 * s + 4 * s + tick); // room for x labels and title
  const panelGap = 20 * s;
  const lossHeight = Math.round((bottom - top - panelGap) * 0.68);
  const lossPanel = { top, bottom: top + lossHeight, left: 0, right: 0 };
  const accPanel = { top: lossPanel.bottom + panelGap, bottom, left: 0, right: 0 };

  const lossValues = [...train, ...val].map((p) => p[1]);
  const [lossLo, lossHi] = dataRange(lossValues);
  const lossAxis = niceAxis(lossLo, lossHi, Math.max(2, Math.floor(lossHeight / (40 * s))));
  const accAxis = niceAxis(0, 100, Math.max(1, Math.floor((accPanel.bottom - accPanel.top) / (22 * s))));
  const lossLabels = lossAxis.ticks.map((v) => formatTick(v, lossAxis.step));
  const accLabels = accAxis.ticks.map((v) => formatTick(v, accAxis.step));
  const yLabelWidth = Math.max(...[...lossLabels, ...accLabels].map((l) => textWidth(l, s)));

  // Left margin: the turned axis title (9 rows with descenders), the tick labels, the ticks.
  const left = pad + 9 * s + 8 * s + yLabelWidth + 4 * s + tick;
  const right = width - 1 - pad - 12 * s; // half a tick label may stick out past the last tick
  for (const panel of [lossPanel, accPanel]) [panel.left, panel.right] = [left, right];

  // Step axis: as many ticks as fit with their labels side by side.
  const steps = [...train, ...val, ...accuracy].map((p) => p[0]);
  const [stepLo, stepHi] = dataRange(steps);
  const wholeSteps = steps.every(Number.isInteger);
  let stepAxis = niceAxis(stepLo, stepHi, 1, wholeSteps ? 1 : 0);
  for (let count = Math.floor((right - left) / (60 * s)); count > 1; count--) {
    const candidate = niceAxis(stepLo, stepHi, count, wholeSteps ? 1 : 0);
    const spacing = (right - left) / (candidate.ticks.length - 1);
    const widest = Math.max(...candidate.ticks.map((v) => textWidth(formatTick(v, candidate.step), s)));
    if (widest + 12 * s <= spacing) {
      stepAxis = candidate;
      break;
    }
  }

  const px = (v: number): number => left + ((v - stepAxis.lo) / (stepAxis.hi - stepAxis.lo)) * (right - left);
  const py = (panel: Rect, axis: Axis, v: number): number =>
    panel.bottom - ((v - axis.lo) / (axis.hi - axis.lo)) * (panel.bottom - panel.top);

  drawPanel(canvas, lossPanel, lossAxis, lossLabels, stepAxis, px, py, s, false);
  drawPanel(canvas, accPanel, accAxis, accLabels, stepAxis, px, py, s, true);

  // Axis titles: "loss" and "accuracy %" turned up beside their panels, "step" underneath.
  const yTitle = (panel: Rect, text: string): void => {
    const mid = (panel.top + panel.bottom) / 2;
    canvas.text(text, pad, Math.round(mid + textWidth(text, s) / 2), C.text, s, true);
  };
  yTitle(lossPanel, 'loss');
  yTitle(accPanel, 'accuracy %');
  canvas.text('step', Math.round((left + right - textWidth('step', s)) / 2), height - pad - 9 * s, C.text, s);

  // Curves, each clipped to its panel; the faint raw loss first so the rest draw over it.
  // Markers may spill onto the frame: a point exactly on a limit (100%, the last
  // step) should still show as a whole dot.
  const toPixels = (points: Point[], panel: Rect, axis: Axis): Point[] =>
    points.map(([x, v]): Point => [px(x), py(panel, axis, v)]);
  const grow = (r: Rect, by: number): Rect => ({ left: r.left - by, top: r.top - by, right: r.right + by, bottom: r.bottom + by });
  const series = (pixels: Point[], panel: Rect, color: RGB): void => {
    canvas.clip = panel;
    canvas.polyline(pixels, color, 2 * s);
    canvas.clip = grow(panel, 3 * s);
    for (const [x, v] of pixels) canvas.disc(x, v, 3 * s, color);
  };
  canvas.clip = lossPanel;
  canvas.polyline(toPixels(train, lossPanel, lossAxis), C.trainRaw, s);
  canvas.polyline(toPixels(trainSmooth, lossPanel, lossAxis), C.train, 2 * s);
  series(toPixels(val, lossPanel, lossAxis), lossPanel, C.val);
  series(toPixels(accuracy, accPanel, accAxis), accPanel, C.accuracy);
  canvas.clip = { left: 0, top: 0, right: width - 1, bottom: height - 1 };

  if (train.length + val.length + accuracy.length === 0) {
    const note = 'no data yet';
    const x = Math.round((left + right - textWidth(note, 2 * s)) / 2);
    canvas.text(note, x, Math.round((lossPanel.top + lossPanel.bottom) / 2 - GLYPH_H * s), C.faintText, 2 * s);
  }

  return PNG.sync.write(canvas.png, { colorType: 2 });
}

/** One panel: grid, frame, y ticks with labels, step ticks (labelled on the bottom panel only). */
function drawPanel(
  canvas: Canvas,
  panel: Rect,
  axis: Axis,
  labels: string[],
  stepAxis: Axis,
  px: (v: number) => number,
  py: (panel: Rect, axis: Axis, v: number) => number,
  s: number,
  stepLabels: boolean,
): void {
  const C = PLOT_COLORS;
  const tick = 4 * s;
  axis.ticks.forEach((v, i) => {
    const y = Math.round(py(panel, axis, v));
    canvas.line(panel.left, y, panel.right, y, C.grid);
    canvas.line(panel.left - tick, y, panel.left - 1, y, C.axis, s);
    const label = labels[i];
    canvas.text(label, panel.left - tick - 4 * s - textWidth(label, s), y - Math.floor((GLYPH_H * s) / 2), C.text, s);
  });
  for (const v of stepAxis.ticks) {
    const x = Math.round(px(v));
    canvas.line(x, panel.top, x, panel.bottom, C.grid);
    canvas.line(x, panel.bottom + 1, x, panel.bottom + tick, C.axis, s);
    if (stepLabels) {
      const label = formatTick(v, stepAxis.step);
      canvas.text(label, x - Math.floor(textWidth(label, s) / 2), panel.bottom + tick + 4 * s, C.text, s);
    }
  }
  // The frame last, so grid lines end under it.
  canvas.line(panel.left, panel.top, panel.right, panel.top, C.axis);
  canvas.line(panel.left, panel.bottom, panel.right, panel.bottom, C.axis);
  canvas.line(panel.left, panel.top, panel.left, panel.bottom, C.axis);
  canvas.line(panel.right, panel.top, panel.right, panel.bottom, C.axis);
}
