//! Celery interop: the real `celery` package (installed by tests/run.sh
//! from PyPI) as an unmodified producer, and as a worker beside Celeriac's,
//! against `celeriac worker --celery-queue` processes on a real Redis. The
//! Python side is tests/celery/interop.py; each test has a Celery queue of
//! its own (Celery's keys are unprefixed), and its Celeriac keys under the
//! test's prefix.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::Commands;
use serde_json::{Value, json};

use crate::support::{Fixture, WorkerProcess, wait_for, workspace_root};

/// The Python with Celery in it (tests/run.sh makes it).
fn python() -> PathBuf {
    let p = std::env::var_os("CELERIAC_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/toolchains/python/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: run tests/run.sh, which installs Celery",
        p.display()
    );
    p
}

/// One test's Celery side: its queue and a Celeriac worker consuming it.
struct Celery {
    f: Fixture,
    queue: String,
    /// Celery's `global_keyprefix`, if the test sets one.
    keyprefix: String,
}

impl Celery {
    async fn new(modules: &[&str]) -> Self {
        let f = Fixture::new(modules).await;
        let queue = format!("cq-{}", f.prefix().trim_end_matches(':'));
        Self {
            f,
            queue,
            keyprefix: String::new(),
        }
    }

    /// Python, with this test's broker and queue for Celery.
    fn python(&self) -> Command {
        let mut c = Command::new(python());
        c.env("CELERY_BROKER_URL", self.f.url())
            .env("CELERY_QUEUE", &self.queue)
            .env("CELERY_KEYPREFIX", &self.keyprefix)
            .env("PYTHONDONTWRITEBYTECODE", "1");
        c
    }

    /// The producer script.
    fn command(&self) -> Command {
        let mut c = self.python();
        c.arg(workspace_root().join("tests/celery/interop.py"));
        c
    }

