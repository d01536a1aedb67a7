/* Celeriac console: app.js (vanilla JS, no build step).
 *
 * Owns, top to bottom:
 *   helpers     el() builds DOM nodes; API strings only ever go in through
 *               textContent / text nodes / attributes, never innerHTML.
 *   api()       fetch wrapper for /api/v1: sends the bearer token, turns the
 *               `{"error": ...}` body into an Error, sends any 401 to sign-in.
 *   auth        sign-in form, token in sessionStorage, anonymous mode.
 *   live        /api/v1/events read with fetch() + a text/event-stream parser,
 *               reconnecting with Last-Event-ID (backoff 1 s to 10 s).
 *   store       latest state per task id (last 2000) and failure events.
 *   router      #/overview, #/tasks, #/failures, #/dead-letters,
 *               #/components, #/workers, #/task/<id>; one page function each.
 * A page gets a context (ctx) whose timers and listeners end when it is left.
 */
'use strict';
(() => {

// ---------------------------------------------------------------- helpers

const $ = (sel, root = document) => root.querySelector(sel);
const enc = encodeURIComponent;

/** Element with attributes and children; strings become text nodes. */
function el(tag, attrs, ...kids) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') n.className = v;
    else if (k === 'text') n.textContent = String(v);
    else if (k.startsWith('on')) n.addEventListener(k.slice(2), v);
    else n.setAttribute(k, v === true ? '' : String(v));
  }
  for (const kid of kids.flat()) {
    if (kid == null || kid === false) continue;
    n.append(kid instanceof Node ? kid : String(kid));
  }
  return n;
}

const taskLink = (id) => el('a', { href: '#/task/' + enc(id), class: 'mono', text: id });
const pad = (n) => String(n).padStart(2, '0');

