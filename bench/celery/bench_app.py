"""The Celery side of bench/compare: the same tasks as the Celeriac
examples, configured as the practitioner's guide recommends for production
(JSON only, acks late, time limit, results in Redis).

Everything lives under BENCH_PREFIX in the Redis at BENCH_REDIS, so a run
shares a Redis without touching anyone else's keys.
"""

import hashlib
import os
import pathlib
import sys

from celery import Celery

# The very file Celeriac's Python example builds into its component.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tasks" / "python-text"))
import cpu  # noqa: E402

REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("BENCH_PREFIX", "celery-bench:")
QUEUE = os.environ.get("BENCH_QUEUE", "bench")

app = Celery("bench", broker=REDIS, backend=REDIS)
app.conf.update(
    broker_transport_options={"global_keyprefix": PREFIX},
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
)


@app.task(name="add")
def add(a, b):
    return a + b


@app.task(name="fib")
def fib(n):
    return cpu.fib(n)


@app.task(name="sha256")
def sha256(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
