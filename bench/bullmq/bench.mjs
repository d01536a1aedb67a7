// What bench/bullmq's worker and driver share: the Redis connection, the
// queue, and BullMQ's key prefix (under bench/compare's private prefix, so
// a run shares a Redis without touching anyone else's keys).
import { readFileSync } from 'node:fs';
import { Queue } from 'bullmq';
import IORedis from 'ioredis';

export const REDIS = process.env.BENCH_REDIS ?? 'redis://127.0.0.1:6379';
// BullMQ's keys are `${PREFIX}:${QUEUE}:…`.
export const PREFIX = process.env.BENCH_PREFIX ?? 'bullmq-bench';
export const QUEUE = process.env.BENCH_QUEUE ?? 'bench';

// BullMQ's workers block on Redis and must not give up on a command
// (`maxRetriesPerRequest: null`, as its docs require for workers).
export const connect = () => new IORedis(REDIS, { maxRetriesPerRequest: null });

export const queue = (connection) => new Queue(QUEUE, { connection, prefix: PREFIX });

export const versions = () => ({
  bullmq: JSON.parse(readFileSync(new URL('./node_modules/bullmq/package.json', import.meta.url))).version,
  node: process.versions.node,
});