function fmtTime(ms) {
  if (ms == null || ms === '' || ms === 0) return '';
  const d = new Date(ms);
  if (isNaN(d)) return String(ms);
  const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (d.toDateString() === new Date().toDateString()) return hms;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${hms}`;
}

function fmtAgo(ms) {
  if (!ms) return '';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.floor(s / 60) + ' min ago';
  return Math.floor(s / 3600) + ' h ago';
}

function fmtMs(x) {
  if (x == null || x === '') return '';
  const n = Number(x);
  if (n < 1000) return (n < 10 ? n.toFixed(1) : Math.round(n)) + ' ms';
  return (n / 1000).toFixed(2) + ' s';
}

function fmtBytes(n) {
  if (n == null) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + units[i];
}

const fmtNum = (n) => (n == null ? '' : Number(n).toLocaleString('en-US'));
const sum = (xs, f) => xs.reduce((a, x) => a + (Number(f(x)) || 0), 0);

function throttle(fn, ms) {
  let t = null;
  return () => { if (!t) t = setTimeout(() => { t = null; fn(); }, ms); };
}

function setText(sel, text) { const n = $(sel); if (n) n.textContent = text; }

// ---------------------------------------------------------------- api

const API = location.pathname.replace(/\/console(\/.*)?$/, '').replace(/\/$/, '') + '/api/v1';
const TOKEN_KEY = 'celeriac.token';
const auth = { token: sessionStorage.getItem(TOKEN_KEY) || '', me: null };

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/** Calls the API; resolves to the parsed JSON body, rejects with ApiError. */
async function api(path, opts = {}) {
  const token = opts.token !== undefined ? opts.token : auth.token;
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = 'Bearer ' + token;
  let body;
  if (opts.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(opts.body);
  }
  let res;
  try {
    res = await fetch(API + path, { method: opts.method || 'GET', headers, body, cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, 'cannot reach the server');
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!res.ok) {
    const msg = data && typeof data.error === 'string' ? data.error : `HTTP ${res.status}`;
    if (res.status === 401 && !opts.noRedirect) toSignin(msg);
    throw new ApiError(res.status, msg);
  }
  return data;
}

// ---------------------------------------------------------------- auth

async function boot() {
  $('#signin-form').addEventListener('submit', onSignin);
  $('#signout').addEventListener('click', () => toSignin(''));
  $('#show-signin').addEventListener('click', () => toSignin(''));
  window.addEventListener('hashchange', route);
  window.addEventListener('resize', throttle(() => resizeCharts(), 150));
  if (auth.token) {
    try { return enterApp(await api('/whoami', { noRedirect: true })); } catch (e) {
      if (e.status !== 401) return showSignin(e.message);
      forgetToken();
    }
  }
  try {
    enterApp(await api('/whoami', { token: '', noRedirect: true }));
  } catch (e) {
    showSignin(e.status === 401 ? '' : e.message);
  }
}

async function onSignin(ev) {
  ev.preventDefault();
  const input = $('#token');
  const token = input.value.trim();
  const button = $('#signin');
  setText('#signin-error', '');
  button.disabled = true;
  try {
    const me = await api('/whoami', { token, noRedirect: true });
    auth.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    input.value = '';
    enterApp(me);
  } catch (e) {
    setText('#signin-error', e.message);
  } finally {
    button.disabled = false;
  }
}

function forgetToken() {
  auth.token = '';
  sessionStorage.removeItem(TOKEN_KEY);
}

function enterApp(me) {
  auth.me = me || { name: '?', scopes: [] };
  setText('#whoami-name', auth.me.name);
  setText('#whoami-scopes', (auth.me.scopes || []).join(', '));
  showView(true);
  startEvents();
  route();
}

/** Back to the sign-in form (sign-out, or any 401), with a message. */
function toSignin(message) {
  if (!auth.me && !$('#signin-view').hidden) { setText('#signin-error', message); return; }
  leavePage();
  stopEvents();
  forgetToken();
  auth.me = null;
  showSignin(message);
}

function showSignin(message) {
  $('#main').replaceChildren();
  showView(false);
  setText('#signin-error', message || '');
  $('#token').focus();
}

/** Signed in: nav, page and who; else the sign-in form. */
function showView(app) {
  for (const sel of ['#nav', '#main', '#whoami']) $(sel).hidden = !app;
  $('#signin-view').hidden = app;
  $('#signout').hidden = !app || !auth.token;
  $('#show-signin').hidden = !app || !!auth.token;
}

// ---------------------------------------------------------------- store

const STATE_OF = {
  sent: 'PENDING', received: 'RECEIVED', started: 'STARTED', succeeded: 'SUCCESS',
  failed: 'FAILURE', retried: 'RETRY', revoked: 'REVOKED', rejected: 'REJECTED',
  'dead-lettered': 'DEAD-LETTERED',
};
// Tie-break for events of one task stamped in the same millisecond.
const RANK = { sent: 0, received: 1, started: 2, retried: 3, 'dead-lettered': 4 };
const FAILURE_TYPES = new Set(['failed', 'rejected', 'dead-lettered']);
const MAX_TASKS = 2000, MAX_TASK_EVENTS = 200, MAX_FAILURES = 1000;

const store = { tasks: new Map(), failures: [], failureIds: new Set(), listeners: new Set() };

/** Takes one event into the store and tells the listeners. */
function ingest(ev) {
  if (!ev || typeof ev.type !== 'string') return;
  if (FAILURE_TYPES.has(ev.type)) addFailure(ev);
  if (ev.task_id && !updateTask(ev)) return;
  for (const fn of store.listeners) fn(ev);
}

/** False when the event was seen already. */
function updateTask(ev) {
  let t = store.tasks.get(ev.task_id);
  if (!t) {
    t = { id: ev.task_id, task: '', state: '', queue: '', worker: '', runtime_ms: null,
          first: ev.at, at: ev.at, stateAt: -1, stateRank: -1, events: [], seen: new Set(), version: 0 };
    store.tasks.set(t.id, t);
    if (store.tasks.size > MAX_TASKS) store.tasks.delete(store.tasks.keys().next().value);
  }
  if (ev.id) {
    if (t.seen.has(ev.id)) return false;
    t.seen.add(ev.id);
  }
  t.events.push(ev);
  t.events.sort((a, b) => a.at - b.at);
  if (t.events.length > MAX_TASK_EVENTS) t.events.shift();
  t.task = ev.task || t.task;
  t.queue = ev.queue || t.queue;
  t.worker = ev.worker || t.worker;
  if (ev.runtime_ms != null) t.runtime_ms = ev.runtime_ms;
  t.first = Math.min(t.first, ev.at);
  t.at = Math.max(t.at, ev.at);
  applyState(t, ev);
  t.version++;
  return true;
}

function applyState(t, ev) {
  const state = STATE_OF[ev.type];
  if (!state) return;
  const rank = RANK[ev.type] ?? 5;
  if (state === 'DEAD-LETTERED' && (t.state === 'FAILURE' || t.state === 'REJECTED')) return;
  const overridesDead = t.state === 'DEAD-LETTERED' && (state === 'FAILURE' || state === 'REJECTED');
  if (!overridesDead && (ev.at < t.stateAt || (ev.at === t.stateAt && rank < t.stateRank))) return;
  t.state = state;
  t.stateAt = ev.at;
  t.stateRank = rank;
}

function addFailure(ev) {
  const key = ev.id || `${ev.type}/${ev.task_id}/${ev.at}`;
  if (store.failureIds.has(key)) return;
  store.failureIds.add(key);
  store.failures.push(ev);
  if (store.failures.length > MAX_FAILURES) {
    const old = store.failures.shift();
    store.failureIds.delete(old.id || `${old.type}/${old.task_id}/${old.at}`);
  }
}

// ---------------------------------------------------------------- live events

const live = { ctrl: null, lastId: '', backoff: 1000, timer: null, stopped: true, heard: 0 };
const SILENCE_MS = 45000; // the server sends `: keepalive` every 15 s

function setLive(state) {
  const n = $('#live');
  n.textContent = state;
  n.className = 'live ' + (state === 'live' ? 'on' : 'off');
}

function startEvents() {
  stopEvents();
  live.stopped = false;
  connectEvents();
}

function stopEvents() {
  live.stopped = true;
  clearTimeout(live.timer);
  if (live.ctrl) live.ctrl.abort();
  live.ctrl = null;
  setLive('offline');
}

async function connectEvents() {
  const ctrl = new AbortController();
  live.ctrl = ctrl;
  const headers = { Accept: 'text/event-stream' };
  if (auth.token) headers.Authorization = 'Bearer ' + auth.token;
  let url = API + '/events';
  if (live.lastId) headers['Last-Event-ID'] = live.lastId;
  else url += '?last=200';
  setLive('connecting');
  live.heard = Date.now();
  const watchdog = setInterval(() => {
    if (Date.now() - live.heard > SILENCE_MS) { ctrl.silent = true; ctrl.abort(); }
  }, 5000);
  try {
    const res = await fetch(url, { headers, signal: ctrl.signal, cache: 'no-store' });
    if (res.status === 401) {
      const body = await res.json().catch(() => ({}));
      toSignin(body.error || 'unauthorized');
      return;
    }
    if (!res.ok || !res.body) throw new Error('HTTP ' + res.status);
    setLive('live');
    live.backoff = 1000;
    await readSse(res.body, onSseEvent);
  } catch (e) {
    if (ctrl.signal.aborted && !ctrl.silent) return;
  } finally {
    clearInterval(watchdog);
  }
  if (live.stopped || live.ctrl !== ctrl) return;
  setLive('offline');
  live.timer = setTimeout(connectEvents, live.backoff);
  live.backoff = Math.min(live.backoff * 2, 10000);
}

/** Minimal text/event-stream parser: id, event, data fields; ':' comments. */
async function readSse(stream, onEvent) {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let buf = '', id = null, type = '', data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    live.heard = Date.now();
    buf += decoder.decode(value, { stream: true });
    const lines = buf.split('\n');
    buf = lines.pop();
    for (let line of lines) {
      if (line.endsWith('\r')) line = line.slice(0, -1);
      if (line === '') {
        if (id != null) live.lastId = id;
        if (data.length) onEvent({ id, type: type || 'message', data: data.join('\n') });
        id = null; type = ''; data = [];
        continue;
      }
      if (line[0] === ':') continue;
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      let val = i < 0 ? '' : line.slice(i + 1);
      if (val[0] === ' ') val = val.slice(1);
      if (field === 'data') data.push(val);
      else if (field === 'event') type = val;
      else if (field === 'id' && !val.includes('\0')) id = val;
    }
  }
}

function onSseEvent(msg) {
  let ev;
  try { ev = JSON.parse(msg.data); } catch (e) { return; }
  if (!ev || typeof ev !== 'object') return;
  if (!ev.id && msg.id) ev.id = msg.id;
  if (!ev.type && msg.type !== 'message') ev.type = msg.type;
  ingest(ev);
}

// ---------------------------------------------------------------- router

const PAGES = {
  overview: pageOverview, tasks: pageTasks, failures: pageFailures,
  'dead-letters': pageDeadLetters, components: pageComponents, workers: pageWorkers, task: pageTask,
};
let page = null;

function route() {
  if (!auth.me) return;
  const m = /^#\/([a-z-]+)(?:\/(.+))?$/.exec(location.hash);
  let name = m ? m[1] : '', arg = '';
  try { arg = m && m[2] ? decodeURIComponent(m[2]) : ''; } catch (e) { arg = m[2]; }
  if (!PAGES[name] || (name === 'task') !== !!arg) {
    name = 'overview';
    history.replaceState(null, '', '#/overview');
  }
  leavePage();
  for (const a of document.querySelectorAll('#nav a[data-page]')) {
    a.classList.toggle('active', a.dataset.page === (name === 'task' ? 'tasks' : name));
  }
  const main = $('#main');
  page = newPage(main);
  PAGES[name](page.body, page, arg);
}

/** A page context: its timers and store listeners stop when it is left. */
function newPage(main) {
  const error = el('p', { class: 'error banner', hidden: true });
  const body = el('div', { class: 'page' });
  main.replaceChildren(error, body);
  const ctx = {
    alive: true, body, timers: [], listeners: [], onLeave: [],
    setError(msg) { error.textContent = msg || ''; error.hidden = !msg; },
    /** Runs fn now and every ms; never two at once; errors go to the banner. */
    every(ms, fn) {
      let busy = false;
      const tick = async () => {
        if (busy || !ctx.alive) return;
        busy = true;
        try { await fn(); if (ctx.alive) ctx.setError(''); } catch (e) { if (ctx.alive) ctx.setError(e.message); }
        busy = false;
      };
      tick();
      ctx.timers.push(setInterval(tick, ms));
    },
    listen(fn) {
      const guarded = (ev) => { if (ctx.alive) fn(ev); };
      store.listeners.add(guarded);
      ctx.listeners.push(guarded);
    },
  };
  return ctx;
}

function leavePage() {
  if (!page) return;
  page.alive = false;
  page.timers.forEach(clearInterval);
  page.listeners.forEach((fn) => store.listeners.delete(fn));
  page.onLeave.forEach((fn) => fn());
  page = null;
}

// ---------------------------------------------------------------- charts

const charts = new Set();

function resizeCharts() {
  for (const c of charts) {
    const w = c.root.parentNode && c.root.parentNode.clientWidth;
    if (w) c.setSize({ width: w, height: c.height });
  }
}

/** One uPlot chart in `box`, created on first data and updated after. */
function makeChart(ctx, box, series) {
  let plot = null;
  ctx.onLeave.push(() => { if (plot) { charts.delete(plot); plot.destroy(); } });
  return (data) => {
    if (plot) { plot.setData(data); showLatest(plot); return; }
    plot = new uPlot({
      width: box.clientWidth || 600,
      height: 180,
      series: [{ label: 'time', value: (u, v) => (v == null ? '--' : fmtTime(v * 1000)) },
        ...series.map(([label, stroke]) => ({ label, stroke, width: 1.5, value: legendValue }))],
      axes: [{ space: 90, values: timeTicks }, { size: 50 }],
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
    }, data, box);
    charts.add(plot);
    showLatest(plot);
  };
}

const legendValue = (u, v) => (v == null ? '--' : Number.isInteger(v) ? fmtNum(v) : v.toFixed(1));

/** 24-hour tick labels, with seconds when ticks are closer than a minute. */
function timeTicks(u, splits) {
  const step = splits.length > 1 ? splits[1] - splits[0] : 60;
  return splits.map((s) => {
    const d = new Date(s * 1000);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}` + (step < 60 ? ':' + pad(d.getSeconds()) : '');
  });
}

