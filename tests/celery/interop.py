"""Celery as an unmodified producer (and, for the side-by-side test, a
Celery worker) for Celeriac's interop tests (tests/all/celery.rs).

    python interop.py --broker URL --queue Q SCENARIO [ARGS...]

Each scenario sends with the real `celery` package, exactly as an
application would, and prints one JSON line of what Python saw. The same
module is the Celery worker's app (`celery -A interop worker`), whose only
task, `pyside.echo`, Celeriac has no module for.
"""
import argparse
import json
import os
import sys
import time
import uuid

from celery import Celery, chain, chord, group

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
app = Celery("interop", broker=BROKER, backend=BROKER)
KEYPREFIX = os.environ.get("CELERY_KEYPREFIX")
if KEYPREFIX:
    app.conf.broker_transport_options = {"global_keyprefix": KEYPREFIX}
    app.conf.result_backend_transport_options = {"global_keyprefix": KEYPREFIX}
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    task_default_queue=os.environ.get("CELERY_QUEUE", "celery"),
)


@app.task(name="pyside.echo")
def echo(x):
    return {"echo": x, "by": "celery"}


def outcome(result, timeout):
    """What `.get()` gave: the value, or the exception it raised."""
    started = time.monotonic()
    try:
        value = result.get(timeout=timeout)
        return {"id": result.id, "value": value, "elapsed": time.monotonic() - started}
    except Exception as e:  # noqa: BLE001 - reporting whatever Celery raised
        return {
            "id": result.id,
            "error_type": type(e).__name__,
            "error": str(e),
            "state": result.state,
            "traceback": result.traceback,
            "elapsed": time.monotonic() - started,
        }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("scenario")
    p.add_argument("rest", nargs="*")
    p.add_argument("--countdown", type=float)
    p.add_argument("--expires", type=float)
    p.add_argument("--time-limit", type=float)
    p.add_argument("--soft-time-limit", type=float)
    a = p.parse_args()
    out = {}
    if a.scenario == "get":
        # get NAME ARGS_JSON: send_task(...).get()
        name, args = a.rest[0], json.loads(a.rest[1])
        opts = {}
        if a.countdown is not None:
            opts["countdown"] = a.countdown
        if a.expires is not None:
            opts["expires"] = a.expires
        if a.time_limit is not None:
            opts["time_limit"] = a.time_limit
        if a.soft_time_limit is not None:
            opts["soft_time_limit"] = a.soft_time_limit
        out = outcome(app.send_task(name, args, **opts), a.timeout)
    elif a.scenario == "chain":
        # chain(add.s(2, 2), add.s(4), mul.s(10)): both steps on Celeriac.
        c = chain(
            app.signature("math.add", (2, 2)),
            app.signature("math.add", (4,)),
            app.signature("math.mul", (10,)),
        )
        r = c.delay()
        out = outcome(r, a.timeout)
        out["parent"] = r.parent.get(timeout=a.timeout)
    elif a.scenario == "started":
        # With task_track_started on the worker: STARTED while it runs.
        r = app.send_task("misbehave.sleep", (1500,))
        seen = set()
        deadline = time.monotonic() + a.timeout
        while not r.ready() and time.monotonic() < deadline:
            seen.add(r.state)
            time.sleep(0.02)
        out = outcome(r, a.timeout)
        out["seen"] = sorted(seen)
    elif a.scenario == "chain-fails":
        c = chain(app.signature("misbehave.fatal", ("broken step",)), app.signature("math.add", (4,)))
        out = outcome(c.delay(), a.timeout)
    elif a.scenario == "chord":
        # A chord whose header runs on Celeriac: refused with the reason.
        header = [app.signature("math.add", (1, 1)), app.signature("math.add", (2, 2))]
        out = outcome(chord(header)(app.signature("math.sum")), a.timeout)
    elif a.scenario == "group":
        g = group(app.signature("math.add", (i, i)) for i in range(5))
        out = {"value": g.apply_async().get(timeout=a.timeout)}
    elif a.scenario == "link":
        # link / link_error callbacks, waited on by the ids fixed for them.
        cb_id, eb_id = str(uuid.uuid4()), str(uuid.uuid4())
        ok = app.send_task("math.add", (1, 1), link=app.signature("math.mul", (3,)).set(task_id=cb_id))
        failing = app.send_task(
            "misbehave.fatal", ("no",), link_error=app.signature("misbehave.hold", ()).set(task_id=eb_id))
        out = {
            "value": ok.get(timeout=a.timeout),
            "callback": app.AsyncResult(cb_id).get(timeout=a.timeout),
            "failed": outcome(failing, a.timeout)["error_type"],
            "errback": app.AsyncResult(eb_id).get(timeout=a.timeout),
            "failed_id": failing.id,
        }
    elif a.scenario == "ignore":
        ignored = app.send_task("math.add", (1, 2), ignore_result=True)
        after = app.send_task("math.add", (3, 4))
        out = {"ignored": ignored.id, "after": outcome(after, a.timeout)}
    elif a.scenario == "send":
        # send N NAME ARGS_JSON...: ids only, nobody waits.
        out = {"ids": [app.send_task(n, json.loads(args)).id for n, args in zip(a.rest[::2], a.rest[1::2])]}
    elif a.scenario == "collect":
        out = {"results": [outcome(app.AsyncResult(i), a.timeout) for i in a.rest]}
    elif a.scenario == "batch":
        # batch N MS: N tasks holding MS each; every value must come back.
        n, ms = int(a.rest[0]), int(a.rest[1])
        sent = [(i, app.send_task("misbehave.hold", (i, ms))) for i in range(n)]
        print(json.dumps({"sent": n}), flush=True)
        wrong = []
        for i, r in sent:
            got = outcome(r, a.timeout)
            if got.get("value") != i:
                wrong.append(got)
        out = {"ok": n - len(wrong), "wrong": wrong[:5]}
    else:
        sys.exit(f"unknown scenario {a.scenario}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
