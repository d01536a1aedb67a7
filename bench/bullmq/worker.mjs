// The BullMQ side of bench/compare's js-short: one Worker process with
// `concurrency: 2`, BullMQ's own notion of two slots (jobs in flight at
// once on the event loop), against `celeriac worker --concurrency 2`. The
// job runs the very word count the js-text component is built from.
//
// BullMQ is at-least-once by design (a job stays locked in `active` until
// its result is stored; a stalled one is taken again), as acks late is.
import { Worker } from 'bullmq';
import { words } from '../../tasks/js-text/words.js';
import { PREFIX, QUEUE, connect } from './bench.mjs';

const tasks = {
  add: ({ args: [a, b] }) => a + b,
  word_count: ({ args: [text] }) => words(text),
};

const worker = new Worker(
  QUEUE,
  async (job) => {
    const run = tasks[job.name];
    if (!run) throw new Error(`unknown task ${job.name}`);
    return run(job.data);
  },
  { connection: connect(), prefix: PREFIX, concurrency: 2 },
);
worker.on('error', (e) => console.error('worker error:', e));

// bench/compare stops workers with SIGTERM: let the jobs in flight finish.
process.on('SIGTERM', async () => {
  await worker.close();
  process.exit(0);
});