/** The legend shows the newest values while the cursor is off the chart. */
function showLatest(plot) {
  const n = plot.data[0].length;
  if (n && plot.cursor.left < 0) plot.setLegend({ idx: n - 1 });
}

const QUEUE_SERIES = [['ready', '#2563eb'], ['in flight', '#d97706'], ['delayed', '#7c3aed'], ['dead', '#dc2626']];

// ---------------------------------------------------------------- overview

function pageOverview(root, ctx) {
  const tiles = el('div', { class: 'tiles' });
  const thr = el('div', { id: 'chart-throughput', class: 'chart' });
  const lat = el('div', { id: 'chart-latency', class: 'chart' });
  const queues = el('div', { class: 'chart-grid', id: 'queue-charts' });
  const note = el('p', { class: 'muted', id: 'history-note' });
  root.append(
    tiles,
    el('div', { class: 'chart-grid' },
      panel('Throughput (tasks/s)', thr), panel('Latency and run time (ms)', lat)),
    el('h2', { text: 'Queue depth' }), note, queues);
  const drawThr = makeChart(ctx, thr, [['succeeded/s', '#16a34a'], ['failed/s', '#dc2626']]);
  const drawLat = makeChart(ctx, lat, [['latency p50', '#2563eb'], ['latency p95', '#93c5fd'],
    ['run time p50', '#d97706'], ['run time p95', '#fcd34d']]);
  const queueCharts = new Map();

  ctx.every(2000, async () => {
    const [hist, workers, qs] = await Promise.all([api('/history'), api('/workers'), api('/queues')]);
    if (!ctx.alive) return;
    renderTiles(tiles, workers || [], qs || []);
    const samples = (hist && hist.samples) || [];
    const perSec = ((hist && hist.interval_ms) || 2000) / 1000;
    const xs = samples.map((s) => s.at / 1000);
    const pick = (f) => samples.map((s) => { const v = f(s); return v == null ? null : v; });
    drawThr([xs, pick((s) => (s.succeeded || 0) / perSec), pick((s) => (s.failed || 0) / perSec)]);
    drawLat([xs, pick((s) => s.latency_ms && s.latency_ms.p50), pick((s) => s.latency_ms && s.latency_ms.p95),
      pick((s) => s.runtime_ms && s.runtime_ms.p50), pick((s) => s.runtime_ms && s.runtime_ms.p95)]);
    note.textContent = samples.length ? '' : 'No history samples yet.';
    const names = new Set();
    samples.forEach((s) => Object.keys(s.queues || {}).forEach((q) => names.add(q)));
    for (const q of [...names].sort()) {
      if (!queueCharts.has(q)) {
        const box = el('div', { class: 'chart chart-queue', 'data-queue': q });
        queues.append(panel('Queue ' + q, box));
        queueCharts.set(q, makeChart(ctx, box, QUEUE_SERIES));
      }
      const d = (f) => pick((s) => { const v = s.queues && s.queues[q]; return v ? f(v) : null; });
      queueCharts.get(q)([xs, d((v) => v.ready), d((v) => v.in_flight), d((v) => v.delayed), d((v) => v.dead)]);
    }
  });
}

