// Training curves as an SVG file (a browser opens it): the train loss of every step, faint, with
// a smoothed curve over it, the validation loss at each evaluation, and the answer accuracy in a
// panel below that shares the step axis. SVG is text: lines, labels and clipping come free.
//
// The loss axis is logarithmic and spans the data: a loss falls fast at first and slowly later,
// so on a linear axis from 0 everything after the first few hundred steps would be a flat line.

/** The series to plot; steps and losses as logged, accuracy as a fraction in [0, 1]. */
export interface TrainingCurves {
  train: [step: number, loss: number][];
  val: [step: number, loss: number][];
  accuracy: [step: number, accuracy: number][];
  title?: string; // e.g. "nanovlm-ts default run, cpu"
}

/** The colours of the curves, exported so tests (and readers) can find each one. */
export const PLOT_COLORS = { trainRaw: '#aec7e8', train: '#1f77b4', val: '#ff7f0e', accuracy: '#2ca02c' } as const;

type Point = [x: number, y: number];
type Panel = { id: string; top: number; bottom: number; ticks: number[]; y: (v: number) => number };

/**
 * Smooths without lag: the value of a straight line fitted to the 2h + 1 points around each
 * one. In the interior that is their centred average; at the ends, where the window is cut
 * short, the line keeps the curve on the data instead of trailing it. (An exponential
 * average trails the data by about 1 / (1 - beta) steps.) It fits the values themselves, so
 * the curve is the mean train loss, comparable with the validation loss.
 */
export function smooth(values: number[], h: number): number[] {
  // running sums of 1, x, x^2, y and x*y, with x the index
  const sums = [[0, 0, 0, 0, 0]];
  values.forEach((y, x) => {
    const [n, sx, sxx, sy, sxy] = sums[x];
    sums.push([n + 1, sx + x, sxx + x * x, sy + y, sxy + x * y]);
  });
  return values.map((_, i) => {
    const [a, b] = [Math.max(0, i - h), Math.min(values.length - 1, i + h)];
    const [n, sx, sxx, sy, sxy] = sums[b + 1].map((total, j) => total - sums[a][j]);
    const slope = n > 1 ? (n * sxy - sx * sy) / (n * sxx - sx * sx) : 0;
    const fit = sy / n + slope * (i - sx / n);
    return fit > 0 ? fit : sy / n; // a steep fall can take the line below 0, off a log axis: the mean then
  });
}

/** The curves as SVG text, width x height pixels (default 800 x 500). */
export function plotTrainingCurves(curves: TrainingCurves, opts: { width?: number; height?: number } = {}): string {
  const { width = 800, height = 500 } = opts;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 320 || height < 200) {
    throw new RangeError(`plot size must be whole pixels, at least 320 x 200: got ${width} x ${height}`);
  }
  // a log axis shows positive values only; a loss of exactly 0 has no place on it
  const train = clean(curves.train, (v) => v > 0);
  const val = clean(curves.val, (v) => v > 0);
  const accuracy = clean(
    curves.accuracy.map(([s, a]) => [s, 100 * a]),
    () => true,
  );
  const smoothed = smooth(
    train.map((p) => p[1]),
    Math.max(1, Math.round(train.length / 100)),
  );

  const [left, right] = [64, width - 16];
  const [top, bottom] = [52, height - 36];
  const split = top + Math.round((bottom - top - 28) * 0.62);
  const steps = [...train, ...val, ...accuracy].map((p) => p[0]);
  const [x0, x1] = span(steps, 0, 1);
  const x = (step: number) => left + ((step - x0) / (x1 - x0)) * (right - left);
  const losses = [...train, ...val].map((p) => Math.log10(p[1]));
  const [l0, l1] = span(losses, -1, 1, 0.05);
  const loss: Panel = {
    id: 'loss',
    top,
    bottom: split,
    ticks: logTicks(10 ** l0, 10 ** l1),
    y: (v) => split - ((Math.log10(v) - l0) / (l1 - l0)) * (split - top),
  };
  const accTop = split + 28;
  const acc: Panel = {
    id: 'accuracy',
    top: accTop,
    bottom,
    ticks: [0, 25, 50, 75, 100],
    y: (v) => bottom - (v / 100) * (bottom - accTop),
  };

  const svg = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ` +
      'font-family="sans-serif" font-size="11" fill="#282828">',
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${width / 2}" y="18" text-anchor="middle" font-size="14">${escape(curves.title ?? '')}</text>`,
    ...legend(width, [
      ['train loss', PLOT_COLORS.trainRaw],
      [`smoothed${last(smoothed)}`, PLOT_COLORS.train],
      [`val loss${last(val.map((p) => p[1]))}`, PLOT_COLORS.val],
      [`accuracy${last(accuracy.map((p) => p[1]))}${accuracy.length ? '%' : ''}`, PLOT_COLORS.accuracy],
    ]),
  ];
  for (const [panel, title] of [
    [loss, 'loss (log)'],
    [acc, 'accuracy %'],
  ] as const) {
    const box = `x="${left}" y="${panel.top}" width="${right - left}" height="${panel.bottom - panel.top}"`;
    svg.push(`<clipPath id="${panel.id}-area"><rect ${box}/></clipPath>`);
    for (const v of panel.ticks) {
      const y = round(panel.y(v));
      svg.push(`<line x1="${left}" x2="${right}" y1="${y}" y2="${y}" stroke="#e8e8e8"/>`);
      svg.push(`<text x="${left - 5}" y="${y + 4}" text-anchor="end">${label(v)}</text>`);
    }
    svg.push(`<rect ${box} fill="none" stroke="#5a5a5a"/>`);
    const middle = (panel.top + panel.bottom) / 2;
    svg.push(`<text transform="translate(14 ${middle}) rotate(-90)" text-anchor="middle">${title}</text>`);
  }
  for (const step of linearTicks(x0, x1)) {
    svg.push(`<text x="${round(x(step))}" y="${bottom + 16}" text-anchor="middle">${label(step)}</text>`);
  }
  svg.push(`<text x="${(left + right) / 2}" y="${bottom + 31}" text-anchor="middle">step</text>`);
  if (steps.length === 0) {
    svg.push(`<text x="${(left + right) / 2}" y="${(top + split) / 2}" text-anchor="middle">no data yet</text>`);
  }

  const curve = (name: string, points: Point[], panel: Panel, color: string, strokeWidth: number, dots: boolean) => {
    const xy = points.map(([s, v]) => [round(x(s)), round(panel.y(v))]);
    const style = `fill="none" stroke="${color}" stroke-width="${strokeWidth}" clip-path="url(#${panel.id}-area)"`;
    svg.push(`<polyline class="${name}" points="${xy.map((p) => p.join(',')).join(' ')}" ${style}/>`);
    if (dots) svg.push(...xy.map(([cx, cy]) => `<circle cx="${cx}" cy="${cy}" r="3" fill="${color}"/>`));
  };
  curve('train-raw', train, loss, PLOT_COLORS.trainRaw, 1, false);
  curve(
    'train',
    train.map(([s], i): Point => [s, smoothed[i]]),
    loss,
    PLOT_COLORS.train,
    2,
    false,
  );
  curve('val', val, loss, PLOT_COLORS.val, 2, true);
  curve('accuracy', accuracy, acc, PLOT_COLORS.accuracy, 2, true);
  svg.push('</svg>', '');
  return svg.join('\n');
}

