/**
 * The soak's figures: its samples, the slope of a series, and a plot of
 * them as a small SVG (one panel per series, sharing the time axis), written
 * by hand: a few lines of markup need no plotting library.
 */

export interface SoakSample {
  /** Minutes since the load started. */
  readonly minute: number;
  readonly rssMiB: number;
  readonly heapUsedMiB: number;
  readonly heapTotalMiB: number;
  readonly fds: number;
}

/** The least-squares slope of y over x; 0 for fewer than two points. */
export function linearSlope(points: ReadonlyArray<readonly [number, number]>): number {
  const n = points.length;
  if (n < 2) return 0;
  const mx = points.reduce((a, [x]) => a + x, 0) / n;
  const my = points.reduce((a, [, y]) => a + y, 0) / n;
  let sxy = 0;
  let sxx = 0;
  for (const [x, y] of points) {
    sxy += (x - mx) * (y - my);
    sxx += (x - mx) ** 2;
  }
  return sxx === 0 ? 0 : sxy / sxx;
}

/** A round step for about `count` ticks over `span`. */
function tickStep(span: number, count: number): number {
  const raw = span / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * power >= raw) return m * power;
  return 10 * power;
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

interface Panel {
  readonly title: string;
  readonly unit: string;
  readonly series: ReadonlyArray<{ readonly name: string; readonly color: string; readonly values: number[] }>;
  readonly slope: string;
}

export function soakSvg(
  samples: readonly SoakSample[],
  options: { settledMinutes: number; slopes: Record<string, number>; title: string },
): string {
  const width = 720;
  const panelHeight = 170;
  const left = 70;
  const right = 20;
  const top = 40;
  const gap = 50;
  const plotWidth = width - left - right;
  const plotHeight = panelHeight - 40;
  const minutes = samples.map((s) => s.minute);
  const xMax = Math.max(1, ...minutes);
  const x = (m: number) => left + (m / xMax) * plotWidth;
  const { slopes } = options;
  const panels: Panel[] = [
    {
      title: 'resident set size, VmRSS',
      unit: 'MiB',
      series: [{ name: 'RSS', color: '#1f77b4', values: samples.map((s) => s.rssMiB) }],
      slope: `slope after minute ${options.settledMinutes}: ${(slopes['rssMiBPerHour'] ?? 0).toFixed(2)} MiB/h`,
    },
    {
      title: 'JavaScript heap',
      unit: 'MiB',
      series: [
        { name: 'used', color: '#d62728', values: samples.map((s) => s.heapUsedMiB) },
        { name: 'total', color: '#ff9896', values: samples.map((s) => s.heapTotalMiB) },
      ],
      slope: `used, slope after minute ${options.settledMinutes}: ${(slopes['heapUsedMiBPerHour'] ?? 0).toFixed(2)} MiB/h`,
    },
    {
      title: 'open file descriptors',
      unit: 'fds',
      series: [{ name: 'fds', color: '#2ca02c', values: samples.map((s) => s.fds) }],
      slope: `slope after minute ${options.settledMinutes}: ${(slopes['fdsPerHour'] ?? 0).toFixed(2)} per hour`,
    },
  ];
  const height = top + panels.length * (panelHeight + gap);
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${width / 2}" y="20" text-anchor="middle" font-size="14">${esc(options.title)}</text>`,
  ];
  panels.forEach((panel, i) => {
    const y0 = top + i * (panelHeight + gap) + 20;
    const all = panel.series.flatMap((s) => s.values);
    // From zero: a slope is judged against the whole size, not a zoomed-in band.
    const lo = 0;
    const hi = Math.max(...all, 1) * 1.15;
    const y = (v: number) => y0 + plotHeight - ((v - lo) / (hi - lo)) * plotHeight;
    out.push(`<text x="${left}" y="${y0 - 8}" font-size="12">${esc(panel.title)} (${panel.unit})</text>`);
    out.push(`<text x="${left + plotWidth}" y="${y0 - 8}" text-anchor="end" fill="#555">${esc(panel.slope)}</text>`);
    out.push(`<rect x="${left}" y="${y0}" width="${plotWidth}" height="${plotHeight}" fill="none" stroke="#999"/>`);
    const step = tickStep(hi - lo, 5);
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) {
      out.push(
        `<line x1="${left}" x2="${left + plotWidth}" y1="${y(v).toFixed(1)}" y2="${y(v).toFixed(1)}" stroke="#eee"/>`,
      );
      out.push(`<text x="${left - 6}" y="${(y(v) + 4).toFixed(1)}" text-anchor="end">${Number(v.toFixed(6))}</text>`);
    }
    const xStep = tickStep(xMax, 6);
    for (let m = 0; m <= xMax + 1e-9; m += xStep) {
      out.push(
        `<text x="${x(m).toFixed(1)}" y="${y0 + plotHeight + 14}" text-anchor="middle">${Number(m.toFixed(6))}</text>`,
      );
    }
    if (options.settledMinutes > 0 && options.settledMinutes < xMax) {
      const xs = x(options.settledMinutes).toFixed(1);
      out.push(`<line x1="${xs}" x2="${xs}" y1="${y0}" y2="${y0 + plotHeight}" stroke="#888" stroke-dasharray="4 3"/>`);
    }
    panel.series.forEach((series, k) => {
      const points = series.values.map((v, j) => `${x(minutes[j]!).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
      out.push(`<polyline points="${points}" fill="none" stroke="${series.color}" stroke-width="1.5"/>`);
      if (panel.series.length > 1) {
        out.push(`<text x="${left + 8 + k * 60}" y="${y0 + 14}" fill="${series.color}">${esc(series.name)}</text>`);
      }
    });
    if (i === panels.length - 1) {
      out.push(
        `<text x="${left + plotWidth / 2}" y="${y0 + plotHeight + 30}" text-anchor="middle">minutes since the load started</text>`,
      );
    }
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}
