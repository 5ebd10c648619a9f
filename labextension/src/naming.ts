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
export function cellName(count: number | null, index: number | null, unknown: string): string {
  if (count !== null) {
    return `In [${count}]`;
  }
  if (index !== null) {
    return `the ${ordinal(index + 1)} cell`;
  }
  return unknown;
}

export function cellPlace(
  count: number | null,
  index: number | null,
  line: number | null,
  unknown = 'the running cell'
): string {
  const name = cellName(count, index, unknown);
  return line ? `${name}, line ${line}` : name;
}

/** "/sys/fs/cgroup/…/kernel-doctor-1-0" for a long absolute path. */
export function shortPath(path: string): string {
  const parts = path.split('/');
  if (path.length <= LONG_PATH || !path.startsWith('/') || parts.length <= 5) {
    return path;
  }
  return [...parts.slice(0, 4), '…', parts[parts.length - 1]].join('/');
}

/** Every long absolute path in a sentence shortened (Details shows them whole). */
export function shortPaths(sentence: string): string {
  return sentence.replace(/(^|[^\w/.~:-])(\/[^\s()'"]+)/g, (_, before: string, path: string) => {
    const body = path.replace(/[.,;:]+$/, '');
    return before + shortPath(body) + path.slice(body.length);
  });
}

/** A source file as a person knows it: an installed package's path from the package on. */
export function shortFile(path: string): string {
  for (const marker of ['site-packages/', 'dist-packages/', '/lib/python3']) {
    const at = path.indexOf(marker);
    if (at >= 0) {
      return path.slice(at + marker.length).replace(/^[0-9./]+/, '');
    }
  }
  return shortPath(path);
}

/** Where a stack frame is: "In [3], line 3" for a cell's code, else the file. */
export function framePlace(file: string, line: number | null, count: number | null, index: number | null): string {
  const match = CELL_FILE.exec(file);
  if (count === null && match && match[3]) {
    count = Number(match[3]);
  }
  if (match || count !== null || index !== null) {
    return cellPlace(count, index, line, 'a cell');
  }
  return line ? `${shortFile(file)}, line ${line}` : shortFile(file);
}
