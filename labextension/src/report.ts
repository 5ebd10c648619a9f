/** The Details panel: one report, as a person reads it. */
import { memoryChart } from './chart';
import { element, finite, formatBytes, preOf, text, texts } from './dom';
import { cellPlace, framePlace } from './naming';

export interface IReport {
  id: string;
  cause: string | null;
  summary: string;
  line: number | null;
  cell: { index: number; execution_count: number | null; id: string | null; source: string } | null;
  kernel: { connection_file?: string; started?: number; ended?: number } | null;
  evidence?: string[];
  advice?: string[];
  stack?: {
    file: string;
    line: number | null;
    function: string;
    cell_index?: number | null;
    execution_count?: number | null;
  }[];
  memory?: {
    peak_bytes?: number;
    limit_bytes?: number;
    limit_source?: string;
    timeline?: [number, number][];
    threshold_bytes?: number | null;
    cell_starts?: [number, number | null][];
  };
}


/**
 * The Details panel, built with DOM calls: every value from the report is set as text
 * (or, for the timeline, as numbers checked finite), so none is ever parsed as HTML.
 * What happened and what to do first; the evidence and full paths are here, one
 * click from the notification.
 */
export function renderReport(report: IReport): HTMLElement {
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
  const died = finite(report.kernel?.ended);
  const started = finite(report.kernel?.started);
  const chart = memoryChart({
    timeline: memory.timeline,
    limit: memory.limit_bytes,
    threshold: memory.threshold_bytes,
    cellStarts: memory.cell_starts,
    death: died !== null && started !== null ? died - started : null
  });
  if (chart) {
    root.appendChild(
      element(
        'h3',
        `Memory: peak ${formatBytes(memory.peak_bytes)} of ${formatBytes(memory.limit_bytes)}` +
          ` (${text(memory.limit_source)})`
      )
    );
    root.appendChild(chart);
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
