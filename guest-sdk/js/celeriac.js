// celeriac.js: the JavaScript SDK for Celeriac task modules.
//
// A task module registers plain (sync or async) functions with `task(...)`;
// this file implements the world exports `tasks` and `call` of
// celeriac:task/task@0.1.0 (build.mjs re-exports them from the bundle's
// entry, so the author never writes them).
//
//   import { task, Retry, log } from 'celeriac';
//   task('add', ['a: integer', 'b: integer'], (a, b) => a + b);
//   task(function greet(name, greeting = 'hi') { ... }, { params: ['name', 'greeting?'] });
//
// Parameter specs: 'name', 'name?' (optional: missing or null -> undefined,
// so JS default values apply), optionally with ': type' where type is one of
// string, number, integer, boolean, array, object, any (default).

import {
  log as hostLog,
  info as hostInfo,
  shouldStop as hostShouldStop,
  progress as hostProgress,
} from 'celeriac:task/context@0.1.0';
import * as hostKv from 'celeriac:task/kv@0.1.0';
import { get as hostConfigGet } from 'wasi:config/store@0.2.0-rc.1';

// ---------------------------------------------------------------- errors

/** Base class: a failure with a WIT failure-kind. */
export class TaskError extends Error {
  constructor(kind, message, retryAfterMs) {
    super(message);
    this.name = new.target.name;
    this.kind = kind;
    this.retryAfterMs = retryAfterMs;
  }
}

/** Transient: the runtime retries the task. `after` = milliseconds to wait. */
export class Retry extends TaskError {
  constructor(message, { after } = {}) {
    super('retry', message, after);
  }
}

/** Permanent: the task fails and is not retried. */
export class Fatal extends TaskError {
  constructor(message) {
    super('fatal', message);
  }
}

/** The arguments do not fit the task: not retried. */
export class InvalidInput extends TaskError {
  constructor(message) {
    super('invalid-input', message);
  }
}

// ---------------------------------------------------------------- context

