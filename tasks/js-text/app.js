// js-text: the `text` module (same tasks and answers as tasks/text in Rust),
// plus a few tasks that lean on the JS ecosystem.
import { task, log, progress, shouldStop, taskInfo, Retry, Fatal, InvalidInput, configGet, kv } from 'celeriac';
import { sha256 as nobleSha256 } from '@noble/hashes/sha2.js';
import { bytesToHex } from '@noble/hashes/utils.js';
import { format, isValid, parseISO } from 'date-fns';
import { de, enGB, enUS, es, fr, ja } from 'date-fns/locale';
import Papa from 'papaparse';
import { words } from './words.js';

// Plain charCodeAt loops: StarlingMonkey interprets JS (no JIT in wasm) and
// its regexes are slow, so these are the fastest shapes measured on 1 MB
// (`words`, shared with bench/bullmq, is in words.js).

// Rust str::lines(): split on \n (a trailing \r is dropped, not counted), no final empty line.
function lines(s) {
  if (s === '') return 0;
  let n = 1;
  for (let i = s.indexOf('\n'); i !== -1; i = s.indexOf('\n', i + 1)) n++;
  return s.endsWith('\n') ? n - 1 : n;
}

const PAIR = /[\ud800-\udbff][\udc00-\udfff]/g;
const codePoints = (s) => s.length - (s.length - s.replace(PAIR, '').length) / 2;
const utf8 = (s) => new TextEncoder().encode(s);

// Reverse by code points (surrogate pairs kept in order).
function reverse(s) {
  const n = s.length, out = new Uint16Array(n);
  for (let i = 0, j = n; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < n) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) { out[j - 2] = c; out[j - 1] = d; j -= 2; i++; continue; }
    }
    out[--j] = c;
  }
  return new TextDecoder('utf-16le').decode(out);
}

// WebCrypto is there in StarlingMonkey today (native, ~150x faster than
// pure JS here) but is not promised: fall back to @noble/hashes.
async function sha256Hex(text) {
  const bytes = utf8(text);
  if (globalThis.crypto?.subtle?.digest) {
    try {
      return bytesToHex(new Uint8Array(await crypto.subtle.digest('SHA-256', bytes)));
    } catch { /* fall through */ }
  }
  return bytesToHex(nobleSha256(bytes));
}

/** Lower-case hex SHA-256 of the UTF-8 bytes of `text`. */
task('sha256', ['text: string'], sha256Hex);

/** Number of whitespace-separated words. */
task('word_count', ['text: string'], (text) => words(text));

/** Upper-cased text (Unicode-aware, locale-independent like Rust). */
task('upper', ['text: string'], (text) => text.toUpperCase());

/** Text with its code points in reverse order. */
task('reverse', ['text: string'], reverse);

/** Byte, character, word and line counts. */
task('stats', ['text: string'], (text) => ({
  bytes: utf8(text).length,
  chars: codePoints(text),
  words: words(text),
  lines: lines(text),
}));

// ---- beyond the Rust module: the npm ecosystem ----
// (StarlingMonkey has no Intl, no String.prototype.normalize and no \p{..}
// regex escapes, so locale work goes through pure-JS packages.)

const LOCALES = { 'en-US': enUS, 'en-GB': enGB, de, fr, es, ja };

/** Format an ISO-8601 date with date-fns (pattern tokens: https://date-fns.org/docs/format), in UTC. */
task('format_date', ['iso: string', 'pattern?: string', 'locale?: string'], (iso, pattern = 'PPPPpppp', locale = 'en-US') => {
  const loc = LOCALES[locale];
  if (!loc) throw new InvalidInput(`unknown locale \`${locale}\`; known: ${Object.keys(LOCALES).join(', ')}`);
  const d = parseISO(iso);
  if (!isValid(d)) throw new InvalidInput(`not an ISO-8601 date: ${JSON.stringify(iso)}`);
  try {
    return format(d, pattern, { locale: loc });
  } catch (e) {
    throw new InvalidInput(e.message); // bad pattern token
  }
});

/** Parse CSV text (header row) into a list of objects with papaparse; numbers and booleans typed. */
task('csv_to_json', ['csv: string', 'delimiter?: string'], (csv, delimiter = '') => {
  const rows = [];
  const total = csv.length;
  let errors = [], stopped = false;
  Papa.parse(csv, {
    header: true,
    delimiter,
    dynamicTyping: true,
    skipEmptyLines: true,
    step(result, parser) {
      rows.push(result.data);
      errors = errors.concat(result.errors);
      if (rows.length % 1000 === 0) {
        progress(result.meta.cursor, total);
        if (shouldStop()) { stopped = true; parser.abort(); }
      }
    },
  });
  if (stopped) throw new Retry(`soft limit hit after ${rows.length} rows`, { after: 1000 });
  if (errors.length) {
    const e = errors[0];
    throw new InvalidInput(`CSV row ${e.row ?? '?'}: ${e.message} (${errors.length} error(s))`);
  }
  progress(total, total);
  log.info(`parsed ${rows.length} CSV rows`);
  return rows;
});

/** The text back, once retried `after` times: a transient failure until then. */
task('eventually', ['text: string', 'after: integer'], (text, after) => {
  const { retries } = taskInfo();
  if (retries < after) throw new Retry(`not yet: attempt ${retries + 1} of ${after + 1}`);
  return text;
});

/** The text back if it is ASCII; a permanent failure naming the first other character. */
task('ascii', ['text: string'], (text) => {
  let i = 0;
  for (const ch of text) {
    if (ch.codePointAt(0) >= 0x80) throw new Fatal(`not ASCII: \`${ch}\` at character ${i}`);
    i++;
  }
  return text;
});

/** The n-th Fibonacci number, naively: the CPU-bound benchmark (as math.fib and Python's fib). */
const fib = (n) => (n < 2 ? n : fib(n - 1) + fib(n - 2));
task('fib', ['n: integer'], (n) => {
  if (!(n >= 0 && n <= 35)) throw new InvalidInput(`n must be between 0 and 35, got ${n}`);
  return fib(n);
});

/** How many times this task ran in this instance: 1 in a fresh one, n for the n-th of a reused one. */
let callCount = 0;
task('calls', [], () => ++callCount);

// ---------------------------------------------------------------- capabilities
// Granted in the signed manifest. fetch() is the standard one (wasi:http).

task('get', ['url: string'], async (url) => {
  let r;
  try {
    r = await fetch(url);
  } catch (e) {
    throw new Retry(`GET ${url}: ${e.message ?? e}`);
  }
  const body = await r.text();
  return { status: r.status, body: body.slice(0, 1024) };
});

task('config_has', ['key: string'], (key) => configGet(key) !== undefined);

task('counter', ['key: string'], (key) => kv.increment(key));
