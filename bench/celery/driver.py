"""Producer side of one bench/compare workload on Celery; prints one JSON
object: elapsed seconds (first submit to last result), submit seconds, and
per-task latencies in microseconds for the latency workload.

    python driver.py warmup | noop N | latency N | cpu N FIB_N | short N TEXT WANT
                     | payload N BYTES | io N URL
                     | chord N ROUNDS | preload N FILE | drain FILE

`preload` sends N add(i, i) with no worker running and keeps their ids in
FILE; `drain`, once a worker runs, waits for every result and times the
worker alone: from the first result's `date_done` to the last one's.
"""

import hashlib
import importlib.metadata
import json
import random
import string
import sys
import time
from datetime import datetime

import celery
import redis

from bench_app import PREFIX, QUEUE, REDIS, add, app, fetch, fib, sha256, word_count, xsum

r = redis.Redis.from_url(REDIS)


def drained():
    # Kombu's Redis transport keeps waiting messages in a list named after
    # the queue and delivered, unacknowledged ones in the `unacked` hash; with
    # acks late a message leaves `unacked` only after its result is stored.
    with r.pipeline() as p:
        p.llen(PREFIX + QUEUE)
        p.hlen(PREFIX + "unacked")
        ready, held = p.execute()
    return ready == 0 and held == 0


def missing(ids, check):
    """Indexes whose stored result is absent or wrong."""
    keys = [f"{PREFIX}celery-task-meta-{i}" for i in ids]
    bad = []
    for start in range(0, len(keys), 1000):
        for j, raw in enumerate(r.mget(keys[start : start + 1000])):
            k = start + j
            meta = json.loads(raw) if raw else None
            if not meta or meta.get("status") != "SUCCESS" or not check(k, meta.get("result")):
                bad.append(k)
    return bad


def bulk(task, arglists, check):
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        ids = [task.apply_async(args, producer=producer).id for args in arglists]
    submitted = time.perf_counter() - started
    deadline = time.monotonic() + 600
    bad = []
    while True:
        # A message between BRPOP and `unacked` looks drained for an instant:
        # confirm with the results before stopping the clock.
        if drained():
            elapsed = time.perf_counter() - started
            bad = missing(ids, check)
            if not bad:
                return {"elapsed_s": elapsed, "submit_s": submitted}
        if time.monotonic() > deadline:
            sys.exit(f"timed out: not drained, or tasks {bad[:5]} have no correct result")
        time.sleep(0.002)


def main():
    what = sys.argv[1]
    if what == "warmup":
        # Blocks until the worker is up; answers the versions for the report.
        assert add.delay(1, 2).get(timeout=120) == 3
        out = {"celery": celery.__version__, "python": sys.version.split()[0]}
        for dist in ("gevent", "requests"):
            try:
                out[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                pass
    elif what == "noop":
        n = int(sys.argv[2])
        out = bulk(add, [(i, i) for i in range(n)], lambda k, v: v == 2 * k)
    elif what == "latency":
        samples = []
        for i in range(int(sys.argv[2])):
            t = time.perf_counter()
            v = add.delay(i, i).get(timeout=10)
            samples.append((time.perf_counter() - t) * 1e6)
            assert v == 2 * i, f"task {i}: {v}"
        out = {"elapsed_s": sum(samples) / 1e6, "samples_us": samples}
    elif what == "cpu":
        n, arg = int(sys.argv[2]), int(sys.argv[3])
        want = cpu_fib(arg)
        out = bulk(fib, [(arg,)] * n, lambda k, v: v == want)
    elif what == "short":
        # A short Python task: one sentence's word count, WANT words.
        n, text, want = int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
        out = bulk(word_count, [(text,)] * n, lambda k, v: v == want)
    elif what == "payload":
        n, size = int(sys.argv[2]), int(sys.argv[3])
        texts = payloads(n, size)
        want = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        out = bulk(sha256, [(t,) for t in texts], lambda k, v: v == want[k])
    elif what == "io":
        # Each task one GET to bench/compare's local server (50 ms, `ok`).
        n, url = int(sys.argv[2]), sys.argv[3]
        out = bulk(fetch, [(url,)] * n, lambda k, v: v == 200)
    elif what == "chord":
        # Celery's chord on its Redis backend (counters), one after another:
        # from submitting the header to the callback's result.
        n, rounds = int(sys.argv[2]), int(sys.argv[3])
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            v = celery.chord(add.s(i, i) for i in range(n))(xsum.s()).get(timeout=600)
            times.append(time.perf_counter() - t)
            assert v == n * (n - 1), f"chord gave {v}"
        out = {"elapsed_s": sum(times) / len(times)}
    elif what == "preload":
        n, path = int(sys.argv[2]), sys.argv[3]
        with app.producer_or_acquire() as producer:
            ids = [add.apply_async((i, i), producer=producer).id for i in range(n)]
        with open(path, "w") as f:
            json.dump(ids, f)
        out = {"sent": n}
    elif what == "drain":
        with open(sys.argv[2]) as f:
            ids = json.load(f)
        deadline = time.monotonic() + 600
        while missing(ids, lambda k, v: v == 2 * k):
            if time.monotonic() > deadline:
                sys.exit("timed out waiting for the preloaded tasks")
            time.sleep(0.05)
        keys = [f"{PREFIX}celery-task-meta-{i}" for i in ids]
        done = [datetime.fromisoformat(json.loads(m)["date_done"]) for m in r.mget(keys)]
        out = {"elapsed_s": (max(done) - min(done)).total_seconds()}
    else:
        sys.exit(f"unknown workload {what!r}")
    print(json.dumps(out))


def cpu_fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def payloads(n, size):
    # Distinct inputs (numbered), random letters so nothing compresses away.
    base = "".join(random.choices(string.ascii_letters, k=size))
    return [f"{i:08d}" + base[8:] for i in range(n)]


if __name__ == "__main__":
    main()
