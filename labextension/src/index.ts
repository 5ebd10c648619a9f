/**
 * kernel-doctor in JupyterLab 4 and Notebook 7.
 *
 * When the open notebook's kernel dies, the diagnosis comes as a notification with a
 * Details action, and the cell that was running is marked failed with the diagnosis
 * as its error output (JupyterLab would put its prompt back to [ ] and say nothing).
 * A status-bar item shows this kernel's memory against the limit that really applies.
 * Guard trips and ignored interrupts are notified the same way. Everything comes from
 * the kernel-doctor server extension (/kernel-doctor/api).
 */
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { MainAreaWidget, Notification } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { Widget } from '@lumino/widgets';

interface IReport {
  id: string;
  cause: string | null;
  summary: string;
  line: number | null;
  cell: { index: number; execution_count: number | null; id: string | null; source: string } | null;
  kernel: { connection_file?: string; ended?: number } | null;
  evidence?: string[];
  advice?: string[];
  stack?: {
    file: string;
    line: number | null;
    function: string;
    cell_index?: number | null;
    execution_count?: number | null;
  }[];
  memory?: { peak_bytes?: number; limit_bytes?: number; limit_source?: string; timeline?: [number, number][] };
}

interface IKernelState {
  kernel_id: string;
  busy: boolean;
  memory: { counted_bytes: number | null; limit_bytes: number | null; limit_source: string | null };
  guard: { enabled?: boolean; threshold_bytes?: number } | null;
  ignored_interrupt: { seq: number; summary: string } | null;
}

const POLL_MS = 2000;
const REPORT_WAIT_MS = 20000;

async function api<T>(path: string): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'kernel-doctor', 'api', path);
  const response = await ServerConnection.makeRequest(url, {}, settings);
  if (!response.ok) {
    throw new Error(`kernel-doctor: ${path}: HTTP ${response.status}`);
  }
  return (await response.json()) as T;
}

/** A finite number from a server value (a number or a numeric string), else null. */
function finite(value: unknown): number | null {
  if (typeof value !== 'number' && (typeof value !== 'string' || value.trim() === '')) {
    return null;
  }
  const n = Number(value);
  return Number.isFinite(n) ? n : null;
}

/** A server value as plain text ('' for null or undefined). */
function text(value: unknown): string {
  return value === null || value === undefined ? '' : String(value);
}

/** A server list as a list of strings ([] if it is not a list). */
function texts(value: unknown): string[] {
  return Array.isArray(value) ? value.map(text) : [];
}