function fmt(parts) {
  return parts
    .map((p) => {
      if (typeof p === 'string') return p;
      if (p instanceof Error) return p.stack ? `${p.name}: ${p.message}\n${p.stack}` : `${p.name}: ${p.message}`;
      try {
        const s = JSON.stringify(p, (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
        return s === undefined ? String(p) : s;
      } catch {
        return String(p);
      }
    })
    .join(' ');
}

const emit = (level) => (...parts) => hostLog(level, fmt(parts));

/** Host log, tagged with the task id: log.info('x', obj) etc. */
export const log = Object.freeze({
  trace: emit('trace'),
  debug: emit('debug'),
  info: emit('info'),
  warn: emit('warn'),
  error: emit('error'),
});

// The engine is built without stdio: send console.* to the host log so that
// npm packages that print still reach someone.
globalThis.console = {
  ...globalThis.console,
  log: log.info, info: log.info, debug: log.debug, trace: log.trace,
  warn: log.warn, error: log.error,
};

const optMs = (v) => (v === undefined ? null : Number(v));

/** The running task: {id, module, name, retries, maxRetries, softRemainingMs, hardRemainingMs} (ms: number or null). */
export function taskInfo() {
  const i = hostInfo();
  return {
    id: i.id,
    module: i.module,
    name: i.name,
    retries: i.retries,
    maxRetries: i.maxRetries,
    softRemainingMs: optMs(i.softRemainingMs),
    hardRemainingMs: optMs(i.hardRemainingMs),
  };
}

/** True once the soft time limit has passed: return soon. */
export function shouldStop() {
  return hostShouldStop();
}

const u64 = (n) => (typeof n === 'bigint' ? (n < 0n ? 0n : n) : BigInt(Math.max(0, Math.trunc(Number(n)) || 0)));

/** Report progress (non-negative integers; numbers are truncated). */
export function progress(done, total) {
  hostProgress(u64(done), u64(total));
}

// ---------------------------------------------------------------- capabilities
// What the signed manifest grants. HTTP is the standard fetch() (wasi:http
// underneath; the host lets through only granted origins).

// A host call's error (jco throws the WIT error as `payload`, a
// `{ tag, val }` variant) as the failure kind it deserves.
function hostError(e) {
  const p = e && e.payload !== undefined ? e.payload : e;
  const message = p && typeof p === 'object' && 'val' in p ? String(p.val) : String(p);
  return p && p.tag === 'unavailable' ? new Retry(message) : new Fatal(message);
}

function hostCall(fn, ...args) {
  try {
    return fn(...args);
  } catch (e) {
    throw hostError(e);
  }
}

/** The worker's configuration value for `key` (undefined if it has none);
 * throws Fatal for a key the manifest does not grant (sign with --config). */
export function configGet(key) {
  const v = hostCall(hostConfigGet, String(key));
  return v === null ? undefined : v;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const asBytes = (v) => (typeof v === 'string' ? encoder.encode(v) : new Uint8Array(v));
const ttlMs = (seconds) =>
  seconds === undefined || seconds === null ? undefined : BigInt(Math.max(1, Math.round(Number(seconds) * 1000)));

/** The module's key-value state (needs `celeriac sign --kv`); TTLs in seconds. */
export const kv = Object.freeze({
  get: (key) => hostCall(hostKv.get, String(key)) ?? undefined,
  getString: (key) => {
    const v = hostCall(hostKv.get, String(key));
    return v === undefined || v === null ? undefined : decoder.decode(v);
  },
  set: (key, value, ttl) => hostCall(hostKv.set, String(key), asBytes(value), ttlMs(ttl)),
  setIfAbsent: (key, value, ttl) => hostCall(hostKv.setIfAbsent, String(key), asBytes(value), ttlMs(ttl)),
  delete: (key) => hostCall(hostKv.delete, String(key)),
  increment: (key, delta = 1) => Number(hostCall(hostKv.increment, String(key), BigInt(delta))),
});

// ---------------------------------------------------------------- registry

const registry = new Map();
const TYPES = new Set(['string', 'number', 'integer', 'boolean', 'array', 'object', 'any']);

function parseParam(spec, taskName) {
  const m = /^\s*([A-Za-z_$][\w$]*)\s*(\?)?\s*(?::\s*([a-z]+)\s*)?$/.exec(String(spec));
  if (!m || (m[3] && !TYPES.has(m[3]))) {
    throw new TypeError(`task ${taskName}: bad parameter spec ${JSON.stringify(spec)}`);
  }
  return { name: m[1], optional: !!m[2], type: m[3] || 'any' };
}

/**
 * Register a task:
 *   task('name', ['a', 'b?: string'], fn)
 *   task(fn, { name?: string, params?: string[] })   (name defaults to fn.name)
 * Registration runs at build time (Wizer snapshot), so mistakes fail the build.
 * Returns fn, so `export const add = task(...)` also works for unit tests.
 */
export function task(a, b, c) {
  let fn, name, params;
  if (typeof a === 'function') {
    fn = a;
    ({ name = fn.name, params = [] } = b || {});
  } else {
    [name, params, fn] = typeof b === 'function' ? [a, [], b] : [a, b, c];
  }
  if (typeof fn !== 'function') throw new TypeError(`task ${name}: not a function`);
  if (!name || typeof name !== 'string') throw new TypeError('task: a name is required');
  if (registry.has(name)) throw new TypeError(`task ${name}: registered twice`);
  if (!Array.isArray(params)) throw new TypeError(`task ${name}: params must be an array of names`);
  const specs = params.map((p) => parseParam(p, name));
  if (new Set(specs.map((p) => p.name)).size !== specs.length) {
    throw new TypeError(`task ${name}: duplicate parameter name`);
  }
  if (fn.length > specs.length) {
    throw new TypeError(`task ${name}: function takes ${fn.length} parameters but ${specs.length} were declared`);
  }
  registry.set(name, { fn, params: specs });
  return fn;
}

// ---------------------------------------------------------------- binding

// At most 64 characters (code points) of an argument in a message, then
// '…', as every SDK does: a 100 KB argument must not make a 100 KB reason.
const QUOTE_CHARS = 64;
function bounded(text) {
  const s = String(text);
  if (s.length <= QUOTE_CHARS) return s; // UTF-16 units >= code points
  let out = '';
  let n = 0;
  for (const ch of s) {
    if (n === QUOTE_CHARS) return `${out}…`;
    out += ch;
    n += 1;
  }
  return out;
}

// Mimic serde_json's wording so every guest language answers alike.
function describe(v) {
  if (v === null) return 'null';
  if (typeof v === 'boolean') return `boolean \`${v}\``;
  if (typeof v === 'number') return Number.isInteger(v) ? `integer \`${v}\`` : `floating point \`${v}\``;
  if (typeof v === 'string') return `string ${JSON.stringify(bounded(v))}`;
  if (Array.isArray(v)) return 'sequence';
  return 'map';
}

const EXPECTED = {
  string: ['a string', (v) => typeof v === 'string'],
  number: ['a number', (v) => typeof v === 'number'],
  integer: ['an integer', (v) => Number.isInteger(v)],
  boolean: ['a boolean', (v) => typeof v === 'boolean'],
  array: ['a sequence', (v) => Array.isArray(v)],
  object: ['a map', (v) => v !== null && typeof v === 'object' && !Array.isArray(v)],
};

function kindOf(v) {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  return typeof v === 'number' ? 'a number' : typeof v === 'string' ? 'a string' : 'a boolean';
}

function parseJson(text, what) {
  if (text.trim() === '') return null;
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new InvalidInput(`${what} is not valid JSON: ${e.message}`);
  }
}

function bind(name, params, argsText, kwargsText) {
  let args = parseJson(argsText, 'args') ?? [];
  let kwargs = parseJson(kwargsText, 'kwargs') ?? {};
  if (!Array.isArray(args)) throw new InvalidInput(`${name}: args must be a JSON array, got ${kindOf(args)}`);
  if (typeof kwargs !== 'object' || Array.isArray(kwargs)) {
    throw new InvalidInput(`${name}: kwargs must be a JSON object, got ${kindOf(kwargs)}`);
  }
  if (args.length > params.length) {
    const n = params.length;
    throw new InvalidInput(`${name}() takes ${n} positional argument${n === 1 ? '' : 's'} but ${args.length} were given`);
  }
  for (const key of Object.keys(kwargs)) {
    const i = params.findIndex((p) => p.name === key);
    if (i < 0) throw new InvalidInput(`${name}() got an unexpected keyword argument \`${bounded(key)}\``);
    if (i < args.length) throw new InvalidInput(`${name}() got multiple values for argument \`${bounded(key)}\``);
  }
  return params.map((p, i) => {
    let v = i < args.length ? args[i] : Object.hasOwn(kwargs, p.name) ? kwargs[p.name] : undefined;
    if (p.optional && v === null) v = undefined;
    if (v === undefined) {
      if (p.optional) return undefined;
      throw new InvalidInput(`${name}() missing required argument \`${p.name}\``);
    }
    const check = EXPECTED[p.type];
    if (check && !check[1](v)) {
      throw new InvalidInput(`argument \`${p.name}\`: invalid type: ${describe(v)}, expected ${check[0]}`);
    }
    return v;
  });
}

// SpiderMonkey's JSON.stringify reserves far more than it needs for one big
// string (a 1 MB string peaks at ~140 MB of linear memory), so quote big
// top-level strings in chunks. Nested big strings still go the slow way.
const CHUNK = 1 << 15;
function encode(value) {
  if (typeof value !== 'string' || value.length <= CHUNK) return JSON.stringify(value);
  const parts = [];
  for (let i = 0; i < value.length; ) {
    let j = Math.min(i + CHUNK, value.length);
    const c = value.charCodeAt(j - 1);
    if (j < value.length && c >= 0xd800 && c <= 0xdbff) j++; // keep a surrogate pair together
    parts.push(JSON.stringify(value.slice(i, j)).slice(1, -1));
    i = j;
  }
  return `"${parts.join('')}"`;
}

function toFailure(e) {
  if (e instanceof TaskError) {
    const after = e.retryAfterMs;
    return {
      kind: e.kind,
      message: String(e.message),
      retryAfterMs: e.kind === 'retry' && after != null ? u64(after) : undefined,
    };
  }
  if (e instanceof Error) {
    if (e.stack) hostLog('debug', `${e.name}: ${e.message}\n${e.stack}`);
    return { kind: 'fatal', message: `${e.name}: ${e.message}` };
  }
  // SpiderMonkey reports out-of-memory as a thrown string, not an Error
  return { kind: 'fatal', message: typeof e === 'string' ? e : `uncaught: ${fmt([e])}` };
}

// ---------------------------------------------------------------- world exports

/** WIT `tasks: func() -> list<string>` */
export function tasks() {
  return [...registry.keys()];
}

/**
 * WIT `call: func(name, args, kwargs) -> result<string, failure>`.
 * Never throws: componentize-js traps on a thrown Error that has no
 * `payload`, so we return the result variant explicitly.
 */
export async function call(name, argsText, kwargsText) {
  try {
    const t = registry.get(name);
    if (!t) {
      throw new InvalidInput(`unknown task \`${bounded(name)}\`; this module serves: ${tasks().join(', ')}`);
    }
    const value = await t.fn(...bind(name, t.params, argsText, kwargsText));
    let json;
    try {
      json = encode(value);
    } catch (e) {
      throw new Fatal(`could not encode the result as JSON: ${e instanceof Error ? e.message : fmt([e])}`);
    }
    return { tag: 'ok', val: json === undefined ? 'null' : json };
  } catch (e) {
    try {
      return { tag: 'err', val: toFailure(e) };
    } catch {
      return { tag: 'err', val: { kind: 'fatal', message: 'task failed (unprintable error)' } };
    }
  }
}