function panel(title, body) {
  return el('section', { class: 'panel' }, el('h3', { text: title }), body);
}

function renderTiles(box, workers, queues) {
  const busy = sum(workers, (w) => w.busy), slots = sum(workers, (w) => w.concurrency);
  const dead = sum(queues, (q) => q.dead);
  const tile = (id, label, value, cls) =>
    el('div', { class: 'tile ' + (cls || ''), id }, el('div', { class: 'tile-value', text: value }),
      el('div', { class: 'tile-label', text: label }));
  box.replaceChildren(
    tile('tile-workers', 'workers online', fmtNum(workers.length)),
    tile('tile-slots', 'busy slots', `${fmtNum(busy)} / ${fmtNum(slots)}`),
    tile('tile-ready', 'ready', fmtNum(sum(queues, (q) => q.ready))),
    tile('tile-inflight', 'in flight', fmtNum(sum(queues, (q) => q.in_flight))),
    tile('tile-dead', 'dead letters', fmtNum(dead), dead > 0 ? 'bad' : ''));
}

// ---------------------------------------------------------------- tasks

let tasksFilter = '';

function pageTasks(root, ctx) {
  root.append(submitForm());
  const filter = el('input', { id: 'tasks-filter', type: 'search', placeholder: 'Filter by task name, id or state',
    value: tasksFilter });
  const count = el('span', { class: 'muted', id: 'tasks-count' });
  const tbody = el('tbody');
  root.append(
    el('div', { class: 'toolbar' }, el('h2', { text: 'Recent tasks' }), filter, count),
    grid('tasks', ['ID', 'Task', 'State', 'Queue', 'Worker', 'Run time', 'Time'], tbody));
  const rows = new Map();
  const render = () => {
    const list = [...store.tasks.values()].reverse().sort((a, b) => b.first - a.first);
    const needle = tasksFilter.toLowerCase();
    let shown = 0;
    const keep = new Set();
    const trs = list.map((t) => {
      keep.add(t.id);
      let tr = rows.get(t.id);
      if (!tr) { tr = taskRow(t.id); rows.set(t.id, tr); }
      fillTaskRow(tr, t);
      tr.hidden = !!needle && ![t.id, t.task, t.state].some((s) => s.toLowerCase().includes(needle));
      if (!tr.hidden) shown++;
      return tr;
    });
    for (const id of rows.keys()) if (!keep.has(id)) rows.delete(id);
    tbody.replaceChildren(...trs);
    if (!list.length) tbody.append(el('tr', { class: 'empty' }, el('td', { colspan: 7, text: 'No task events yet.' })));
    count.textContent = `${shown} of ${list.length} tasks`;
  };
  filter.addEventListener('input', () => { tasksFilter = filter.value; render(); });
  ctx.listen(throttle(() => ctx.alive && render(), 200));
  render();
}