function formatBytes(value: unknown): string {
  const bytes = finite(value);
  if (bytes === null) {
    return '?';
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let n = bytes;
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n >= 10 || i === 0 ? n.toFixed(0) : n.toFixed(1)} ${units[i]}`;
}

// How a person is told which cell, and where: the same forms as kernel-doctor's
// Python side (kernel_doctor/agent/naming.py), which writes the report's sentences.

/** ipykernel's cell code files (/tmp/ipykernel_<pid>/<hash>.py) and IPython's. */
const CELL_FILE = /(\/ipykernel_\d+\/\d+\.py$)|(^<ipython-input-(\d+)-[0-9a-f]+>$)/;
const LONG_PATH = 40;

function ordinal(n: number): string {
  if (n % 100 >= 10 && n % 100 <= 20) {
    return `${n}th`;
  }
  return `${n}${({ 1: 'st', 2: 'nd', 3: 'rd' } as Record<number, string>)[n % 10] || 'th'}`;
}

/** "In [3]" for execution count 3, else "the 4th cell" for 0-based index 3. */
function cellName(count: number | null, index: number | null, unknown: string): string {
  if (count !== null) {
    return `In [${count}]`;
  }
  if (index !== null) {
    return `the ${ordinal(index + 1)} cell`;
  }
  return unknown;
}

function cellPlace(
  count: number | null,
  index: number | null,
  line: number | null,
  unknown = 'the running cell'
): string {
  const name = cellName(count, index, unknown);
  return line ? `${name}, line ${line}` : name;
}

/** "/sys/fs/cgroup/…/kernel-doctor-1-0" for a long absolute path. */
function shortPath(path: string): string {
  const parts = path.split('/');
  if (path.length <= LONG_PATH || !path.startsWith('/') || parts.length <= 5) {
    return path;
  }
  return [...parts.slice(0, 4), '…', parts[parts.length - 1]].join('/');
}

/** Every long absolute path in a sentence shortened (Details shows them whole). */
function shortPaths(sentence: string): string {
  return sentence.replace(/(^|[^\w/.~:-])(\/[^\s()'"]+)/g, (_, before: string, path: string) => {
    const body = path.replace(/[.,;:]+$/, '');
    return before + shortPath(body) + path.slice(body.length);
  });
}

/** A source file as a person knows it: an installed package's path from the package on. */
function shortFile(path: string): string {
  for (const marker of ['site-packages/', 'dist-packages/', '/lib/python3']) {
    const at = path.indexOf(marker);
    if (at >= 0) {
      return path.slice(at + marker.length).replace(/^[0-9./]+/, '');
    }
  }
  return shortPath(path);
}

/** Where a stack frame is: "In [3], line 3" for a cell's code, else the file. */
function framePlace(file: string, line: number | null, count: number | null, index: number | null): string {
  const match = CELL_FILE.exec(file);
  if (count === null && match && match[3]) {
    count = Number(match[3]);
  }
  if (match || count !== null || index !== null) {
    return cellPlace(count, index, line, 'a cell');
  }
  return line ? `${shortFile(file)}, line ${line}` : shortFile(file);
}

/** An HTML element whose content, if any, is set as text (never parsed as HTML). */
function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  content?: string,
  className?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (content !== undefined) {
    node.textContent = content;
  }
  if (className) {
    node.className = className;
  }
  return node;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

/** An SVG element; its attribute values are constants or numbers computed here. */
function svgElement(tag: string, attributes: Record<string, number | string>): SVGElement {
  const node = document.createElementNS(SVG_NS, tag) as SVGElement;
  for (const [name, value] of Object.entries(attributes)) {
    node.setAttribute(name, String(value));
  }
  return node;
}

/** A <pre> of lines, one text node each, separated by newlines. */
function preOf(lines: Node[]): HTMLPreElement {
  const pre = element('pre');
  lines.forEach((line, i) => {
    if (i > 0) {
      pre.appendChild(document.createTextNode('\n'));
    }
    pre.appendChild(line);
  });
  return pre;
}

function sparkline(timeline: unknown, limitValue: unknown): SVGElement | null {
  // Only [time, bytes] pairs of finite numbers are drawn; anything else is left out.
  const points: [number, number][] = [];
  for (const point of Array.isArray(timeline) ? timeline : []) {
    const t = Array.isArray(point) ? finite(point[0]) : null;
    const b = Array.isArray(point) ? finite(point[1]) : null;
    if (t !== null && b !== null) {
      points.push([t, b]);
    }
  }
  if (!points.length) {
    return null;
  }
  const limit = finite(limitValue);
  const width = 400;
  const height = 60;
  const t0 = points[0][0];
  const t1 = points[points.length - 1][0] || 1;
  const top = points.reduce((m, p) => Math.max(m, p[1]), limit || 0) || 1;
  const svg = svgElement('svg', { class: 'kd-timeline', width, height, viewBox: `0 0 ${width} ${height}` });
  if (limit) {
    const y = (height - (limit / top) * height).toFixed(1);
    svg.appendChild(
      svgElement('line', { x1: 0, x2: width, y1: y, y2: y, stroke: '#d32f2f', 'stroke-dasharray': 4 })
    );
  }
  const coords = points
    .map(([t, b]) => `${(((t - t0) / (t1 - t0 || 1)) * width).toFixed(1)},${(height - (b / top) * height).toFixed(1)}`)
    .join(' ');
  svg.appendChild(
    svgElement('polyline', { fill: 'none', stroke: '#1976d2', 'stroke-width': 2, points: coords })
  );
  return svg;
}

/**
 * The Details panel, built with DOM calls: every value from the report is set as text
 * (or, for the timeline, as numbers checked finite), so none is ever parsed as HTML.
 * What happened and what to do first; the evidence and full paths are here, one
 * click from the notification.
 */
function renderReport(report: IReport): HTMLElement {
  const root = element('div', undefined, 'kd-report');
  root.appendChild(element('h2', text(report.summary)));
  const list = (title: string, items: string[]): void => {
    if (items.length) {
      root.appendChild(element('h3', title));
      const node = element('ul');
      for (const item of items) {
        node.appendChild(element('li', item));
      }
      root.appendChild(node);
    }
  };
  list('What to do', texts(report.advice));
  if (report.cell) {
    const marked = finite(report.line);
    const lines = text(report.cell.source)
      .split('\n')
      .map((source, i) =>
        element('span', `${String(i + 1).padStart(3)}  ${source}`, marked === i + 1 ? 'kd-line' : undefined)
      );
    const count = finite(report.cell.execution_count);
    const index = finite(report.cell.index);
    root.appendChild(element('h3', cellPlace(count, index, marked, 'The cell')));
    root.appendChild(preOf(lines));
  }
  const memory = report.memory || {};
  const timeline = sparkline(memory.timeline, memory.limit_bytes);
  if (timeline) {
    root.appendChild(
      element(
        'h3',
        `Memory: peak ${formatBytes(memory.peak_bytes)} of ${formatBytes(memory.limit_bytes)}` +
          ` (${text(memory.limit_source)})`
      )
    );
    root.appendChild(timeline);
  }
  const stack = (Array.isArray(report.stack) ? report.stack : []).filter(f => f && typeof f === 'object');
  if (stack.length) {
    const frames = stack.map(f =>
      document.createTextNode(
        `${text(f.function)}  ` +
          framePlace(text(f.file), finite(f.line), finite(f.execution_count), finite(f.cell_index))
      )
    );
    root.appendChild(element('h3', 'Stack (innermost last)'));
    root.appendChild(preOf(frames));
  }
  list('Evidence', texts(report.evidence));
  return root;
}

class MemoryStatus extends Widget {
  constructor() {
    super();
    this.addClass('kd-memory');
    this.node.textContent = '';
  }

  display(state: IKernelState | null): void {
    if (!state) {
      this.node.textContent = '';
      this.node.title = '';
      this.removeClass('kd-memory-warning');
      return;
    }
    const { counted_bytes, limit_bytes, limit_source } = state.memory;
    this.node.textContent = `Mem: ${formatBytes(counted_bytes)} / ${formatBytes(limit_bytes)}`;
    this.node.title =
      `kernel-doctor: memory the limit counts, against ${shortPaths(text(limit_source)) || 'the limit'}`;
    const threshold = finite(state.guard?.threshold_bytes);
    const near = threshold ? (finite(counted_bytes) || 0) >= threshold * 0.95 : false;
    this.toggleClass('kd-memory-warning', near);
  }
}

class Doctor {
  private seenReports = new Set<string>();
  private seenIgnored = new Set<string>();
  private started = Date.now() / 1000;

  constructor(
    private app: JupyterFrontEnd,
    private tracker: INotebookTracker,
    private status: MemoryStatus | null
  ) {
    tracker.widgetAdded.connect((_, panel) => this.watch(panel));
    tracker.forEach(panel => this.watch(panel));
    window.setInterval(() => void this.poll(), POLL_MS);
  }

  private watch(panel: NotebookPanel): void {
    const session = panel.sessionContext;
    session.statusChanged.connect((_, status) => {
      if (status === 'autorestarting' || status === 'dead' || status === 'restarting') {
        const kernelId = session.session?.kernel?.id;
        if (kernelId) {
          void this.waitForReport(panel, kernelId);
        }
      }
    });
    session.iopubMessage.connect((_, msg) => {
      const content = msg.content as { ename?: string; evalue?: string };
      if (msg.header.msg_type === 'error' && content.ename === 'KernelDoctorMemoryError') {
        Notification.warning(String(content.evalue || '').split(': it took')[0] + '.', {
          autoClose: 10000
        });
      }
    });
  }

  private async waitForReport(panel: NotebookPanel, kernelId: string): Promise<void> {
    const deadline = Date.now() + REPORT_WAIT_MS;
    while (Date.now() < deadline) {
      try {
        const reports = await api<IReport[]>('reports');
        const report = reports.find(
          r =>
            !this.seenReports.has(r.id) &&
            text(r.kernel?.connection_file).endsWith(`kernel-${kernelId}.json`) &&
            (finite(r.kernel?.ended) || 0) >= this.started - 5
        );
        if (report) {
          this.seenReports.add(report.id);
          const full = await api<IReport>(`reports/${encodeURIComponent(text(report.id))}`);
          this.markFailed(panel, full);
          Notification.error(text(full.summary), {
            autoClose: false,
            actions: [{ label: 'Details', callback: () => this.details(panel, full) }]
          });
          return;
        }
      } catch (error) {
        console.warn('kernel-doctor:', error);
      }
      await new Promise(resolve => window.setTimeout(resolve, 1000));
    }
  }

  private cellIndex(panel: NotebookPanel, report: IReport): number | null {
    if (!report.cell) {
      return null;
    }
    const cells = panel.content.widgets;
    const byId = cells.findIndex(c => c.model.id === report.cell?.id);
    if (byId >= 0) {
      return byId;
    }
    const index = finite(report.cell.index);
    return index !== null && Number.isInteger(index) && index >= 0 && index < cells.length ? index : null;
  }

  private markFailed(panel: NotebookPanel, report: IReport): void {
    const index = this.cellIndex(panel, report);
    if (index === null) {
      return;
    }
    const cell = panel.content.widgets[index];
    cell.addClass('kd-failed-cell');
    const model = cell.model as unknown as {
      outputs?: { add: (output: Record<string, unknown>) => number };
    };
    model.outputs?.add({
      output_type: 'error',
      ename: 'KernelDied',
      evalue: text(report.summary),
      // What happened and what to do; the evidence is behind the notification's Details.
      traceback: [
        text(report.summary),
        ...texts(report.advice).map(a => `  → ${shortPaths(a)}`),
        `The evidence: Details in the notification, or kernel-doctor show ${text(report.id)} --verbose`
      ]
    });
  }

  private details(panel: NotebookPanel, report: IReport): void {
    const content = new Widget();
    content.node.appendChild(renderReport(report));
    const widget = new MainAreaWidget({ content });
    widget.id = `kernel-doctor-${text(report.id)}`;
    widget.title.label = `Why the kernel died (${text(report.cause)})`;
    widget.title.closable = true;
    this.app.shell.add(widget, 'main', { mode: 'split-right' });
    const index = this.cellIndex(panel, report);
    if (index !== null) {
      panel.content.activeCellIndex = index;
      void panel.content.scrollToItem(index);
    }
  }

  private async poll(): Promise<void> {
    const panel = this.tracker.currentWidget;
    const kernelId = panel?.sessionContext.session?.kernel?.id;
    if (!kernelId) {
      this.status?.display(null);
      return;
    }
    try {
      const states = await api<IKernelState[]>('kernels');
      const state = states.find(s => s.kernel_id === kernelId) || null;
      this.status?.display(state);
      const ignored = state?.ignored_interrupt;
      const key = ignored ? `${kernelId}:${text(ignored.seq)}` : '';
      if (ignored && state?.busy && !this.seenIgnored.has(key)) {
        this.seenIgnored.add(key);
        Notification.warning(`kernel-doctor: ${text(ignored.summary)}`, { autoClose: false });
      }
    } catch (error) {
      this.status?.display(null);
    }
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'kernel-doctor:plugin',
  description: 'Why the kernel died, in the notebook; memory against the real limit.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [IStatusBar],
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker, statusBar: IStatusBar | null) => {
    let status: MemoryStatus | null = null;
    if (statusBar) {
      status = new MemoryStatus();
      statusBar.registerStatusItem('kernel-doctor:memory', {
        item: status,
        align: 'left',
        rank: 5,
        isActive: () => true
      });
    }
    new Doctor(app, tracker, status);
  }
};

export default plugin;
