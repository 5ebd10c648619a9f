/**
 * Where the running cell is now: a marker beside the line it is on, and "In [7] line
 * 12, 0:42" in the status bar, from the server's kernel list (the agent's watcher
 * notes the running line about once a second). The marker appears only once a cell has
 * run for a couple of seconds: a short cell would only make it flicker.
 */
import { NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { element, finite, text } from './dom';
import { cellName } from './naming';

/** What the kernel list says of the running cell (GET /kernel-doctor/api/kernels). */
export interface IRunning {
  busy: boolean;
  line: number | null;
  execution_count: number | null;
  cell_id: string | null;
  elapsed: number | null;
}

export const MARK_AFTER_S = 2;

/** 42 → "0:42", 3725 → "1:02:05". */
export function clock(seconds: number): string {
  const s = Math.floor(seconds);
  const two = (n: number): string => String(n).padStart(2, '0');
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h}:${two(m)}:${two(s % 60)}` : `${m}:${two(s % 60)}`;
}

export class RunningStatus extends Widget {
  constructor() {
    super();
    this.addClass('kd-running');
    this.node.title = 'kernel-doctor: the running cell, the line it is on, how long it has run';
  }

  display(running: IRunning | null): void {
    const elapsed = finite(running?.elapsed);
    if (!running || !running.busy || elapsed === null) {
      this.node.textContent = '';
      this.hide();
      return;
    }
    const line = finite(running.line);
    const name = cellName(finite(running.execution_count), null, 'Running');
    this.node.textContent = `${name}${line ? ` line ${line}` : ''}, ${clock(elapsed)}`;
    this.show();
  }
}

/** The marker on the running cell's current line, moved (or removed) at each poll. */
export class RunningLine {
  private marker: HTMLElement = element('div', '▶', 'kd-running-marker');
  private band: HTMLElement = element('div', undefined, 'kd-running-band');

  constructor() {
    this.marker.title = 'kernel-doctor: the line this cell is running now';
  }

  show(panel: NotebookPanel | null, running: IRunning | null): void {
    const line = finite(running?.line);
    const elapsed = finite(running?.elapsed);
    const cell = panel && running ? this.runningCell(panel, running) : null;
    if (!cell || !running?.busy || line === null || elapsed === null || elapsed < MARK_AFTER_S) {
      this.clear();
      return;
    }
    // The editor's own coordinates of the line (null while it is not rendered).
    const where = cell.editor?.getCoordinateForPosition({ line: line - 1, column: 0 });
    if (!where) {
      this.clear();
      return;
    }
    const box = cell.node.getBoundingClientRect();
    const editor = cell.editorWidget?.node.getBoundingClientRect();
    const top = where.top - box.top;
    const height = Math.max(where.bottom - where.top, 12);
    cell.node.classList.add('kd-has-running-line');
    this.marker.dataset.line = String(line);
    this.marker.style.top = `${top}px`;
    this.marker.style.height = `${height}px`;
    this.marker.style.left = `${(editor ? editor.left - box.left : 0) - 16}px`;
    this.band.style.top = `${top}px`;
    this.band.style.height = `${height}px`;
    this.band.style.left = `${editor ? editor.left - box.left : 0}px`;
    this.band.style.width = `${editor ? editor.width : box.width}px`;
    for (const node of [this.band, this.marker]) {
      if (node.parentElement !== cell.node) {
        cell.node.appendChild(node);
      }
    }
  }

  clear(): void {
    this.marker.parentElement?.classList.remove('kd-has-running-line');
    this.marker.remove();
    this.band.remove();
  }

  /** The cell by the id JupyterLab sent with the request, else the one it marks running. */
  private runningCell(panel: NotebookPanel, running: IRunning): NotebookPanel['content']['widgets'][number] | null {
    const cells = panel.content.widgets;
    const id = text(running.cell_id);
    const byId = id ? cells.find(c => c.model.id === id) : undefined;
    if (byId) {
      return byId;
    }
    return (
      cells.find(c => (c.model as unknown as { executionState?: string }).executionState === 'running') || null
    );
  }
}