function taskRow(id) {
  const tr = el('tr', { 'data-task-id': id });
  tr.append(el('td', {}, taskLink(id)), el('td', { class: 'task' }), el('td', { class: 'state' }),
    el('td', { class: 'queue' }), el('td', { class: 'worker' }), el('td', { class: 'num runtime' }),
    el('td', { class: 'time' }));
  return tr;
}

function fillTaskRow(tr, t) {
  if (tr.version === t.version) return;
  tr.version = t.version;
  const c = tr.cells;
  c[1].textContent = t.task;
  c[2].textContent = t.state;
  c[2].className = 'state ' + stateClass(t.state);
  c[3].textContent = t.queue;
  c[4].textContent = t.worker;
  c[5].textContent = fmtMs(t.runtime_ms);
  c[6].textContent = fmtTime(t.at);
}

function stateClass(state) {
  if (state === 'SUCCESS') return 'st-ok';
  if (['FAILURE', 'REJECTED', 'DEAD-LETTERED'].includes(state)) return 'st-bad';
  if (['RETRY', 'REVOKED'].includes(state)) return 'st-warn';
  if (['STARTED', 'RECEIVED'].includes(state)) return 'st-run';
  return 'st-wait';
}

function submitForm() {
  const task = el('input', { id: 'submit-task', placeholder: 'module.task', required: true, size: 18 });
  const args = el('input', { id: 'submit-args', value: '[]', class: 'mono', size: 24, title: 'JSON array' });
  const queue = el('input', { id: 'submit-queue', placeholder: 'default', size: 10 });
  const button = el('button', { id: 'submit-button', type: 'submit', text: 'Submit' });
  const error = el('span', { id: 'submit-error', class: 'error', role: 'alert' });
  const onSubmit = async (ev) => {
    ev.preventDefault();
    error.textContent = '';
    const body = { task: task.value.trim() };
    if (!body.task) { error.textContent = 'task name is required'; return; }
    try { body.args = JSON.parse(args.value.trim() || '[]'); } catch (e) {
      error.textContent = 'args is not valid JSON: ' + e.message; return;
    }
    if (!Array.isArray(body.args)) { error.textContent = 'args must be a JSON array, e.g. [2, 3]'; return; }
    if (queue.value.trim()) body.queue = queue.value.trim();
    button.disabled = true;
    try {
      const r = await api('/tasks', { method: 'POST', body });
      location.hash = '#/task/' + enc(r.id);
    } catch (e) {
      error.textContent = e.message;
    } finally {
      button.disabled = false;
    }
  };
  return el('form', { id: 'submit-form', class: 'submit-form', onsubmit: onSubmit },
    el('strong', { text: 'Submit a task' }),
    el('label', {}, 'task ', task), el('label', {}, 'args ', args), el('label', {}, 'queue ', queue),
    button, error);
}

// ---------------------------------------------------------------- failures

function pageFailures(root, ctx) {
  const bars = el('div', { id: 'failure-groups', class: 'bars' });
  const tbody = el('tbody');
  const info = el('p', { class: 'muted' });
  let selected = null;
  root.append(
    el('h2', { text: 'Failures by cause' }), info, bars,
    el('h2', { text: 'Failure events' }),
    grid('failures', ['Time', 'Event', 'Task', 'ID', 'Queue', 'Worker', 'Error'], tbody));

  const render = () => {
    const groups = groupFailures(store.failures);
    const max = Math.max(1, ...groups.map((g) => g.tasks.size));
    if (selected && !groups.some((g) => g.key === selected)) selected = null;
    info.textContent = groups.length
      ? 'Counts are distinct tasks per cause. Click a cause to filter the list.'
      : 'No failed, rejected or dead-lettered tasks seen.';
    bars.replaceChildren(...groups.map((g) => failureBar(g, max, g.key === selected, () => {
      selected = selected === g.key ? null : g.key; render();
    })));
    const list = store.failures.filter((ev) => !selected || failureKey(ev).key === selected)
      .sort((a, b) => b.at - a.at).slice(0, 300);
    tbody.replaceChildren(...list.map(failureRow));
  };
  ctx.listen(throttle(() => ctx.alive && render(), 300));
  render();
  // `failed` is what the contract names; rejected and dead-lettered complete the picture.
  Promise.all(['failed', 'rejected', 'dead-lettered'].map((state) =>
    api(`/events/recent?state=${enc(state)}&limit=200`).catch((e) => {
      if (state === 'failed') ctx.setError(e.message);
      return [];
    }))).then((lists) => { lists.flat().forEach(ingest); if (ctx.alive) render(); });
}

