/**
 * The memory picture of a death, as a person expects a memory plot: seconds since the
 * kernel started across, MiB up, the limit and the guard's threshold drawn and
 * labelled, each cell's start marked with its In [N], the death marked. The same data
 * as the report's `memory` (timeline, threshold_bytes, cell_starts), in plain SVG.
 * Every value is checked finite before it becomes a coordinate; labels are text nodes.
 */
import { finite, formatBytes, svgElement } from './dom';

export interface IChartData {
  timeline: unknown;
  limit: unknown;
  threshold: unknown;
  cellStarts: unknown;
  death: number | null; // seconds since the kernel started
}

const WIDTH = 680;
const HEIGHT = 280;
const MARGIN = { left: 56, right: 120, top: 28, bottom: 44 };
const MiB = 1024 * 1024;
const COLOURS = {
  memory: '#1976d2',
  limit: '#d32f2f',
  threshold: '#ef6c00',
  cell: '#757575',
  axis: 'var(--jp-ui-font-color1, #333)'
};

/** [x, y] pairs of finite numbers from a server list; anything else is left out. */
function pairs(value: unknown, nullableY = false): [number, number | null][] {
  const out: [number, number | null][] = [];
  for (const point of Array.isArray(value) ? value : []) {
    const x = Array.isArray(point) ? finite(point[0]) : null;
    const y = Array.isArray(point) ? finite(point[1]) : null;
    if (x !== null && (y !== null || (nullableY && Array.isArray(point) && point[1] === null))) {
      out.push([x, y]);
    }
  }
  return out;
}

/** A round step (1, 2 or 5 times a power of ten) giving at most `count` ticks. */
function niceStep(range: number, count: number): number {
  const rough = range / count;
  const power = Math.pow(10, Math.floor(Math.log10(rough)));
  return [1, 2, 5, 10].map(m => m * power).find(step => range / step <= count) || 10 * power;
}

function ticks(top: number, count: number): number[] {
  const step = niceStep(top, count);
  const out: number[] = [];
  for (let v = 0; v <= top + step * 1e-9; v += step) {
    out.push(Number(v.toPrecision(12)));
  }
  return out;
}

function label(x: number, y: number, content: string, attributes: Record<string, number | string> = {}): SVGElement {
  const node = svgElement('text', { x: x.toFixed(1), y: y.toFixed(1), 'font-size': 11, fill: COLOURS.axis, ...attributes });
  node.textContent = content;
  return node;
}

function line(x1: number, y1: number, x2: number, y2: number, attributes: Record<string, number | string>): SVGElement {
  return svgElement('line', { x1: x1.toFixed(1), y1: y1.toFixed(1), x2: x2.toFixed(1), y2: y2.toFixed(1), ...attributes });
}