    /// Run a scenario to the end; its last line of output, as JSON.
    fn run(&self, args: &[&str]) -> Value {
        let out = self.command().args(args).output().expect("run python");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "interop.py {args:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let last = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }

    /// `send_task(name, args).get()` and what came of it.
    fn get(&self, name: &str, args: Value, extra: &[&str]) -> Value {
        let args = args.to_string();
        let mut all = vec!["get", name, &args];
        all.extend_from_slice(extra);
        self.run(&all)
    }

    /// `celeriac worker --celery-queue <queue>` with `extra` flags.
    async fn worker(&self, id: &str, extra: &[&str]) -> WorkerProcess {
        let mut flags = vec!["--celery-queue", self.queue.as_str()];
        if !extra.contains(&"--concurrency") {
            flags.extend(["--concurrency", "4"]);
        }
        flags.extend_from_slice(extra);
        let w = self.f.worker_process(id, &flags);
        w.ready(self.f.broker.as_ref()).await;
        w
    }

    fn list_len(&self) -> usize {
        self.f
            .redis()
            .llen(format!("{}{}", self.keyprefix, self.queue))
            .unwrap()
    }
}

impl Drop for Celery {
    fn drop(&mut self) {
        let mut r = self.f.redis();
        let lists: Vec<String> = [0, 3, 6, 9]
            .iter()
            .map(|p| match p {
                0 => format!("{}{}", self.keyprefix, self.queue),
                p => format!("{}{}\x06\x16{p}", self.keyprefix, self.queue),
            })
            .collect();
        let _: Result<(), _> = r.del(lists);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_task_get_returns_the_value_and_failures_raise_with_the_cause() {
    let c = Celery::new(&["math", "misbehave"]).await;
    let _w = c.worker("cw-basic", &[]).await;

    let r = c.get("math.add", json!([2, 3]), &[]);
    assert_eq!(r["value"], json!(5), "{r}");

    let r = c.get("misbehave.fatal", json!(["the disk is on fire"]), &[]);
    assert_eq!(r["error_type"], "FatalError", "{r}");
    assert_eq!(r["state"], "FAILURE", "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("the disk is on fire"),
        "{r}"
    );
    assert!(
        r["traceback"]
            .as_str()
            .unwrap()
            .starts_with("celeriac: fatal: "),
        "{r}"
    );

    // A time limit from Celery's `timelimit` header, raised as Celery's own.
    let r = c.get("misbehave.sleep", json!([5000]), &["--time-limit", "0.3"]);
    assert_eq!(r["error_type"], "TimeLimitExceeded", "{r}");
    assert!(r["elapsed"].as_f64().unwrap() < 4.0, "{r}");
    // A soft limit tells the task to wrap up, which this one does.
    let r = c.get(
        "misbehave.patient",
        json!([5.0]),
        &["--soft-time-limit", "0.3"],
    );
    assert_eq!(r["value"]["stopped"], json!(true), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_names_map_to_modules_through_the_settings() {
    let mut c = Celery::new(&["math"]).await;
    // Celery configured with a global_keyprefix, Celeriac told the same.
    c.keyprefix = format!("{}app:", c.f.prefix());
    let settings = c.f.cache_dir().join("celeriac.toml");
    std::fs::write(
        &settings,
        format!(
            "[celery]\nglobal_keyprefix = {:?}\n[celery.tasks]\n\"myapp.tasks.add\" = \"math.add\"\n\
             \"myapp.tasks.mul\" = {{ task = \"math.mul\", max_retries = 0 }}\n",
            c.keyprefix
        ),
    )
    .unwrap();
    let _w = c
        .worker("cw-names", &["--config", settings.to_str().unwrap()])
        .await;
    assert_eq!(
        c.get("myapp.tasks.add", json!([2, 3]), &[])["value"],
        json!(5)
    );
    assert_eq!(
        c.get("myapp.tasks.mul", json!([2, 3]), &[])["value"],
        json!(6)
    );
    assert_eq!(c.get("math.add", json!([20, 3]), &[])["value"], json!(23));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn countdown_waits_and_expired_tasks_are_revoked() {
    let c = Celery::new(&["math"]).await;
    let _w = c.worker("cw-eta", &[]).await;
    let r = c.get("math.add", json!([1, 1]), &["--countdown", "1.5"]);
    assert_eq!(r["value"], json!(2), "{r}");
    assert!(r["elapsed"].as_f64().unwrap() >= 1.4, "ran early: {r}");

    // Due after it expires: never runs, and the producer hears why.
    let r = c.get(
        "math.add",
        json!([1, 1]),
        &["--countdown", "1", "--expires", "0.5"],
    );
    assert_eq!(r["error_type"], "TaskRevokedError", "{r}");
    assert_eq!(r["state"], "REVOKED", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_resent_until_max_retries() {
    let c = Celery::new(&["misbehave"]).await;
    let _w = c.worker("cw-retry", &["--retry-backoff", "50ms"]).await;
    // Asks for a retry twice, then succeeds on its third run.
    let r = c.get("misbehave.flaky", json!([2]), &[]);
    assert_eq!(r["value"], json!({"retries": 2}), "{r}");
    // Celery's default max_retries is 3: a fourth retry is not made.
    let r = c.get("misbehave.flaky", json!([5]), &[]);
    assert_eq!(r["state"], "FAILURE", "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 retries"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_and_links_run_across_celeriac_tasks() {
    let c = Celery::new(&["math", "misbehave"]).await;
    let _w = c.worker("cw-chain", &[]).await;
    // (2 + 2 + 4) × 10, each step sent on by the Celeriac worker.
    let r = c.run(&["chain"]);
    assert_eq!((&r["value"], &r["parent"]), (&json!(80), &json!(8)), "{r}");

    // A failed step fails the chain's result too, rather than leaving it
    // pending for ever.
    let r = c.run(&["chain-fails"]);
    assert_eq!(r["state"], "FAILURE", "{r}");
    assert!(r["error"].as_str().unwrap().contains("broken step"), "{r}");

    // Groups: each member's record carries the group; GroupResult reads them.
    let r = c.run(&["group"]);
    assert_eq!(r["value"], json!([0, 2, 4, 6, 8]), "{r}");
    // Chords with a Celeriac header are refused with the reason, not left
    // hanging.
    let r = c.run(&["chord"]);
    assert_eq!(r["state"], "FAILURE", "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("chords whose header tasks run on Celeriac"),
        "{r}"
    );

    let r = c.run(&["link"]);
    assert_eq!((&r["value"], &r["callback"]), (&json!(2), &json!(6)), "{r}");
    assert_eq!(r["failed"], "FatalError", "{r}");
    assert_eq!(
        r["errback"], r["failed_id"],
        "errbacks get the failed task's id: {r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_started_shows_started_to_celery() {
    let c = Celery::new(&["misbehave"]).await;
    let _w = c.worker("cw-started", &["--track-started"]).await;
    let r = c.run(&["started"]);
    assert_eq!(r["value"], json!(1500), "{r}");
    assert!(
        r["seen"].as_array().unwrap().contains(&json!("STARTED")),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_result_runs_the_task_and_stores_nothing() {
    let c = Celery::new(&["math"]).await;
    let w = c.worker("cw-ignore", &["--concurrency", "1"]).await;
    let r = c.run(&["ignore"]);
    assert_eq!(r["after"]["value"], json!(7), "{r}");
    let ignored = r["ignored"].as_str().unwrap();
    let stored: Option<String> =
        c.f.redis()
            .get(format!("celery-task-meta-{ignored}"))
            .unwrap();
    assert_eq!(
        stored, None,
        "a record was stored for an ignore_result task"
    );
    // It did run: both left the queue and were processed.
    assert_eq!(c.list_len(), 0);
    let processed = wait_for("both tasks counted", Duration::from_secs(10), async || {
        let workers = c.f.broker.workers().await.unwrap_or_default();
        workers
            .iter()
            .find(|x| x.id == w.id)
            .map(|x| x.processed)
            .filter(|n| *n >= 2)
    })
    .await;
    assert_eq!(processed, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_batch_loses_nothing() {
    let c = Celery::new(&["misbehave"]).await;
    let fast = ["--visibility-timeout", "2s"];
    let mut first = c.worker("cw-kill-1", &fast).await;
    // 300 tasks of 20 ms each, about 1.5 s of work at concurrency 4.
    let mut producer = c
        .command()
        .args(["batch", "300", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed once it has run some, with more in hand and queued.
    wait_for(
        "the first worker to run 40 tasks",
        Duration::from_secs(60),
        async || {
            let workers = c.f.broker.workers().await.unwrap_or_default();
            workers
                .iter()
                .any(|w| w.id == first.id && w.processed >= 40)
        },
    )
    .await;
    first.signal("-KILL");
    first.exit_within(Duration::from_secs(10)).await;
    let _second = c.worker("cw-kill-2", &fast).await;
    let out = wait_producer(&mut producer, Duration::from_secs(120));
    assert_eq!(out["ok"], json!(300), "{out}");
}

/// The batch producer's summary line, once it exits.
fn wait_producer(child: &mut Child, limit: Duration) -> Value {
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "producer still waiting"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = std::mem::replace(child, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_and_celeriac_workers_share_a_queue_each_running_their_own() {
    let c = Celery::new(&["math"]).await;
    let _w = c.worker("cw-side", &[]).await;
    // Celery's tasks first in the queue, Celeriac's behind and between them.
    let mut sends: Vec<String> = Vec::new();
    for i in 0..6 {
        sends.push("pyside.echo".into());
        sends.push(json!([i]).to_string());
        sends.push("math.add".into());
        sends.push(json!([i, 100]).to_string());
    }
    let mut args = vec!["send"];
    args.extend(sends.iter().map(String::as_str));
    let ids: Vec<String> = c.run(&args)["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let (py, math): (Vec<_>, Vec<_>) = ids.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    fn ids_of<'a>(v: &[(usize, &'a String)]) -> Vec<&'a str> {
        v.iter().map(|(_, id)| id.as_str()).collect()
    }

    // Celeriac runs its own though Celery's are ahead of them...
    let mut collect = vec!["collect"];
    collect.extend(ids_of(&math));
    let got = c.run(&collect);
    let values: Vec<&Value> = got["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["value"])
        .collect();
    assert_eq!(
        values,
        (0..6)
            .map(|i| json!(i + 100))
            .collect::<Vec<_>>()
            .iter()
            .collect::<Vec<_>>()
    );
    // ...and leaves Celery's where they were, in order, not dead-lettered.
    assert_eq!(c.list_len(), 6);
    let dead = c.f.broker.dlq_list(&c.queue, 10).await.unwrap();
    assert!(dead.is_empty(), "{dead:?}");

    // A Celery worker on the same queue runs them.
    let mut celery = c
        .python()
        .args([
            "-m", "celery", "-A", "interop", "worker", "-Q", &c.queue, "--pool", "solo",
        ])
        .args([
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "warning",
        ])
        .current_dir(workspace_root().join("tests/celery"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut collect = vec!["collect"];
    collect.extend(ids_of(&py));
    let got = c.run(&collect);
    let _ = celery.kill();
    let _ = celery.wait();
    for (i, r) in got["results"].as_array().unwrap().iter().enumerate() {
        assert_eq!(r["value"], json!({"echo": i, "by": "celery"}), "{got}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_moves_only_its_own_tasks_keeps_order_and_bounds_the_backlog() {
    let c = Celery::new(&["math"]).await;
    let mut r = c.f.redis();
    let env = |task: &str, tag: &str| {
        json!({"body": "", "headers": {"task": task, "id": tag}}).to_string()
    };
    // Oldest first: kombu pushes on the left and pops on the right.
    let oldest_first = [
        env("other.thing", "a"),
        env("math.add", "1"),
        "not json".to_string(),
        env("myapp.mapped", "2"),
        env("other.thing", "b"),
        env("math.add", "3"),
    ];
    for m in &oldest_first {
        let _: () = r.lpush(&c.queue, m).unwrap();
    }
    let high = format!("{}\x06\x169", c.queue);
    let _: () = r.lpush(&high, env("math.mul", "9")).unwrap();
    let queues = vec![c.queue.clone()];
    let names = vec!["myapp.mapped".to_string()];
    let broker = c.f.broker.as_ref();

    let first = broker.celery_ingest("", &queues, &names, 2).await.unwrap();
    assert_eq!((first.moved, first.full), (2, false), "{first:?}");
    // Room for two: none more while they wait unread.
    let full = broker.celery_ingest("", &queues, &names, 2).await.unwrap();
    assert!(full.full && full.moved == 0, "{full:?}");
    let rest = broker
        .celery_ingest("", &queues, &names, 100)
        .await
        .unwrap();
    assert_eq!((rest.moved, rest.left), (2, 3), "{rest:?}");

    // What Celeriac does not run stays, in order.
    let mut left: Vec<String> = r.lrange(&c.queue, 0, -1).unwrap();
    left.reverse();
    assert_eq!(
        left,
        [
            oldest_first[0].clone(),
            oldest_first[2].clone(),
            oldest_first[4].clone()
        ]
    );
    // Moved in order, kombu's priority 0 first, then the rest on their
    // levels (kombu's 9, the lowest, is Celeriac's level 0).
    let level = |q: &str| -> Vec<String> {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(c.f.key(q))
            .arg("-")
            .arg("+")
            .query(&mut c.f.redis())
            .unwrap();
        entries
            .into_iter()
            .map(|(_, f)| {
                serde_json::from_str::<Value>(&f[0].1).unwrap()["headers"]["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(level(&format!("queue:{{{}}}:9", c.queue)), ["1", "2", "3"]);
    assert_eq!(level(&format!("queue:{{{}}}", c.queue)), ["9"]);
}