/** Splits `kind: message` (kind is a short lowercase-ish word) off an error line. */
function failureKey(ev) {
  const text = ev.error || '(no error text)';
  const m = /^([A-Za-z][\w.-]{0,39}):\s+(.*)$/.exec(text);
  const kind = m ? m[1] : '';
  const message = m ? m[2] : text;
  const norm = message.replace(/[0-9a-f]{8}-[0-9a-f-]{27}/gi, '<id>').replace(/\d+/g, 'N');
  return { key: kind + '\u0000' + norm, kind, message };
}

function groupFailures(events) {
  const groups = new Map();
  for (const ev of events) {
    const k = failureKey(ev);
    let g = groups.get(k.key);
    if (!g) { g = { key: k.key, kind: k.kind, message: k.message, tasks: new Set(), last: 0 }; groups.set(k.key, g); }
    g.tasks.add(ev.task_id || ev.id);
    g.last = Math.max(g.last, ev.at || 0);
  }
  return [...groups.values()].sort((a, b) => b.tasks.size - a.tasks.size || b.last - a.last);
}

function failureBar(g, max, active, onclick) {
  const fill = el('span', { class: 'bar-fill' });
  fill.style.width = Math.max(2, (100 * g.tasks.size) / max) + '%';
  return el('button', { type: 'button', class: 'bar-row' + (active ? ' active' : ''), onclick,
    title: (g.kind ? g.kind + ': ' : '') + g.message },
  el('span', { class: 'bar-label' }, g.kind ? el('b', { text: g.kind + ' ' }) : null, g.message),
  el('span', { class: 'bar-track' }, fill),
  el('span', { class: 'bar-count', text: fmtNum(g.tasks.size) }));
}

function failureRow(ev) {
  return el('tr', { 'data-event-id': ev.id || '' },
    el('td', { class: 'time', text: fmtTime(ev.at) }),
    el('td', { class: 'st-bad nowrap', text: ev.type }),
    el('td', { text: ev.task || '' }),
    el('td', { class: 'nowrap' }, ev.task_id ? taskLink(ev.task_id) : ''),
    el('td', { text: ev.queue || '' }),
    el('td', { class: 'nowrap', text: ev.worker || '' }),
    el('td', { class: 'error-text', text: ev.error || '' }));
}

// ---------------------------------------------------------------- dead letters

function pageDeadLetters(root, ctx) {
  const select = el('select', { id: 'dl-queue' });
  const purge = el('button', { id: 'purge', type: 'button', class: 'danger', text: 'Purge queue' });
  const status = el('span', { id: 'dl-status', class: 'muted' });
  const tbody = el('tbody');
  const rowErrors = new Map();
  let queue = null;
  root.append(
    el('div', { class: 'toolbar' }, el('h2', { text: 'Dead letters' }),
      el('label', {}, 'queue ', select), purge, status),
    grid('dead-letters', ['Time', 'Task', 'Task ID', 'Reason', ''], tbody));

  const loadQueues = async () => {
    const qs = (await api('/queues')) || [];
    if (!queue || !qs.some((q) => q.queue === queue)) {
      const first = qs.find((q) => q.dead > 0) || qs[0];
      queue = first ? first.queue : null;
    }
    select.replaceChildren(...qs.map((q) =>
      el('option', { value: q.queue, text: `${q.queue} (${fmtNum(q.dead)} dead)` })));
    if (queue) select.value = queue;
    purge.disabled = !queue;
  };
  const loadLetters = async () => {
    if (!queue) { tbody.replaceChildren(emptyRow(5, 'No queues.')); return; }
    const q = queue;
    const list = (await api(`/dead-letters?queue=${enc(q)}&limit=100`)) || [];
    if (!ctx.alive || q !== queue) return;
    tbody.replaceChildren(...list.map((d) => deadLetterRow(d, q, rowErrors)));
    if (!list.length) tbody.append(emptyRow(5, `No dead letters in ${q}.`));
  };
  const refresh = async () => { await loadQueues(); await loadLetters(); };

  select.addEventListener('change', () => {
    queue = select.value;
    status.textContent = '';
    loadLetters().catch((e) => ctx.setError(e.message));
  });
  purge.addEventListener('click', async () => {
    if (!queue || !confirm(`Purge every dead letter of queue "${queue}"? This cannot be undone.`)) return;
    try {
      const r = await api('/dead-letters/' + enc(queue), { method: 'DELETE' });
      status.textContent = `purged ${fmtNum(r && r.purged)} from ${queue}`;
      await refresh();
    } catch (e) {
      status.textContent = e.message;
    }
  });
  ctx.every(5000, refresh);
}

/** Task name and id from a dead letter's message text, or null. */
function parsePayload(text) {
  try {
    const p = JSON.parse(text);
    const h = (p && p.headers) || {};
    const task = p && (p.task || h.task), id = p && (p.id || h.id);
    if (typeof task === 'string' && typeof id === 'string') return { task, id };
  } catch (e) { /* unreadable */ }
  return null;
}

