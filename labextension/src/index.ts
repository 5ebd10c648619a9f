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
  stack?: { file: string; line: number; function: string }[];
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

function formatBytes(value: number | null | undefined): string {
  if (value === null || value === undefined) {
    return '?';
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let n = value;
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n >= 10 || i === 0 ? n.toFixed(0) : n.toFixed(1)} ${units[i]}`;
}

function escape(text: string): string {
  const div = document.createElement('div');
  div.textContent = text;
  return div.innerHTML;
}

function sparkline(timeline: [number, number][], limit: number | undefined): string {
  if (!timeline.length) {
    return '';
  }
  const width = 400;
  const height = 60;
  const t0 = timeline[0][0];
  const t1 = timeline[timeline.length - 1][0] || 1;
  const top = Math.max(limit || 0, ...timeline.map(p => p[1])) || 1;
  const points = timeline
    .map(([t, b]) => `${(((t - t0) / (t1 - t0 || 1)) * width).toFixed(1)},${(height - (b / top) * height).toFixed(1)}`)
    .join(' ');
  const limitY = limit ? (height - (limit / top) * height).toFixed(1) : null;
  return (
    `<svg class="kd-timeline" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">` +
    (limitY ? `<line x1="0" x2="${width}" y1="${limitY}" y2="${limitY}" stroke="#d32f2f" stroke-dasharray="4"/>` : '') +
    `<polyline fill="none" stroke="#1976d2" stroke-width="2" points="${points}"/></svg>`
  );
}

function renderReport(report: IReport): string {
  const parts = [`<h2>${escape(report.summary)}</h2>`];
  if (report.cell) {
    const lines = report.cell.source.split('\n').map((text, i) => {
      const mark = report.line === i + 1 ? ' class="kd-line"' : '';
      return `<span${mark}>${String(i + 1).padStart(3)}  ${escape(text)}</span>`;
    });
    parts.push(`<h3>Cell [${report.cell.execution_count ?? '?'}]</h3><pre>${lines.join('\n')}</pre>`);
  }
  const memory = report.memory || {};
  if (memory.timeline && memory.timeline.length) {
    parts.push(
      `<h3>Memory: peak ${formatBytes(memory.peak_bytes)} of ${formatBytes(memory.limit_bytes)}` +
        ` (${escape(memory.limit_source || '')})</h3>` +
        sparkline(memory.timeline, memory.limit_bytes)
    );
  }
  if (report.stack && report.stack.length) {
    const frames = report.stack.map(f => `${escape(f.function)}  ${escape(f.file)}, line ${f.line}`);
    parts.push(`<h3>Stack (innermost last)</h3><pre>${frames.join('\n')}</pre>`);
  }
  for (const [title, items] of [
    ['Evidence', report.evidence || []],
    ['What to do', report.advice || []]
  ] as [string, string[]][]) {
    if (items.length) {
      parts.push(`<h3>${title}</h3><ul>${items.map(i => `<li>${escape(i)}</li>`).join('')}</ul>`);
    }
  }
  return `<div class="kd-report">${parts.join('')}</div>`;
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
    this.node.title = `kernel-doctor: memory the limit counts, against ${limit_source || 'the limit'}`;
    const threshold = state.guard?.threshold_bytes;
    const near = threshold ? (counted_bytes || 0) >= threshold * 0.95 : false;
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
            (r.kernel?.connection_file || '').endsWith(`kernel-${kernelId}.json`) &&
            (r.kernel?.ended || 0) >= this.started - 5
        );
        if (report) {
          this.seenReports.add(report.id);
          const full = await api<IReport>(`reports/${report.id}`);
          this.markFailed(panel, full);
          Notification.error(full.summary, {
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
    return report.cell.index < cells.length ? report.cell.index : null;
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
      evalue: report.summary,
      traceback: [
        report.summary,
        ...(report.evidence || []).map(e => `  • ${e}`),
        ...(report.advice || []).map(a => `  → ${a}`)
      ]
    });
  }

  private details(panel: NotebookPanel, report: IReport): void {
    const content = new Widget();
    content.node.innerHTML = renderReport(report);
    const widget = new MainAreaWidget({ content });
    widget.id = `kernel-doctor-${report.id}`;
    widget.title.label = `Why the kernel died (${report.cause})`;
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
      const key = ignored ? `${kernelId}:${ignored.seq}` : '';
      if (ignored && state?.busy && !this.seenIgnored.has(key)) {
        this.seenIgnored.add(key);
        Notification.warning(`kernel-doctor: ${ignored.summary}`, { autoClose: false });
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
