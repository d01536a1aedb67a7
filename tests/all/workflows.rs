//! Workflows against a real Redis and real components: chains, groups,
//! chords (exactly once, with retrying, failing and killed members), map /
//! starmap / chunks, links, correlation ids, and the `workflow` / `result`
//! commands.

use std::time::Duration;

use celeriac_client::workflow::{self, Defaults, Spec, TaskSpec};
use celeriac_protocol::record::{ResultRecord, TaskState};
use serde_json::{Value, json};

use crate::support::Fixture;
use crate::support::tasks::{finished, reached};
use crate::support::worker::quick_config;

fn t(task: &str, args: Value) -> TaskSpec {
    TaskSpec::new(task).args(args.as_array().cloned().unwrap_or_default())
}

fn task(name: &str, args: Value) -> Spec {
    Spec::task(t(name, args))
}

async fn run(f: &Fixture, spec: &Spec) -> workflow::Running {
    workflow::run(f.broker.as_ref(), spec, &Defaults::default())
        .await
        .expect("launch the workflow")
}

async fn result_of(f: &Fixture, id: &str) -> ResultRecord {
    finished(f.broker.as_ref(), id, Duration::from_secs(30)).await
}

#[tokio::test]
async fn a_chain_feeds_each_result_forward_with_correlation_ids() {
    let f = Fixture::new(&["math"]).await;
    let _w = f.worker(quick_config("chain"));
    let spec = Spec::chain([
        task("math.add", json!([2, 2])),
        task("math.mul", json!([4])),
        task("math.add", json!([1])),
    ]);
    let run = run(&f, &spec).await;
    let last = result_of(&f, &run.final_id).await;
    assert_eq!(last.state, TaskState::Success, "{last:?}");
    assert_eq!(last.result, Some(json!(17)));
    assert_eq!(last.root_id.as_deref(), Some(run.root_id.as_str()));
    // The status lists every step, each pointing at the one before.
    let status = workflow::status(f.broker.as_ref(), &run.root_id)
        .await
        .unwrap()
        .expect("the workflow is known by its root id");
    assert_eq!(status.state, TaskState::Success);
    let records: Vec<&ResultRecord> = status
        .members
        .iter()
        .map(|m| m.record.as_ref().expect("every step ran"))
        .collect();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].parent_id, None);
    assert_eq!(
        records[1].parent_id.as_deref(),
        Some(records[0].id.as_str())
    );
    assert_eq!(
        records[2].parent_id.as_deref(),
        Some(records[1].id.as_str())
    );
    assert!(
        records
            .iter()
            .all(|r| r.root_id.as_deref() == Some(&*run.root_id))
    );
}

#[tokio::test]
async fn a_failed_step_stops_the_chain_records_why_and_calls_link_error() {
    let f = Fixture::new(&["math", "misbehave"]).await;
    let _w = f.worker(quick_config("chain-fail"));
    let spec = Spec::chain([
        task("math.add", json!([1, 1])),
        Spec::task(t("math.div", json!([0])).link_error(task("misbehave.hold", json!([])))),
        task("math.add", json!([1])),
    ]);
    let run = run(&f, &spec).await;
    // The last step never runs, but its waiter gets an answer.
    let last = result_of(&f, &run.final_id).await;
    assert_eq!(last.state, TaskState::Failure);
    let e = last.error.expect("a cause");
    assert_eq!(e.kind, "invalid-input");
    assert!(
        e.message.contains("math.div") && e.message.contains("division by zero"),
        "{}",
        e.message
    );
    // The error callback received the failure.
    let status = workflow::status(f.broker.as_ref(), &run.root_id)
        .await
        .unwrap()
        .unwrap();
    let errback = status
        .members
        .iter()
        .find(|m| m.task == "misbehave.hold")
        .expect("link_error is in the outline");
    let got = result_of(&f, &errback.id).await;
    assert_eq!(got.state, TaskState::Success);
    let failed = got.result.unwrap();
    assert_eq!(failed["task"], "math.div");
    assert_eq!(failed["error"]["kind"], "invalid-input");
    assert_eq!(status.state, TaskState::Failure);
}