function deadLetterRow(d, queue, rowErrors) {
  const msg = parsePayload(d.payload);
  const error = el('span', { class: 'error row-error', text: rowErrors.get(d.id) || '' });
  const button = el('button', { type: 'button', class: 'requeue', text: 'Requeue' });
  const tr = el('tr', { 'data-id': d.id },
    el('td', { class: 'time', text: fmtTime(d.at) }),
    el('td', { class: msg ? '' : 'muted', text: msg ? msg.task : 'unreadable' }),
    el('td', { class: msg ? '' : 'muted' }, msg ? taskLink(msg.id) : 'unreadable'),
    el('td', { class: 'error-text' }, d.reason || '',
      el('details', {}, el('summary', { text: 'message' }), el('pre', { text: d.payload || '' }))),
    el('td', { class: 'actions' }, button, error));
  button.addEventListener('click', async () => {
    button.disabled = true;
    try {
      await api(`/dead-letters/${enc(queue)}/${enc(d.id)}/requeue`, { method: 'POST' });
      rowErrors.delete(d.id);
      tr.remove();
    } catch (e) {
      rowErrors.set(d.id, e.message);
      error.textContent = e.message;
      button.disabled = false;
    }
  });
  return tr;
}

/** A table.grid with a header row of `cols` and the given tbody. */
function grid(id, cols, tbody) {
  return el('table', { id, class: 'grid' },
    el('thead', {}, el('tr', {}, cols.map((h) => el('th', { text: h })))), tbody);
}

function emptyRow(cols, text) {
  return el('tr', { class: 'empty' }, el('td', { colspan: cols, text }));
}

// ---------------------------------------------------------------- components

function pageComponents(root, ctx) {
  const tbody = el('tbody');
  root.append(
    el('h2', { text: 'Components' }),
    grid('components', ['Module', 'Digest', 'Signer', 'Size', 'Grants', 'Uploaded'], tbody));
  ctx.every(30000, async () => {
    const list = ((await api('/components')) || []).slice().sort((a, b) => String(a.module).localeCompare(b.module));
    tbody.replaceChildren(...list.map(componentRow));
    if (!list.length) tbody.append(emptyRow(6, 'No components uploaded.'));
  });
}

function componentRow(c) {
  const digest = String(c.digest || '');
  const g = c.grants || {};
  const http = g.http || [], config = g.config || [];
  return el('tr', { 'data-module': c.module },
    el('td', { class: 'mono', text: c.module }),
    el('td', { class: 'mono', title: digest, text: digest.length > 16 ? digest.slice(0, 16) + '…' : digest }),
    el('td', { class: 'mono clip', title: c.signer || '', text: c.signer || '' }),
    el('td', { class: 'num', text: fmtBytes(c.size) }),
    el('td', { class: 'grants' },
      el('div', {}, el('span', { class: 'muted', text: 'http ' }), http.length ? http.join(', ') : 'none'),
      el('div', {}, el('span', { class: 'muted', text: 'config ' }), config.length ? config.join(', ') : 'none'),
      el('div', {}, el('span', { class: 'muted', text: 'kv ' }), g.kv ? 'yes' : 'no')),
    el('td', { class: 'time', title: c.signed_at ? 'signed ' + c.signed_at : '', text: fmtTime(c.uploaded_at) }));
}

// ---------------------------------------------------------------- workers

function pageWorkers(root, ctx) {
  const grid = el('div', { id: 'workers', class: 'worker-grid' });
  root.append(el('h2', { text: 'Workers' }), grid);
  ctx.every(2000, async () => {
    const list = ((await api('/workers')) || []).slice().sort((a, b) => String(a.id).localeCompare(b.id));
    grid.replaceChildren(...list.map(workerCard));
    if (!list.length) grid.append(el('p', { class: 'muted', text: 'No workers online.' }));
  });
}

function workerCard(w) {
  const conc = Number(w.concurrency) || 0, busy = Number(w.busy) || 0;
  const fill = el('span', { class: 'bar-fill' });
  fill.style.width = (conc ? Math.min(100, (100 * busy) / conc) : 0) + '%';
  const stale = w.seen_at && Date.now() - w.seen_at > 60000;
  const row = (k, v) => [el('dt', { text: k }), el('dd', { text: v })];
  return el('div', { class: 'worker' + (w.problem ? ' has-problem' : '') + (stale ? ' stale' : ''), 'data-worker': w.id },
    el('div', { class: 'worker-id mono', text: w.id, title: w.id }),
    el('div', { class: 'slots' }, el('span', { class: 'bar-track' }, fill),
      el('span', { class: 'slots-text', text: `${busy} / ${conc} busy` })),
    el('dl', {},
      row('processed', fmtNum(w.processed)),
      row('queues', (w.queues || []).join(', ')),
      row('host / pid', `${w.host || '?'} / ${w.pid ?? '?'}`),
      row('started', fmtTime(w.started_at)),
      row('last seen', fmtAgo(w.seen_at))),
    w.problem ? el('p', { class: 'problem', text: w.problem }) : null);
}

// ---------------------------------------------------------------- task page

const FINAL = new Set(['SUCCESS', 'FAILURE', 'REVOKED']);

