// Producer side of bench/compare's js-short on BullMQ; prints one JSON
// object, as bench/celery/driver.py does: elapsed seconds (first submit to
// last result) and submit seconds.
//
//     node driver.mjs warmup | short N TEXT WANT
//
// `warmup` waits until a worker answers and prints the versions. `short`
// submits N word_count(TEXT) with addBulk (chunks of 1,000 per round trip,
// as Celeriac's submit_many), waits until every job completed, then checks
// each stored result is WANT (untimed).
import { setTimeout as sleep } from 'node:timers/promises';
import { QueueEvents } from 'bullmq';
import { PREFIX, QUEUE, connect, queue, versions } from './bench.mjs';

const CHUNK = 1000;

async function warmup(q) {
  const events = new QueueEvents(QUEUE, { connection: connect(), prefix: PREFIX });
  await events.waitUntilReady();
  const job = await q.add('add', { args: [1, 2] }, { removeOnComplete: true });
  const v = await job.waitUntilFinished(events, 120_000);
  await events.close();
  if (v !== 3) throw new Error(`warm-up answered ${v}`);
  return versions();
}

async function short(q, conn, n, text, want) {
  // Jobs of earlier calls (none but for a rerun) are not this run's.
  const before = await q.getCompletedCount();
  const started = performance.now();
  const ids = [];
  for (let sent = 0; sent < n; sent += CHUNK) {
    const k = Math.min(CHUNK, n - sent);
    const jobs = await q.addBulk(Array.from({ length: k }, () => ({ name: 'word_count', data: { args: [text] } })));
    for (const j of jobs) ids.push(j.id);
  }
  const submitted = performance.now() - started;
  const deadline = Date.now() + 600_000;
  for (;;) {
    const { completed, failed } = await q.getJobCounts('completed', 'failed');
    if (failed > 0) throw new Error(`${failed} jobs failed`);
    if (completed - before >= n) break;
    if (Date.now() > deadline) throw new Error(`timed out: ${completed - before} of ${n} completed`);
    await sleep(2);
  }
  const elapsed = performance.now() - started;
  // Every result as BullMQ stored it (JSON in the job's hash).
  for (let start = 0; start < ids.length; start += CHUNK) {
    const p = conn.pipeline();
    for (const id of ids.slice(start, start + CHUNK)) p.hget(q.toKey(id), 'returnvalue');
    const got = await p.exec();
    got.forEach(([err, raw], j) => {
      if (err || raw === null || JSON.parse(raw) !== want) {
        throw new Error(`job ${ids[start + j]}: ${err ?? raw}`);
      }
    });
  }
  return { elapsed_s: elapsed / 1000, submit_s: submitted / 1000 };
}

const [what, ...args] = process.argv.slice(2);
const conn = connect();
const q = queue(conn);
let out;
if (what === 'warmup') {
  out = await warmup(q);
} else if (what === 'short') {
  const [n, text, want] = args;
  out = await short(q, conn, Number(n), text, Number(want));
} else {
  console.error(`unknown workload ${what}`);
  process.exit(2);
}
await q.close();
conn.disconnect();
console.log(JSON.stringify(out));
process.exit(0);
