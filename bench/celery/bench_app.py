"""The Celery side of bench/compare: the same tasks as the Celeriac
examples, configured as the practitioner's guide recommends for production
(JSON only, acks late, time limit, results in Redis). `fetch` is the I/O
workload's task, run under prefork and under gevent (with `-P gevent`,
Celery monkey-patches the process before it imports this module).

Everything lives under BENCH_PREFIX in the Redis at BENCH_REDIS, so a run
shares a Redis without touching anyone else's keys.
"""

import hashlib
import os
import pathlib
import sys

import requests
from celery import Celery
from requests.adapters import HTTPAdapter

# The very files Celeriac's Python example builds into its component.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tasks" / "python-text"))
import cpu  # noqa: E402
import words  # noqa: E402

REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("BENCH_PREFIX", "celery-bench:")
QUEUE = os.environ.get("BENCH_QUEUE", "bench")

app = Celery("bench", broker=REDIS, backend=REDIS)
app.conf.update(
    # Kombu's Redis channel holds at most 10 connections by default and
    # raises, not waits, past that: a `-P gevent -c 100` worker acking late
    # needs one per greenlet acking at once.
    broker_transport_options={"global_keyprefix": PREFIX, "max_connections": 200},
    result_backend_transport_options={"global_keyprefix": PREFIX},
    broker_connection_retry_on_startup=True,
    task_default_queue=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # Celeriac's default hard limit is 60 s too.
    task_time_limit=60,
    result_expires=3600,
    worker_prefetch_multiplier=4,
    # One result backend (and Redis connection pool) per process. Without it
    # the backend is thread-local, which under gevent means a new backend,
    # connection pool and connection for every task's greenlet.
    result_backend_thread_safe=True,
)


@app.task(name="add")
def add(a, b):
    return a + b


@app.task(name="xsum")
def xsum(values):
    return sum(values)


@app.task(name="fib")
def fib(n):
    return cpu.fib(n)


@app.task(name="word_count")
def word_count(text):
    return words.words(text)


@app.task(name="sha256")
def sha256(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# One pooled HTTP session per worker process, made on first use (so after
# the prefork pool forks), holding enough keep-alive connections for every
# greenlet of a `-P gevent -c 100` worker.
_session = None


def session():
    global _session
    if _session is None:
        s = requests.Session()
        s.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=256))
        _session = s
    return _session


@app.task(name="fetch")
def fetch(url):
    r = session().get(url, timeout=10)
    r.raise_for_status()
    return r.status_code
