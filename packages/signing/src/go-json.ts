/**
 * JSON as Go's encoding/json writes it, which cosign, containers/image,
 * libtrust and docker/distribution all use: `<`, `>`, `&`, U+2028 and U+2029
 * escaped as \u00XX / \u20XX, and \b / \f written as \u0008 / \u000c.
 * Key order is the caller's (build objects in the order the Go struct
 * declares its fields, or sorted for a Go map).
 */

const GO_ESCAPES: Record<string, string> = {
  '<': '\\u003c',
  '>': '\\u003e',
  '&': '\\u0026',
  '\u2028': '\\u2028',
  '\u2029': '\\u2029',
};

/** Rewrites JSON.stringify output into Go's spelling of the same strings. */
function goSpelling(json: string): string {
  return json
    .replace(/[<>&\u2028\u2029]/g, (c) => GO_ESCAPES[c] as string)
    .replace(/\\(\\|b|f)/g, (m, c: string) => (c === 'b' ? '\\u0008' : c === 'f' ? '\\u000c' : m));
}

/** json.Marshal(value). */
export function goJson(value: unknown): string {
  return goSpelling(JSON.stringify(value));
}

/** json.MarshalIndent(value, prefix, indent) for a non-empty prefix or indent. */
export function goJsonIndent(value: unknown, indent: string, prefix = ''): string {
  const text = goSpelling(JSON.stringify(value, null, indent));
  return prefix ? text.replace(/\n/g, '\n' + prefix) : text;
}

/** A copy of a plain object with its keys sorted, as Go marshals a map. */
export function sortedKeys<T>(obj: Record<string, T>): Record<string, T> {
  const out: Record<string, T> = {};
  for (const k of Object.keys(obj).sort()) out[k] = obj[k] as T;
  return out;
}