function pageTask(root, ctx, id) {
  const state = el('span', { id: 'task-state', class: 'state' });
  const fields = el('dl', { id: 'task-fields', class: 'fields' });
  const flow = el('div', { id: 'task-workflow' });
  const timeline = el('tbody');
  root.append(
    el('div', { class: 'toolbar' }, el('h2', {}, 'Task ', el('span', { class: 'mono', text: id })), state),
    fields, flow,
    el('h3', { text: 'Events seen' }),
    grid('task-events', ['Time', 'Event', 'Worker', 'Queue', 'Run time', 'Retries', 'Error'], timeline));
  let rec = null;

  const load = async () => {
    rec = await api('/tasks/' + enc(id));
    if (!ctx.alive || !rec) return;
    // Arguments are not in the record: the sent / received events carry them.
    const seen = store.tasks.get(id);
    const carrier = seen && seen.events.find((e) => e.args != null);
    if (carrier) { rec.args_text = carrier.args; rec.kwargs_text = carrier.kwargs; }
    state.textContent = rec.state;
    state.className = 'state badge ' + stateClass(rec.state);
    fields.replaceChildren(...taskFields(rec));
    if (rec.root_id) await loadWorkflow(flow, rec.root_id, id);
  };
  const renderTimeline = () => {
    const t = store.tasks.get(id);
    const evs = t ? t.events : [];
    timeline.replaceChildren(...evs.map(timelineRow));
    if (!evs.length) timeline.append(emptyRow(7, 'No events seen for this task.'));
  };
  const reload = throttle(() => ctx.alive && load().catch((e) => ctx.setError(e.message)), 300);
  ctx.listen((ev) => {
    if (ev.task_id === id) { renderTimeline(); reload(); } else if (rec && rec.root_id && ev.root_id === rec.root_id) reload();
  });
  renderTimeline();
  ctx.every(5000, async () => { if (!rec || !FINAL.has(rec.state)) await load(); });
  api(`/events/recent?task=${enc(id)}&limit=200`)
    .then((evs) => { (evs || []).forEach(ingest); if (ctx.alive) { renderTimeline(); reload(); } })
    .catch(() => {});
}

function taskFields(rec) {
  const out = [];
  const add = (k, v) => {
    if (v == null || v === '') return;
    out.push(el('dt', { text: k }), el('dd', {}, v));
  };
  const json = (v) => el('pre', { class: 'json', text: JSON.stringify(v, null, 2) });
  add('task', rec.task ? el('span', { class: 'mono', text: rec.task }) : null);
  if (rec.args_text) add('args', el('pre', { class: 'json', text: rec.args_text }));
  if (rec.kwargs_text) add('kwargs', el('pre', { class: 'json', text: rec.kwargs_text }));
  if ('result' in rec) add('result', json(rec.result));
  if (rec.error) {
    add('error', el('div', { class: 'error-box' }, el('b', { text: rec.error.kind || 'error' }),
      el('pre', { text: rec.error.message || '' })));
  }
  add('retries', rec.retries != null ? String(rec.retries) : null);
  add('run time', fmtMs(rec.runtime_ms));
  add('fuel', rec.fuel != null ? fmtNum(rec.fuel) : null);
  add('worker', rec.worker);
  add('queue', rec.queue);
  add('submitted', fmtTime(rec.submitted_at));
  add('started', fmtTime(rec.started_at));
  add('finished', fmtTime(rec.finished_at));
  add('retry at', fmtTime(rec.retry_at));
  if (rec.limits) {
    const l = rec.limits;
    add('limits', [l.timeout_ms != null && 'timeout ' + fmtMs(l.timeout_ms),
      l.soft_timeout_ms != null && 'soft ' + fmtMs(l.soft_timeout_ms),
      l.fuel != null && 'fuel ' + fmtNum(l.fuel), l.memory != null && 'memory ' + fmtBytes(l.memory)]
      .filter(Boolean).join(', '));
  }
  add('workflow', rec.root_id ? taskLink(rec.root_id) : null);
  add('parent', rec.parent_id ? taskLink(rec.parent_id) : null);
  if (rec.state === 'PENDING' && !rec.task) {
    add('note', 'No result record: the task is queued, unknown, or its record expired.');
  }
  return out;
}

async function loadWorkflow(box, rootId, selfId) {
  let wf;
  try { wf = await api('/workflows/' + enc(rootId)); } catch (e) {
    if (e.status === 404) { box.replaceChildren(); return; }
    throw e;
  }
  const others = ((wf && wf.members) || []).filter((m) => m.id !== selfId);
  if (!others.length) { box.replaceChildren(); return; }
  box.replaceChildren(
    el('h3', {}, 'Workflow ', el('span', { class: 'mono', text: rootId }), ' ',
      el('span', { class: 'state badge ' + stateClass(wf.state), text: wf.state || '' })),
    grid('workflow-members', ['ID', 'Task', 'State'],
      el('tbody', {}, others.map((m) => el('tr', { 'data-member-id': m.id },
        el('td', {}, taskLink(m.id)), el('td', { text: m.task || '' }),
        el('td', { class: 'state ' + stateClass(m.state), text: m.state || '' }))))));
}

function timelineRow(ev) {
  return el('tr', {},
    el('td', { class: 'time', text: fmtTime(ev.at) }),
    el('td', { class: stateClass(STATE_OF[ev.type] || ''), text: ev.type }),
    el('td', { text: ev.worker || '' }),
    el('td', { text: ev.queue || '' }),
    el('td', { class: 'num', text: fmtMs(ev.runtime_ms) }),
    el('td', { class: 'num', text: ev.retries != null ? String(ev.retries) : '' }),
    el('td', { class: 'error-text', text: ev.error || '' }));
}

boot();
})();