/** Finite points that pass `keep`, sorted by step (a copy: the input is left as it is). */
function clean(points: [number, number][], keep: (v: number) => boolean): Point[] {
  const finite = points.filter(([s, v]) => Number.isFinite(s) && Number.isFinite(v) && keep(v));
  return finite.map(([s, v]): Point => [s, v]).sort((a, b) => a[0] - b[0]);
}

/** [min, max] of the values, widened by `pad` of their range (by 0.5 each way if all equal); [lo, hi] for none. */
function span(values: number[], lo: number, hi: number, pad = 0): [number, number] {
  if (values.length === 0) return [lo, hi];
  const min = values.reduce((m, v) => Math.min(m, v));
  const max = values.reduce((m, v) => Math.max(m, v));
  if (min === max) return [min - 0.5, max + 0.5];
  return [min - (max - min) * pad, max + (max - min) * pad];
}

/** Ticks on a log axis: the decades if there are 3 or more, else 1-2-5 steps, else 1..9, else linear ticks. */
function logTicks(lo: number, hi: number): number[] {
  const [e0, e1] = [Math.floor(Math.log10(lo)), Math.ceil(Math.log10(hi))];
  const every = Math.max(1, Math.ceil((e1 - e0) / 8)); // at most about eight decades labelled
  for (const mantissas of [[1], [1, 2, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9]]) {
    const ticks: number[] = [];
    for (let e = e0; e <= e1; e += every) {
      // 10 ** e is 0 below about 1e-323: such a tick has no place on the axis
      for (const m of mantissas) if (m * 10 ** e >= lo && m * 10 ** e <= hi && m * 10 ** e > 0) ticks.push(m * 10 ** e);
    }
    if (ticks.length >= 3) return ticks;
  }
  return linearTicks(lo, hi);
}

/** About six round ticks (1, 2 or 5 times a power of ten apart) within [lo, hi]. */
function linearTicks(lo: number, hi: number): number[] {
  const raw = (hi - lo) / 6;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) ?? raw;
  const ticks: number[] = [];
  // counting ticks (not adding steps) stays exact, and the cap keeps any range finite
  for (let i = Math.ceil(lo / step); i * step <= hi && ticks.length < 12; i++) ticks.push(i * step);
  return ticks;
}

/** The legend: one row under the title, a short line of each curve's colour before its name. */
function legend(width: number, entries: [string, string][]): string[] {
  const widths = entries.map(([text]) => 32 + 6.5 * text.length); // about 6.5 px a character at 11 px
  let x = (width - widths.reduce((a, b) => a + b, 0)) / 2;
  return entries.map(([text, color], i) => {
    const item =
      `<line x1="${round(x)}" x2="${round(x + 18)}" y1="36" y2="36" stroke="${color}" stroke-width="3"/>` +
      `<text x="${round(x + 22)}" y="40">${escape(text)}</text>`;
    x += widths[i];
    return item;
  });
}

function last(values: number[]): string {
  return values.length ? ` ${label(values[values.length - 1])}` : '';
}

function label(v: number): string {
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(1).replace('.0e', 'e');
  return String(Number(v.toPrecision(3)));
}

function round(v: number): number {
  return Math.round(v * 10) / 10;
}

function escape(text: string): string {
  return text.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;');
}
