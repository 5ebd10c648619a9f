/**
 * kernel-doctor in JupyterLab 4 and Notebook 7.
 *
 * When the open notebook's kernel dies, the diagnosis comes as a notification with a
 * Details action, and the cell that was running is marked failed with the diagnosis
 * as its error output (JupyterLab would put its prompt back to [ ] and say nothing).
 * A status-bar item shows this kernel's memory against the limit that really applies.
 * Guard trips, ignored interrupts and workers' deaths are notified the same way. While a cell runs, its
 * current line is marked and named in the status bar (running.ts); JupyterLab's own
 * "Kernel Restarting" dialog gives way to our one message (dialog.ts). Everything
 * comes from the kernel-doctor server extension (/kernel-doctor/api).
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
import { ITranslator } from '@jupyterlab/translation';
import { Widget } from '@lumino/widgets';

import { CoreDeathDialog } from './dialog';
import { finite, formatBytes, text, texts } from './dom';
import { shortPaths } from './naming';
import { IReport, renderReport } from './report';
import { IRunning, RunningLine, RunningStatus } from './running';

interface IKernelState extends IRunning {
  kernel_id: string;
  memory: { counted_bytes: number | null; limit_bytes: number | null; limit_source: string | null };
  guard: { enabled?: boolean; threshold_bytes?: number } | null;
  ignored_interrupt: { seq: number; summary: string } | null;
  child_deaths?: { pid: number; t: number; cause: string; summary: string }[];
}

// The running line is followed once a second while the kernel is busy; memory and
// the rest every other second while it is idle.
const POLL_MS = 1000;
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
  private seenChildren = new Set<string>();
  private started = Date.now() / 1000;
  private supervised = new Set<string>(); // kernel ids ever seen supervised
  private notices = new Map<string, string>(); // kernel id → its death's notification
  private runningLine = new RunningLine();
  private ticks = 0;

  constructor(
    private app: JupyterFrontEnd,
    private tracker: INotebookTracker,
    private status: MemoryStatus | null,
    private running: RunningStatus | null,
    private coreDialog: CoreDeathDialog
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
        if (!kernelId) {
          return;
        }
        if (status === 'autorestarting' && this.supervised.has(kernelId) && !this.notices.has(kernelId)) {
          // One message: the core's dialog goes, our notification says it and then why.
          this.coreDialog.replace(panel);
          const { body } = this.coreDialog.words(panel);
          this.notices.set(
            kernelId,
            Notification.emit(`${body} kernel-doctor is finding out why…`, 'in-progress', { autoClose: false })
          );
        }
        void this.waitForReport(panel, kernelId);
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
          const options = {
            autoClose: false as const,
            actions: [
              { label: 'Details', callback: () => this.details(panel, full) },
              {
                label: 'Restore variables',
                callback: (event: MouseEvent) => {
                  event.preventDefault(); // the death's notification stays, with its Details
                  void this.restore(panel);
                }
              }
            ]
          };
          const notice = this.notices.get(kernelId);
          this.notices.delete(kernelId);
          if (notice === undefined || !Notification.update({ id: notice, message: text(full.summary), type: 'error', ...options })) {
            Notification.error(text(full.summary), options);
          }
          return;
        }
      } catch (error) {
        console.warn('kernel-doctor:', error);
      }
      await new Promise(resolve => window.setTimeout(resolve, 1000));
    }
    // No diagnosis came: the notification says what the core dialog would have.
    const notice = this.notices.get(kernelId);
    if (notice !== undefined) {
      this.notices.delete(kernelId);
      const { body } = this.coreDialog.words(panel);
      Notification.update({ id: notice, message: body, type: 'warning', autoClose: false });
    }
  }

  /** `%doctor restore` in the new kernel, out of the notebook: what it said, as a toast. */
  private async restore(panel: NotebookPanel): Promise<void> {
    const kernel = panel.sessionContext.session?.kernel;
    if (!kernel) {
      Notification.warning('kernel-doctor: no kernel to restore the variables into yet.', { autoClose: 10000 });
      return;
    }
    const said: string[] = [];
    const future = kernel.requestExecute({ code: '%doctor restore', store_history: false, silent: false });
    future.onIOPub = msg => {
      const content = msg.content as { text?: unknown; data?: Record<string, unknown>; ename?: unknown; evalue?: unknown };
      const kind = msg.header.msg_type;
      if (kind === 'stream') {
        said.push(text(content.text));
      } else if (kind === 'display_data' || kind === 'execute_result') {
        said.push(text(content.data?.['text/plain']));
      } else if (kind === 'error') {
        said.push(`${text(content.ename)}: ${text(content.evalue)}`);
      }
    };
    await future.done;
    const first = said.join('').trim().split('\n')[0] || 'Nothing was restored.';
    if (first.startsWith('Restored')) {
      Notification.success(`kernel-doctor: ${first}`, { autoClose: 15000 });
    } else {
      Notification.warning(`kernel-doctor: ${first}`, { autoClose: 15000 });
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
    const busy = panel?.sessionContext.kernelDisplayStatus === 'busy';
    if (!busy && this.ticks++ % 2) {
      this.runningLine.clear();
      this.running?.display(null);
      return;
    }
    if (!kernelId) {
      this.status?.display(null);
      this.running?.display(null);
      this.runningLine.clear();
      return;
    }
    try {
      const states = await api<IKernelState[]>('kernels');
      // Kept once seen: a kernel that just died has left the list by the time the
      // server's restarter notices and says 'autorestarting'.
      states.forEach(s => this.supervised.add(s.kernel_id));
      const state = states.find(s => s.kernel_id === kernelId) || null;
      this.status?.display(state);
      this.running?.display(state);
      this.runningLine.show(this.tracker.currentWidget === panel ? panel : null, state);
      const ignored = state?.ignored_interrupt;
      const key = ignored ? `${kernelId}:${text(ignored.seq)}` : '';
      if (ignored && state?.busy && !this.seenIgnored.has(key)) {
        this.seenIgnored.add(key);
        Notification.warning(`kernel-doctor: ${text(ignored.summary)}`, { autoClose: false });
      }
      // A worker of this kernel died (the kernel lives): the cell was told too.
      for (const death of Array.isArray(state?.child_deaths) ? state!.child_deaths : []) {
        const id = `${kernelId}:${text(death.pid)}:${text(death.t)}`;
        const t = finite(death.t);
        if (this.seenChildren.has(id) || t === null || t < this.started - 5) {
          continue;
        }
        this.seenChildren.add(id);
        Notification.error(text(death.summary).replace(/^kernel-doctor: /, ''), {
          autoClose: false
        });
      }
    } catch (error) {
      this.status?.display(null);
      this.running?.display(null);
      this.runningLine.clear();
    }
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'kernel-doctor:plugin',
  description: 'Why the kernel died, in the notebook; memory against the real limit.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [IStatusBar, ITranslator],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    statusBar: IStatusBar | null,
    translator: ITranslator | null
  ) => {
    let status: MemoryStatus | null = null;
    let running: RunningStatus | null = null;
    if (statusBar) {
      status = new MemoryStatus();
      statusBar.registerStatusItem('kernel-doctor:memory', {
        item: status,
        align: 'left',
        rank: 5,
        isActive: () => true
      });
      running = new RunningStatus();
      statusBar.registerStatusItem('kernel-doctor:running', {
        item: running,
        align: 'left',
        rank: 6,
        isActive: () => true
      });
    }
    new Doctor(app, tracker, status, running, new CoreDeathDialog(translator || undefined));
  }
};

export default plugin;