export function memoryChart(data: IChartData): SVGElement | null {
  const points = pairs(data.timeline) as [number, number][];
  if (!points.length) {
    return null;
  }
  const limit = finite(data.limit);
  const threshold = finite(data.threshold);
  const death = data.death !== null && Number.isFinite(data.death) ? Math.max(0, data.death) : null;
  const starts = pairs(data.cellStarts, true).filter(([t]) => t >= 0);

  const peak = points.reduce((m, p) => Math.max(m, p[1]), 0);
  const topMiB = (Math.max(peak, limit || 0, threshold || 0, MiB) / MiB) * 1.08;
  const end = Math.max(points[points.length - 1][0], death || 0, ...starts.map(([t]) => t), 1);
  const plotW = WIDTH - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const x = (t: number): number => MARGIN.left + (t / end) * plotW;
  const y = (bytes: number): number => MARGIN.top + plotH - (bytes / MiB / topMiB) * plotH;
  const right = MARGIN.left + plotW;
  const bottom = MARGIN.top + plotH;

  const svg = svgElement('svg', {
    class: 'kd-chart',
    width: WIDTH,
    height: HEIGHT,
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: 'img'
  });
  const title = svgElement('title', {});
  title.textContent = 'Memory counted against the limit, over the kernel’s life';
  svg.appendChild(title);

  // The axes: MiB up the left, seconds along the bottom, with a light grid.
  const yAxis = svgElement('g', { class: 'kd-axis-y' });
  for (const v of ticks(topMiB, 5)) {
    const at = y(v * MiB);
    yAxis.appendChild(line(MARGIN.left, at, right, at, { stroke: '#e0e0e0' }));
    yAxis.appendChild(label(MARGIN.left - 6, at + 4, String(v), { 'text-anchor': 'end' }));
  }
  yAxis.appendChild(line(MARGIN.left, MARGIN.top, MARGIN.left, bottom, { stroke: COLOURS.axis }));
  yAxis.appendChild(label(14, MARGIN.top + plotH / 2, 'MiB', {
    'text-anchor': 'middle',
    transform: `rotate(-90 14 ${(MARGIN.top + plotH / 2).toFixed(1)})`
  }));
  svg.appendChild(yAxis);
  const xAxis = svgElement('g', { class: 'kd-axis-x' });
  for (const t of ticks(end, 8)) {
    xAxis.appendChild(line(x(t), bottom, x(t), bottom + 4, { stroke: COLOURS.axis }));
    xAxis.appendChild(label(x(t), bottom + 16, String(t), { 'text-anchor': 'middle' }));
  }
  xAxis.appendChild(line(MARGIN.left, bottom, right, bottom, { stroke: COLOURS.axis }));
  xAxis.appendChild(label(MARGIN.left + plotW / 2, HEIGHT - 6, 'seconds since the kernel started', {
    'text-anchor': 'middle'
  }));
  svg.appendChild(xAxis);

  // The limit and the guard's threshold, labelled at the right end.
  const level = (bytes: number, name: string, cls: string, colour: string, dash: string, dy: number): void => {
    const g = svgElement('g', { class: cls });
    g.appendChild(line(MARGIN.left, y(bytes), right, y(bytes), { stroke: colour, 'stroke-dasharray': dash }));
    g.appendChild(label(right + 6, y(bytes) + 4 + dy, `${name} ${formatBytes(bytes)}`, { fill: colour }));
    svg.appendChild(g);
  };
  if (limit) {
    level(limit, 'limit', 'kd-limit', COLOURS.limit, '6 3', 0);
  }
  if (threshold) {
    // A threshold close under the limit (90 % of it) has its label moved clear below.
    const crowded = limit !== null && Math.abs(y(threshold) - y(limit)) < 12;
    level(threshold, 'guard', 'kd-threshold', COLOURS.threshold, '2 3', crowded ? 12 : 0);
  }

  // Each cell's start, its In [N] at the top (staggered when starts crowd together).
  let lastLabelX = -Infinity;
  let row = 0;
  for (const [t, count] of starts) {
    const g = svgElement('g', { class: 'kd-cell-start' });
    g.appendChild(line(x(t), MARGIN.top, x(t), bottom, { stroke: COLOURS.cell, 'stroke-dasharray': '1 3' }));
    row = x(t) - lastLabelX < 34 ? (row + 1) % 2 : 0;
    lastLabelX = x(t);
    g.appendChild(label(x(t) + 2, MARGIN.top - 14 + row * 10, count !== null ? `In [${count}]` : 'cell', { 'font-size': 10, fill: COLOURS.cell }));
    svg.appendChild(g);
  }

  const coords = points.map(([t, b]) => `${x(t).toFixed(1)},${y(b).toFixed(1)}`).join(' ');
  svg.appendChild(svgElement('polyline', { class: 'kd-memory-line', fill: 'none', stroke: COLOURS.memory, 'stroke-width': 2, points: coords }));

  if (death !== null) {
    const last = points[points.length - 1][1];
    const g = svgElement('g', { class: 'kd-death' });
    g.appendChild(line(x(death), MARGIN.top, x(death), bottom, { stroke: COLOURS.limit, 'stroke-width': 1.5 }));
    g.appendChild(label(x(death), y(last) - 8, '✕', { fill: COLOURS.limit, 'font-size': 14, 'text-anchor': 'middle' }));
    g.appendChild(label(x(death) - 4, bottom - 6, `died at ${death.toFixed(1)} s`, { fill: COLOURS.limit, 'text-anchor': 'end' }));
    svg.appendChild(g);
  }
  return svg;
}
