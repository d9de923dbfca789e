/**
 * The JSON body parser: UTF-8 only, no byte-order mark, no duplicate keys, no
 * prototype keys. JSON.parse keeps the last of two equal keys, so
 * `{"target":"evil/…","target":"<allowed>"}` would mean one thing to Ferry and
 * another to a proxy or log reader that keeps the first; such a body is refused
 * naming the key. The scanner below walks the text JSON.parse has accepted —
 * a few lines, no new dependency (secure-json-parse, which fastify uses,
 * catches prototype keys but not duplicates, and we need the walk anyway).
 */
import type { FastifyInstance } from 'fastify';
import { ApiError } from './errors';

interface Frame {
  keys: Set<string> | undefined; // undefined: an array
  expectKey: boolean;
  /** The key this object is the value of ('' at the top, or in an array). */
  parentKey: string;
  path: string;
}

/** The first duplicate or prototype-poisoning key of valid JSON text, with its path; undefined if none. */
export function findBadKey(
  text: string,
): { key: string; path: string; why: 'duplicate' | 'prototype' } | undefined {
  const stack: Frame[] = [];
  let lastKey = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    const top = stack[stack.length - 1];
    if (c === '{' || c === '[') {
      const parentKey = top?.keys ? lastKey : '';
      const path = top
        ? top.keys
          ? top.path
            ? `${top.path}.${lastKey}`
            : lastKey
          : top.path
        : '';
      stack.push({
        keys: c === '{' ? new Set() : undefined,
        expectKey: c === '{',
        parentKey,
        path,
      });
    } else if (c === '}' || c === ']') {
      stack.pop();
    } else if (c === ',') {
      if (top?.keys) top.expectKey = true;
    } else if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      if (top?.keys && top.expectKey) {
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        const path = top.path ? `${top.path}.${key}` : key;
        if (top.keys.has(key)) return { key, path, why: 'duplicate' };
        if (key === '__proto__' || (key === 'prototype' && top.parentKey === 'constructor')) {
          return { key, path, why: 'prototype' };
        }
        top.keys.add(key);
        top.expectKey = false;
        lastKey = key;
      }
      i = j;
    }
  }
  return undefined;
}

const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** The charset parameter of a Content-Type, lower-cased; undefined when there is none. */
function charsetOf(contentType: string | undefined): string | undefined {
  const m = /;\s*charset\s*=\s*"?([^";\s]+)"?/i.exec(contentType ?? '');
  return m ? m[1]!.toLowerCase() : undefined;
}

/** Decodes and checks a JSON body; throws the ApiError to answer with. */
export function parseJsonBody(body: Buffer, contentType: string | undefined): unknown {
  const charset = charsetOf(contentType);
  if (charset !== undefined && charset !== 'utf-8' && charset !== 'utf8') {
    throw new ApiError(
      'FERRY_UNSUPPORTED_MEDIA_TYPE',
      `charset ${JSON.stringify(charset)} is not accepted: send the JSON body as UTF-8`,
    );
  }
  if (
    (body[0] === 0xef && body[1] === 0xbb && body[2] === 0xbf) ||
    (body[0] === 0xfe && body[1] === 0xff) ||
    (body[0] === 0xff && body[1] === 0xfe)
  ) {
    throw new ApiError(
      'FERRY_BAD_JSON',
      'the body starts with a byte-order mark: send UTF-8 JSON without one',
    );
  }
  let text: string;
  try {
    text = UTF8.decode(body);
  } catch {
    throw new ApiError('FERRY_BAD_JSON', 'the body is not valid UTF-8');
  }
  if (text.trim() === '') throw new ApiError('FERRY_BAD_JSON', 'the body is empty');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new ApiError('FERRY_BAD_JSON', `the body is not valid JSON: ${(err as Error).message}`);
  }
  const bad = findBadKey(text);
  if (bad?.why === 'duplicate') {
    throw new ApiError(
      'FERRY_BAD_JSON',
      `the key ${JSON.stringify(bad.key)} appears twice in the same object`,
      bad.path,
    );
  }
  if (bad) {
    throw new ApiError(
      'FERRY_BAD_JSON',
      `the key ${JSON.stringify(bad.key)} is not allowed`,
      bad.path,
    );
  }
  return value;
}

/** Replaces fastify's application/json parser with parseJsonBody (same body limit). */
export function installJsonParser(app: FastifyInstance): void {
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (req, body, done) => {
    try {
      done(null, parseJsonBody(body as Buffer, req.headers['content-type']));
    } catch (err) {
      done(err as Error, undefined);
    }
  });
}