#[tokio::test]
async fn a_group_lists_results_in_order_and_links_get_the_result() {
    let f = Fixture::new(&["math", "misbehave"]).await;
    let _w = f.worker(quick_config("group"));
    // Later members finish first: the order is the group's, not the clock's.
    let spec = Spec::group([
        task("misbehave.sleep", json!([300])),
        task("misbehave.sleep", json!([100])),
        Spec::task(t("math.add", json!([1, 2])).link(task("math.mul", json!([10])))),
    ]);
    let run = run(&f, &spec).await;
    let group = result_of(&f, &run.final_id).await;
    assert_eq!(group.state, TaskState::Success, "{group:?}");
    assert_eq!(group.result, Some(json!([300, 100, 3])));
    let status = workflow::status(f.broker.as_ref(), &run.root_id)
        .await
        .unwrap()
        .unwrap();
    let link = status
        .members
        .iter()
        .find(|m| m.task == "math.mul")
        .unwrap();
    assert_eq!(result_of(&f, &link.id).await.result, Some(json!(30)));
}

#[tokio::test]
async fn a_chord_with_retrying_members_calls_back_once_with_ordered_results() {
    let f = Fixture::new(&["math", "misbehave"]).await;
    let w1 = f.worker(quick_config("chord-a"));
    let w2 = f.worker(quick_config("chord-b"));
    let spec = Spec::chord(
        [
            task("misbehave.flaky", json!([2])),
            task("math.add", json!([1, 1])),
            task("misbehave.flaky", json!([1])),
            // A chain as a member: its last step reports.
            Spec::chain([
                task("math.add", json!([2, 2])),
                task("math.mul", json!([10])),
            ]),
        ],
        task("misbehave.hold", json!([])),
    );
    let run = run(&f, &spec).await;
    let callback = result_of(&f, &run.final_id).await;
    assert_eq!(callback.state, TaskState::Success, "{callback:?}");
    assert_eq!(
        callback.result,
        Some(json!([{"retries": 2}, 2, {"retries": 1}, 40]))
    );
    // Once: let every worker go idle, then count the callback's runs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ran = w1.worker.processed() + w2.worker.processed();
    // 4 header tasks + 3 retries + 1 chained step + 1 callback.
    assert_eq!(ran, 9, "tasks run in all");
}

#[tokio::test]
async fn a_chord_with_a_failed_member_fails_instead_of_hanging() {
    let f = Fixture::new(&["math", "misbehave"]).await;
    let _w = f.worker(quick_config("chord-fail"));
    let spec = Spec::chord(
        [
            task("math.add", json!([1, 1])),
            task("misbehave.fatal", json!(["disk on fire"])),
            task("misbehave.sleep", json!([200])),
        ],
        task("misbehave.hold", json!([])),
    );
    let run = run(&f, &spec).await;
    let callback = result_of(&f, &run.final_id).await;
    assert_eq!(callback.state, TaskState::Failure);
    let e = callback.error.unwrap();
    assert_eq!(e.kind, "fatal");
    assert!(e.message.contains("disk on fire"), "{}", e.message);
    let status = workflow::status(f.broker.as_ref(), &run.root_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.state, TaskState::Failure);
}

#[tokio::test]
async fn map_starmap_and_chunks_call_one_task_many_times() {
    let f = Fixture::new(&["math"]).await;
    let _w = f.worker(quick_config("map"));
    let add = || t("math.add", json!([]));
    let map = Spec::Map {
        task: t("math.fib", json!([])),
        items: vec![json!(10), json!(20)],
        star: false,
    };
    let starmap = Spec::Map {
        task: add(),
        items: vec![json!([1, 2]), json!([3, 4])],
        star: true,
    };
    let chunks = Spec::Chunks {
        task: add(),
        items: (0..5).map(|i| json!([i, i])).collect(),
        size: 2,
    };
    for (spec, want) in [
        (map, json!([55, 6765])),
        (starmap, json!([3, 7])),
        (chunks, json!([[0, 2], [4, 6], [8]])),
    ] {
        let run = run(&f, &spec).await;
        let r = result_of(&f, &run.final_id).await;
        assert_eq!(r.result, Some(want), "{r:?}");
    }
    // One bad item fails the map, naming it.
    let bad = Spec::Map {
        task: add(),
        items: vec![json!([1, 2]), json!([1, "x"])],
        star: true,
    };
    let run = run(&f, &bad).await;
    let r = result_of(&f, &run.final_id).await;
    assert_eq!(r.state, TaskState::Failure);
    assert!(r.error.unwrap().message.contains("item 1"));
}

