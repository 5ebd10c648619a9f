/** Plain values from the server and DOM built without parsing HTML. */
/** A finite number from a server value (a number or a numeric string), else null. */
export function finite(value: unknown): number | null {
  if (typeof value !== 'number' && (typeof value !== 'string' || value.trim() === '')) {
    return null;
  }
  const n = Number(value);
  return Number.isFinite(n) ? n : null;
}

/** A server value as plain text ('' for null or undefined). */
export function text(value: unknown): string {
  return value === null || value === undefined ? '' : String(value);
}

/** A server list as a list of strings ([] if it is not a list). */
export function texts(value: unknown): string[] {
  return Array.isArray(value) ? value.map(text) : [];
}

export function formatBytes(value: unknown): string {
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

/** An HTML element whose content, if any, is set as text (never parsed as HTML). */
export function element<K extends keyof HTMLElementTagNameMap>(
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
export function svgElement(tag: string, attributes: Record<string, number | string>): SVGElement {
  const node = document.createElementNS(SVG_NS, tag) as SVGElement;
  for (const [name, value] of Object.entries(attributes)) {
    node.setAttribute(name, String(value));
  }
  return node;
}

/** A <pre> of lines, one text node each, separated by newlines. */
export function preOf(lines: Node[]): HTMLPreElement {
  const pre = element('pre');
  lines.forEach((line, i) => {
    if (i > 0) {
      pre.appendChild(document.createTextNode('\n'));
    }
    pre.appendChild(line);
  });
  return pre;
}