// Multi-threaded: the in-process worker runs while the test thread waits
// on the CLI.
#[tokio::test(flavor = "multi_thread")]
async fn workflow_files_run_from_the_cli_and_result_shows_their_members() {
    let f = Fixture::new(&["math"]).await;
    let _w = f.worker(quick_config("wf-cli"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sum.toml");
    std::fs::write(
        &file,
        r#"
[chord]
body = { task = "math.sum" }
header = [
  { task = "math.add", args = [1, 1] },
  { chain = [{ task = "math.add", args = [2, 2] }, { task = "math.mul", args = [3] }] },
]
"#,
    )
    .unwrap();
    let out = f.celeriac(&["workflow", file.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "14.0");
    let root = String::from_utf8_lossy(&out.stderr)
        .lines()
        .next()
        .unwrap()
        .to_string();
    let out = f.celeriac(&["result", &root]);
    assert!(out.status.success(), "{out:?}");
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["state"], "SUCCESS");
    assert_eq!(status["members"].as_array().unwrap().len(), 5, "{status}");
    // A broken file names where.
    std::fs::write(
        &file,
        "[chord]\nheader = [{ task = \"math.add\", tsak = 1 }]\nbody = { task = \"math.sum\" }\n",
    )
    .unwrap();
    let out = f.celeriac(&["workflow", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("workflow.chord.header[0]: unknown field `tsak`"),
        "{err}"
    );
}

/// SIGKILL of the worker holding a member, then of the one holding the
/// callback: nothing is lost, the group joins once, the callback's result
/// is whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_chord_survives_kills_of_member_and_callback_holders() {
    let f = Fixture::new(&["misbehave"]).await;
    let b = f.broker.as_ref();
    let flags = [
        "--track-started",
        "--visibility-timeout",
        "2s",
        "--concurrency",
        "2",
    ];
    let mut workers: Vec<_> = ["kill-a", "kill-b", "kill-c"]
        .iter()
        .map(|id| f.worker_process(id, &flags))
        .collect();
    for w in &workers {
        w.ready(b).await;
    }
    let member = || task("misbehave.sleep", json!([1500]));
    let spec = Spec::chord(
        (0..6).map(|_| member()),
        task("misbehave.hold", json!([3000])),
    );
    let run = run(&f, &spec).await;
    let status = workflow::status(b, &run.root_id).await.unwrap().unwrap();
    let first = &status.members[1].id; // [0] is the group itself
    let started = reached(b, first, TaskState::Started).await;
    let holder = workers.iter().position(|w| w.id == started.worker).unwrap();
    workers[holder].signal("-KILL");
    let started = reached(b, &run.final_id, TaskState::Started).await;
    let holder = workers.iter().position(|w| w.id == started.worker).unwrap();
    workers[holder].signal("-KILL");
    let callback = finished(b, &run.final_id, Duration::from_secs(60)).await;
    assert_eq!(callback.state, TaskState::Success, "{callback:?}");
    assert_eq!(
        callback.result,
        Some(json!([1500, 1500, 1500, 1500, 1500, 1500]))
    );
    let joins: usize = workers
        .iter()
        .map(|w| w.log().matches("group joined").count())
        .sum();
    assert_eq!(joins, 1, "the group's join fired once");
    for w in &mut workers {
        let _ = w.child.kill();
    }
    assert_eq!(b.queue_stats("default").await.unwrap().dead, 0);
}
