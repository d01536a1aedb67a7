//! The `celeriac_broker::Broker` contract, each behaviour written once as
//! a test body taking `Arc<dyn Broker>`, run against both brokers:
//! `broker::memory::…` on `memory://` and `broker::redis::…` on the test
//! Redis under a key prefix of the test's own. Where the two disagree the
//! test fails on one of them (a known disagreement is marked on the broker
//! it fails on, with the reason).

use std::sync::Arc;
use std::time::Duration;

use celeriac_broker::{
    Broker, Claim, Completed, Completion, Delivery, Disposition, FetchLimits, ModuleInfo,
    OVERSIZE_PREFIX, Outgoing, ResultWrite, WorkerInfo,
};
use celeriac_protocol::{Digest, now_ms};
use serde_json::{Value, json};

use crate::support::{Prefix, fetch_limits, redis_url, wait_for};

/// The queue most cases use.
const Q: &str = "jobs";

/// A broker under test, and the prefix whose keys go with it.
struct Subject {
    broker: Arc<dyn Broker>,
    _prefix: Option<Prefix>,
}

async fn memory() -> Subject {
    let broker = celeriac_broker::connect("memory://", "unused:")
        .await
        .expect("a memory broker");
    Subject {
        broker,
        _prefix: None,
    }
}

async fn redis() -> Subject {
    let prefix = Prefix::new();
    let broker = celeriac_broker::connect(&redis_url(), prefix.name())
        .await
        .expect("connect to the test Redis");
    Subject {
        broker,
        _prefix: Some(prefix),
    }
}

/// One test per broker for each case: `case` runs on both; `case @redis
/// #[attr]` adds an attribute (e.g. `ignore = "…"`) to the Redis one.
macro_rules! conformance {
    ($($case:ident $(@redis #[$redis:meta])?),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $case() {
                    let subject = super::memory().await;
                    super::$case(subject.broker.clone()).await;
                }
            )*
        }
        mod redis {
            $(
                $(#[$redis])?
                #[tokio::test]
                async fn $case() {
                    let subject = super::redis().await;
                    super::$case(subject.broker.clone()).await;
                }
            )*
        }
    };
}

conformance! {
    answers_ping,
    fetch_hands_out_what_was_enqueued_in_order,
    messages_enqueued_before_declare_are_delivered,
    fetch_takes_at_most_max_messages,
    fetch_keeps_within_the_byte_budget_but_always_takes_one,
    oversized_messages_come_back_as_a_prefix,
    fetch_reads_every_queue_asked_for,
    fetch_waits_for_a_message,
    fetch_returns_nothing_when_idle,
    delayed_messages_wait_for_promote_due,
    promote_due_moves_due_messages_in_due_order,
    ack_drops_the_message_and_stores_the_result,
    ack_with_a_fresh_lease_drops_the_message,
    retry_waits_in_delayed_as_the_new_payload,
    dead_letter_keeps_the_message_and_the_reason,
    requeue_hands_the_message_back_uncounted,
    requeue_starts_the_delivery_count_over,
    completing_a_message_taken_over_changes_nothing,
    completing_a_message_nobody_holds_writes_only_the_result,
    each_completion_in_a_batch_stands_alone,
    renew_keeps_held_leases_and_reports_lost_ones,
    pending_lists_other_consumers_messages,
    claim_takes_over_only_idle_messages,
    prune_removes_only_consumers_holding_nothing,
    results_are_stored_replaced_and_expire,
    wait_result_returns_a_final_record_at_once,
    wait_result_wakes_when_the_record_becomes_final,
    wait_result_wakes_on_a_completion,
    wait_result_gives_the_latest_record_at_the_timeout,
    dead_letters_are_listed_requeued_and_purged,
    queues_lists_only_queues_enqueued_to_or_declared,
    queue_stats_of_an_unknown_queue_are_zero,
    heartbeats_list_workers_until_forgotten_or_expired,
    component_bytes_are_stored_once_with_every_signature,
    modules_point_at_digests,
    kv_values_are_stored_per_module,
    kv_set_if_absent_and_ttl,
    kv_increment_is_atomic_and_typed,
}

// ---------------------------------------------------------------------
// Helpers.

fn message(queue: &str, payload: &str) -> Outgoing {
    Outgoing {
        queue: queue.into(),
        payload: payload.into(),
        due_ms: None,
    }
}

fn delayed(queue: &str, payload: &str, due_ms: u64) -> Outgoing {
    Outgoing {
        due_ms: Some(due_ms),
        ..message(queue, payload)
    }
}

/// Declare `Q` and enqueue `payloads` on it.
async fn enqueue(b: &dyn Broker, payloads: &[&str]) {
    b.declare(&[Q.into()]).await.expect("declare");
    let messages: Vec<Outgoing> = payloads.iter().map(|p| message(Q, p)).collect();
    b.enqueue(&messages).await.expect("enqueue");
}

/// What is ready on `Q` for `consumer` now, up to `n` messages.
async fn fetch(b: &dyn Broker, consumer: &str, n: usize) -> Vec<Delivery> {
    fetch_with(b, consumer, fetch_limits(n)).await
}

async fn fetch_with(b: &dyn Broker, consumer: &str, limits: FetchLimits) -> Vec<Delivery> {
    b.fetch(&[Q.into()], consumer, limits, Duration::ZERO)
        .await
        .expect("fetch")
}

/// The one message ready on `Q`, for `consumer`.
async fn fetch_one(b: &dyn Broker, consumer: &str) -> Delivery {
    let mut got = fetch(b, consumer, 10).await;
    assert_eq!(got.len(), 1, "expected one message: {got:?}");
    got.remove(0)
}

fn payloads(deliveries: &[Delivery]) -> Vec<&str> {
    deliveries.iter().map(|d| &*d.payload).collect()
}

/// A result record in `state` for task `id`.
fn record(id: &str, state: &str) -> String {
    json!({"id": id, "task": "math.add", "state": state, "retries": 0}).to_string()
}

fn result(id: &str, state: &str, ttl: Duration) -> ResultWrite {
    ResultWrite {
        task_id: id.into(),
        json: record(id, state),
        ttl,
    }
}

/// How `d` leaves its consumer, with `result` written first.
fn completion(d: &Delivery, disposition: Disposition, result: Option<ResultWrite>) -> Completion {
    Completion {
        queue: d.queue.clone(),
        delivery_id: d.id.clone(),
        payload: d.payload.clone(),
        result,
        disposition,
        lease_fresh: false,
        effects: Default::default(),
    }
}

/// Complete one delivery as `consumer`.
async fn complete(b: &dyn Broker, consumer: &str, c: Completion) -> Completed {
    let mut outcomes = b.complete(consumer, &[c]).await.expect("complete");
    assert_eq!(outcomes.len(), 1);
    outcomes.remove(0).expect("the completion failed")
}

/// `consumer` takes `d` over from whoever holds it, at once.
async fn take_over(b: &dyn Broker, consumer: &str, d: &Delivery) -> Delivery {
    let pending = b
        .pending(Q, consumer, Duration::ZERO, 100)
        .await
        .expect("pending");
    let seen = pending
        .iter()
        .find(|p| p.id == d.id)
        .unwrap_or_else(|| panic!("{} is not pending: {pending:?}", d.id));
    let claim = Claim {
        id: d.id.clone(),
        min_idle_ms: 0,
        deliveries: seen.deliveries,
    };
    let mut taken = b
        .claim(Q, consumer, &[claim], usize::MAX)
        .await
        .expect("claim");
    assert_eq!(taken.len(), 1, "{consumer} could not take {} over", d.id);
    taken.remove(0)
}

/// (ready, delayed, in flight, dead) on `queue`.
async fn counts(b: &dyn Broker, queue: &str) -> (u64, u64, u64, u64) {
    let s = b.queue_stats(queue).await.expect("queue stats");
    assert_eq!(s.queue, queue);
    (s.ready, s.delayed, s.in_flight, s.dead)
}

async fn result_of(b: &dyn Broker, id: &str) -> Option<String> {
    b.get_result(id).await.expect("get a result")
}

// ---------------------------------------------------------------------
// Queues: enqueue and fetch.

async fn answers_ping(b: Arc<dyn Broker>) {
    b.ping().await.expect("ping");
    assert!(!b.describe().is_empty());
}

async fn fetch_hands_out_what_was_enqueued_in_order(b: Arc<dyn Broker>) {
    enqueue(b.as_ref(), &["a", "b", "c"]).await;
    assert_eq!(counts(b.as_ref(), Q).await, (3, 0, 0, 0));
    let got = fetch(b.as_ref(), "w1", 10).await;
    assert_eq!(payloads(&got), ["a", "b", "c"]);
    for d in &got {
        assert_eq!((d.queue.as_str(), d.deliveries), (Q, 1), "{d:?}");
        assert_eq!(d.size, d.payload.len());
        assert!(!d.is_oversize());
    }
    let mut ids: Vec<&str> = got.iter().map(|d| d.id.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3, "ids are not distinct: {ids:?}");
    assert_eq!(counts(b.as_ref(), Q).await, (0, 0, 3, 0));
    assert!(fetch(b.as_ref(), "w2", 10).await.is_empty());
}

async fn messages_enqueued_before_declare_are_delivered(b: Arc<dyn Broker>) {
    b.enqueue(&[message(Q, "early")]).await.expect("enqueue");
    b.declare(&[Q.into()]).await.expect("declare");
    // Declaring again changes nothing.
    b.declare(&[Q.into()]).await.expect("declare again");
    assert_eq!(payloads(&fetch(b.as_ref(), "w", 10).await), ["early"]);
}

async fn fetch_takes_at_most_max_messages(b: Arc<dyn Broker>) {
    enqueue(b.as_ref(), &["1", "2", "3", "4", "5"]).await;
    assert_eq!(payloads(&fetch(b.as_ref(), "w", 2).await), ["1", "2"]);
    assert_eq!(payloads(&fetch(b.as_ref(), "w", 10).await), ["3", "4", "5"]);
}

async fn fetch_keeps_within_the_byte_budget_but_always_takes_one(b: Arc<dyn Broker>) {
    let hundred = ["a", "b", "c"].map(|c| c.repeat(100));
    let hundred = hundred.each_ref().map(String::as_str);
    enqueue(b.as_ref(), &hundred).await;
    let budget = |max_bytes| FetchLimits {
        max: 10,
        max_bytes,
        max_message_bytes: 1 << 20,
    };
    let got = fetch_with(b.as_ref(), "w", budget(250)).await;
    assert_eq!(payloads(&got), [hundred[0], hundred[1]]);
    // The first message is taken whatever its size.
    let got = fetch_with(b.as_ref(), "w", budget(10)).await;
    assert_eq!(payloads(&got), [hundred[2]]);
}

async fn oversized_messages_come_back_as_a_prefix(b: Arc<dyn Broker>) {
    let big = "x".repeat(5000);
    let small = "s".repeat(100);
    enqueue(b.as_ref(), &[&big, &small]).await;
    // The big one costs only its prefix in the byte budget: both fit.
    let limits = FetchLimits {
        max: 10,
        max_bytes: OVERSIZE_PREFIX + small.len(),
        max_message_bytes: 2000,
    };
    let got = fetch_with(b.as_ref(), "w", limits).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let cut = got
        .iter()
        .find(|d| d.is_oversize())
        .expect("an oversized delivery");
    assert_eq!(cut.size, big.len());
    assert_eq!(&*cut.payload, &big[..OVERSIZE_PREFIX]);
    let whole = got
        .iter()
        .find(|d| !d.is_oversize())
        .expect("the small one");
    assert_eq!((&*whole.payload, whole.size), (small.as_str(), small.len()));

    // A consumer dead-letters it unread (Redis may have already: then it
    // is no longer held, and the completion finds it gone).
    let dead = Disposition::DeadLetter {
        reason: "message too large".into(),
        payload: None,
    };
    let outcome = complete(b.as_ref(), "w", completion(cut, dead, None)).await;
    assert!(
        matches!(outcome, Completed::Done | Completed::Gone),
        "{outcome:?}"
    );
    let outcome = complete(b.as_ref(), "w", completion(whole, Disposition::Ack, None)).await;
    assert_eq!(outcome, Completed::Done);
    let letters = b.dlq_list(Q, 10).await.expect("list dead letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].payload, &big[..OVERSIZE_PREFIX]);
    assert!(!letters[0].reason.is_empty());
    assert_eq!(counts(b.as_ref(), Q).await, (0, 0, 0, 1));
}

async fn fetch_reads_every_queue_asked_for(b: Arc<dyn Broker>) {
    let queues = ["left".to_string(), "right".to_string()];
    b.declare(&queues).await.expect("declare");
    b.enqueue(&[message("right", "r"), message("left", "l")])
        .await
        .expect("enqueue");
    let got = b
        .fetch(&queues, "w", fetch_limits(10), Duration::ZERO)
        .await
        .expect("fetch");
    let mut seen: Vec<(&str, &str)> = got
        .iter()
        .map(|d| (d.queue.as_str(), &*d.payload))
        .collect();
    seen.sort();
    assert_eq!(seen, [("left", "l"), ("right", "r")]);
}

async fn fetch_waits_for_a_message(b: Arc<dyn Broker>) {
    b.declare(&[Q.into()]).await.expect("declare");
    // Whether the message comes before the fetch starts waiting or while
    // it waits, the fetch returns it.
    let fetcher = {
        let b = b.clone();
        tokio::spawn(async move {
            b.fetch(&[Q.into()], "w", fetch_limits(10), Duration::from_secs(30))
                .await
                .expect("fetch")
        })
    };
    b.enqueue(&[message(Q, "late")]).await.expect("enqueue");
    let got = fetcher.await.expect("the fetch panicked");
    assert_eq!(payloads(&got), ["late"]);
    assert_eq!(got[0].deliveries, 1);
}

async fn fetch_returns_nothing_when_idle(b: Arc<dyn Broker>) {
    b.declare(&[Q.into()]).await.expect("declare");
    let got = b
        .fetch(
            &[Q.into()],
            "w",
            fetch_limits(10),
            Duration::from_millis(100),
        )
        .await
        .expect("fetch");
    assert!(got.is_empty(), "{got:?}");
}

// ---------------------------------------------------------------------
// Delays.

async fn delayed_messages_wait_for_promote_due(b: Arc<dyn Broker>) {
    b.declare(&[Q.into()]).await.expect("declare");
    let now = now_ms();
    let due = now + 60_000;
    b.enqueue(&[delayed(Q, "later", due), delayed(Q, "past", now - 1000)])
        .await
        .expect("enqueue");
    // Due already: ready at once.
    assert_eq!(counts(b.as_ref(), Q).await, (1, 1, 0, 0));
    assert_eq!(payloads(&fetch(b.as_ref(), "w", 10).await), ["past"]);
    assert!(fetch(b.as_ref(), "w", 10).await.is_empty());
    let queues = [Q.to_string()];
    assert_eq!(b.promote_due(&queues, now).await.expect("promote"), 0);
    assert_eq!(b.promote_due(&queues, due).await.expect("promote"), 1);
    assert_eq!(counts(b.as_ref(), Q).await, (1, 0, 1, 0));
    let d = fetch_one(b.as_ref(), "w").await;
    assert_eq!((&*d.payload, d.deliveries), ("later", 1));
    assert_eq!(b.promote_due(&queues, due).await.expect("promote"), 0);
}

async fn promote_due_moves_due_messages_in_due_order(b: Arc<dyn Broker>) {
    b.declare(&[Q.into()]).await.expect("declare");
    let t = now_ms() + 60_000;
    b.enqueue(&[
        delayed(Q, "second", t + 2000),
        delayed(Q, "never", t + 3_600_000),
        delayed(Q, "first", t + 1000),
    ])
    .await
    .expect("enqueue");
    assert_eq!(
        b.promote_due(&[Q.into()], t + 2000).await.expect("promote"),
        2
    );
    assert_eq!(
        payloads(&fetch(b.as_ref(), "w", 10).await),
        ["first", "second"]
    );
    assert_eq!(counts(b.as_ref(), Q).await, (0, 1, 2, 0));
}

// ---------------------------------------------------------------------
// Completions: each disposition.

async fn ack_drops_the_message_and_stores_the_result(b: Arc<dyn Broker>) {
    enqueue(b.as_ref(), &["m"]).await;
    let d = fetch_one(b.as_ref(), "w").await;
    let write = result("t1", "SUCCESS", Duration::from_secs(60));
    let c = completion(&d, Disposition::Ack, Some(write.clone()));
    assert_eq!(complete(b.as_ref(), "w", c).await, Completed::Done);
    assert_eq!(result_of(b.as_ref(), "t1").await, Some(write.json));
    assert_eq!(counts(b.as_ref(), Q).await, (0, 0, 0, 0));
    assert!(fetch(b.as_ref(), "w", 10).await.is_empty());
}

async fn ack_with_a_fresh_lease_drops_the_message(b: Arc<dyn Broker>) {
    enqueue(b.as_ref(), &["m"]).await;
    let d = fetch_one(b.as_ref(), "w").await;
    let write = result("t1", "SUCCESS", Duration::from_secs(60));
    let mut c = completion(&d, Disposition::Ack, Some(write.clone()));
    c.lease_fresh = true;
    assert_eq!(complete(b.as_ref(), "w", c).await, Completed::Done);
    assert_eq!(result_of(b.as_ref(), "t1").await, Some(write.json));
    assert_eq!(counts(b.as_ref(), Q).await, (0, 0, 0, 0));
}

async fn retry_waits_in_delayed_as_the_new_payload(b: Arc<dyn Broker>) {
    enqueue(b.as_ref(), &["attempt 0"]).await;
    let d = fetch_one(b.as_ref(), "w").await;
    let due = now_ms() + 60_000;
    let retry = Disposition::Retry {
        payload: "attempt 1".into(),
        due_ms: due,
    };
    let write = result("t1", "RETRY", Duration::from_secs(60));
    let c = completion(&d, retry, Some(write.clone()));
    assert_eq!(complete(b.as_ref(), "w", c).await, Completed::Done);
    assert_eq!(result_of(b.as_ref(), "t1").await, Some(write.json));
    assert_eq!(counts(b.as_ref(), Q).await, (0, 1, 0, 0));
    assert!(fetch(b.as_ref(), "w", 10).await.is_empty());
    assert_eq!(b.promote_due(&[Q.into()], due).await.expect("promote"), 1);
    let d = fetch_one(b.as_ref(), "w").await;
    assert_eq!((&*d.payload, d.deliveries), ("attempt 1", 1));
}

async fn dead_letter_keeps_the_message_and_the_reason(b: Arc<dyn Broker>) {
    enqueue(b.as_ref(), &["bad", "huge"]).await;
    let got = fetch(b.as_ref(), "w", 10).await;
    let before = now_ms();
    let as_received = Disposition::DeadLetter {
        reason: "malformed message: nope".into(),
        payload: None,
    };
    let stand_in = Disposition::DeadLetter {
        reason: "result too large".into(),
        payload: Some("stand-in".into()),
    };
    let write = result("t1", "FAILURE", Duration::from_secs(60));
    let outcomes = b
        .complete(
            "w",
            &[
                completion(&got[0], as_received, Some(write.clone())),
                completion(&got[1], stand_in, None),
            ],
        )
        .await
        .expect("complete");
    let outcomes: Vec<Completed> = outcomes
        .into_iter()
        .map(|o| o.expect("the completion failed"))
        .collect();
    assert_eq!(outcomes, [Completed::Done, Completed::Done]);
    assert_eq!(result_of(b.as_ref(), "t1").await, Some(write.json));
    let after = now_ms();
    let letters = b.dlq_list(Q, 10).await.expect("list dead letters");
    let seen: Vec<(&str, &str, &str)> = letters
        .iter()
        .map(|l| (l.queue.as_str(), l.payload.as_str(), l.reason.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (Q, "bad", "malformed message: nope"),
            (Q, "stand-in", "result too large"),
        ]
    );
    for l in &letters {
        assert!(before <= l.at && l.at <= after, "{l:?} not dated now");
    }
    assert_eq!(counts(b.as_ref(), Q).await, (0, 0, 0, 2));
}

async fn requeue_hands_the_message_back_uncounted(b: Arc<dyn Broker>) {
    enqueue(b.as_ref(), &["m"]).await;
    for round in 0..2 {
        let d = fetch_one(b.as_ref(), "w").await;
        // A requeued delivery was handed back, not lost: it does not count.
        assert_eq!((&*d.payload, d.deliveries), ("m", 1), "round {round}");
        let c = completion(&d, Disposition::Requeue, None);
        assert_eq!(complete(b.as_ref(), "w", c).await, Completed::Done);
        assert_eq!(counts(b.as_ref(), Q).await, (1, 0, 0, 0));
    }
}

/// A requeue (a live holder handing a message back unrun: shutting down,
/// out of instance slots, component store unreachable) puts it back as a
/// new message, as Redis adds a new stream entry: its delivery count starts
/// over, also after a take-over. Poison detection (`max_deliveries`) counts
/// the deliveries since a message was last put on its queue.
async fn requeue_starts_the_delivery_count_over(b: Arc<dyn Broker>) {
    enqueue(b.as_ref(), &["m"]).await;
    let first = fetch_one(b.as_ref(), "crashed").await;
    assert_eq!(first.deliveries, 1);
    let second = take_over(b.as_ref(), "rescuer", &first).await;
    assert_eq!(second.deliveries, 2);
    let c = completion(&second, Disposition::Requeue, None);
    assert_eq!(complete(b.as_ref(), "rescuer", c).await, Completed::Done);
    let third = fetch_one(b.as_ref(), "next").await;
    assert_eq!((&*third.payload, third.deliveries), ("m", 1));
}

async fn completing_a_message_taken_over_changes_nothing(b: Arc<dyn Broker>) {
    enqueue(b.as_ref(), &["m"]).await;
    let d = fetch_one(b.as_ref(), "slow").await;
    let taken = take_over(b.as_ref(), "rescuer", &d).await;
    assert_eq!((taken.id.as_str(), &*taken.payload), (d.id.as_str(), "m"));
    for disposition in [
        Disposition::Ack,
        Disposition::Requeue,
        Disposition::DeadLetter {
            reason: "late".into(),
            payload: None,
        },
    ] {
        let write = result("t1", "SUCCESS", Duration::from_secs(60));
        let c = completion(&d, disposition.clone(), Some(write));
        assert_eq!(
            complete(b.as_ref(), "slow", c).await,
            Completed::TakenOver,
            "{disposition:?}"
        );
    }
    assert_eq!(result_of(b.as_ref(), "t1").await, None);
    assert_eq!(counts(b.as_ref(), Q).await, (0, 0, 1, 0));
    let c = completion(&taken, Disposition::Ack, None);
    assert_eq!(complete(b.as_ref(), "rescuer", c).await, Completed::Done);
    assert_eq!(counts(b.as_ref(), Q).await, (0, 0, 0, 0));
}

async fn completing_a_message_nobody_holds_writes_only_the_result(b: Arc<dyn Broker>) {
    enqueue(b.as_ref(), &["m"]).await;
    let d = fetch_one(b.as_ref(), "w").await;
    let c = completion(&d, Disposition::Ack, None);
    assert_eq!(complete(b.as_ref(), "w", c).await, Completed::Done);
    let write = result("t1", "SUCCESS", Duration::from_secs(60));
    let c = completion(&d, Disposition::Requeue, Some(write.clone()));
    assert_eq!(complete(b.as_ref(), "w", c).await, Completed::Gone);
    assert_eq!(result_of(b.as_ref(), "t1").await, Some(write.json));
    // Not requeued: it was gone.
    assert_eq!(counts(b.as_ref(), Q).await, (0, 0, 0, 0));
}

async fn each_completion_in_a_batch_stands_alone(b: Arc<dyn Broker>) {
    enqueue(b.as_ref(), &["done", "taken", "gone"]).await;
    let got = fetch(b.as_ref(), "w", 10).await;
    assert_eq!(payloads(&got), ["done", "taken", "gone"]);
    take_over(b.as_ref(), "other", &got[1]).await;
    let c = completion(&got[2], Disposition::Ack, None);
    assert_eq!(complete(b.as_ref(), "w", c).await, Completed::Done);

    let ttl = Duration::from_secs(60);
    let batch: Vec<Completion> = got
        .iter()
        .map(|d| {
            completion(
                d,
                Disposition::Ack,
                Some(result(&d.payload, "SUCCESS", ttl)),
            )
        })
        .collect();
    let outcomes: Vec<Completed> = b
        .complete("w", &batch)
        .await
        .expect("complete")
        .into_iter()
        .map(|o| o.expect("the completion failed"))
        .collect();
    assert_eq!(
        outcomes,
        [Completed::Done, Completed::TakenOver, Completed::Gone]
    );
    assert!(result_of(b.as_ref(), "done").await.is_some());
    assert!(result_of(b.as_ref(), "taken").await.is_none());
    assert!(result_of(b.as_ref(), "gone").await.is_some());
    assert_eq!(counts(b.as_ref(), Q).await, (0, 0, 1, 0));
}

// ---------------------------------------------------------------------
// Leases: renew, pending, claim, prune.

async fn renew_keeps_held_leases_and_reports_lost_ones(b: Arc<dyn Broker>) {
    enqueue(b.as_ref(), &["kept", "lost"]).await;
    let got = fetch(b.as_ref(), "w", 10).await;
    take_over(b.as_ref(), "other", &got[1]).await;
    let held = |d: &Delivery| (Q.to_string(), d.id.clone());
    let nobody = (Q.to_string(), "1-1".to_string());
    let lost = b
        .renew("w", &[held(&got[0]), held(&got[1]), nobody.clone()])
        .await
        .expect("renew");
    assert_eq!(lost, [held(&got[1]), nobody]);
    // Renewing what another consumer holds does not take it.
    let lost = b.renew("third", &[held(&got[0])]).await.expect("renew");
    assert_eq!(lost, [held(&got[0])]);

    // The behaviour under test is time passing: both leases age past
    // `idle`, then `w` renews its own.
    let idle = Duration::from_secs(1);
    tokio::time::sleep(idle).await;
    let lost = b.renew("w", &[held(&got[0])]).await.expect("renew");
    assert!(lost.is_empty(), "{lost:?}");
    let stale = b
        .pending(Q, "third", idle, 10)
        .await
        .expect("pending")
        .into_iter()
        .map(|p| p.id)
        .collect::<Vec<_>>();
    assert_eq!(
        stale,
        [got[1].id.clone()],
        "only the unrenewed lease is stale"
    );
    let claim = Claim {
        id: got[0].id.clone(),
        min_idle_ms: idle.as_millis() as u64,
        deliveries: 1,
    };
    let taken = b
        .claim(Q, "third", &[claim], usize::MAX)
        .await
        .expect("claim");
    assert!(
        taken.is_empty(),
        "a renewed lease was taken over: {taken:?}"
    );
}

async fn pending_lists_other_consumers_messages(b: Arc<dyn Broker>) {
    enqueue(b.as_ref(), &["a1", "a2", "b1"]).await;
    let by_a = fetch(b.as_ref(), "a", 2).await;
    let by_b = fetch(b.as_ref(), "b", 10).await;
    assert_eq!((by_a.len(), by_b.len()), (2, 1));
    let listed = |consumer: &'static str, min_idle: Duration, max: usize| {
        let b = b.clone();
        async move {
            let mut rows: Vec<(String, String, u64)> = b
                .pending(Q, consumer, min_idle, max)
                .await
                .expect("pending")
                .into_iter()
                .map(|p| (p.id, p.consumer, p.deliveries))
                .collect();
            rows.sort();
            rows
        }
    };
    let row = |d: &Delivery, consumer: &str| (d.id.clone(), consumer.to_string(), 1);
    // A consumer's own messages are not listed.
    assert_eq!(listed("a", Duration::ZERO, 10).await, [row(&by_b[0], "b")]);
    let mut of_a = vec![row(&by_a[0], "a"), row(&by_a[1], "a")];
    of_a.sort();
    assert_eq!(listed("b", Duration::ZERO, 10).await, of_a);
    assert_eq!(listed("c", Duration::ZERO, 10).await.len(), 3);
    assert_eq!(listed("c", Duration::ZERO, 1).await.len(), 1);
    assert!(listed("c", Duration::from_secs(3600), 10).await.is_empty());
}

async fn claim_takes_over_only_idle_messages(b: Arc<dyn Broker>) {
    let big = "y".repeat(3000);
    enqueue(b.as_ref(), &[&big]).await;
    let d = fetch_one(b.as_ref(), "a").await;
    assert!(!d.is_oversize());
    // Each claim carries the delivery count its taker saw (in `pending`).
    let claim = |min_idle_ms, deliveries| Claim {
        id: d.id.clone(),
        min_idle_ms,
        deliveries,
    };
    let not_idle = b
        .claim(Q, "b", &[claim(3_600_000, 1)], usize::MAX)
        .await
        .expect("claim");
    assert!(not_idle.is_empty(), "{not_idle:?}");
    let unknown = Claim {
        id: "1-1".into(),
        min_idle_ms: 0,
        deliveries: 1,
    };
    assert!(
        b.claim(Q, "b", &[unknown], usize::MAX)
            .await
            .expect("claim")
            .is_empty()
    );
    // Taken over, within the taker's own size limit.
    let mut taken = b.claim(Q, "b", &[claim(0, 1)], 2000).await.expect("claim");
    assert_eq!(taken.len(), 1, "{taken:?}");
    let taken = taken.remove(0);
    assert_eq!((taken.id.as_str(), taken.deliveries), (d.id.as_str(), 2));
    assert!(taken.is_oversize());
    assert_eq!(taken.size, big.len());
    assert!(*taken.payload == big[..OVERSIZE_PREFIX], "not the prefix");
    let seen: Vec<(String, u64)> = b
        .pending(Q, "c", Duration::ZERO, 10)
        .await
        .expect("pending")
        .into_iter()
        .map(|p| (p.consumer, p.deliveries))
        .collect();
    assert_eq!(seen, [("b".to_string(), 2)]);
    // The whole message is still there for the next taker.
    let again = b
        .claim(Q, "c", &[claim(0, 2)], usize::MAX)
        .await
        .expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].deliveries, 3);
    assert!(*again[0].payload == *big, "not the whole message");
}

async fn prune_removes_only_consumers_holding_nothing(b: Arc<dyn Broker>) {
    enqueue(b.as_ref(), &["done", "held"]).await;
    let d = fetch(b.as_ref(), "idle", 1).await;
    let c = completion(&d[0], Disposition::Ack, None);
    assert_eq!(complete(b.as_ref(), "idle", c).await, Completed::Done);
    let held = fetch_one(b.as_ref(), "busy").await;

    let prune = |min_idle, consumer| {
        let b = b.clone();
        async move {
            b.prune_consumers(Q, min_idle, consumer)
                .await
                .expect("prune consumers")
        }
    };
    // Nobody idle that long; a named consumer holding a message stays.
    assert_eq!(prune(Duration::MAX, None).await, 0);
    assert_eq!(prune(Duration::MAX, Some("busy")).await, 0);
    // A named consumer holding nothing goes at once, once.
    assert_eq!(prune(Duration::MAX, Some("idle")).await, 1);
    assert_eq!(prune(Duration::MAX, Some("idle")).await, 0);
    assert_eq!(prune(Duration::ZERO, None).await, 0);
    // What `busy` holds is still its own.
    let c = completion(&held, Disposition::Ack, None);
    assert_eq!(complete(b.as_ref(), "busy", c).await, Completed::Done);
    assert_eq!(prune(Duration::ZERO, None).await, 1);
}

// ---------------------------------------------------------------------
// Results.

async fn results_are_stored_replaced_and_expire(b: Arc<dyn Broker>) {
    assert_eq!(result_of(b.as_ref(), "t1").await, None);
    let ttl = Duration::from_secs(60);
    let started = result("t1", "STARTED", ttl);
    b.set_result(&started).await.expect("set a result");
    assert_eq!(result_of(b.as_ref(), "t1").await, Some(started.json));
    let done = result("t1", "SUCCESS", ttl);
    b.set_result(&done).await.expect("set a result");
    assert_eq!(result_of(b.as_ref(), "t1").await, Some(done.json));

    let brief = result("t2", "SUCCESS", Duration::from_secs(1));
    b.set_result(&brief).await.expect("set a result");
    assert_eq!(result_of(b.as_ref(), "t2").await, Some(brief.json));
    wait_for(
        "a 1 s result to expire",
        Duration::from_secs(10),
        async || result_of(b.as_ref(), "t2").await.is_none(),
    )
    .await;
    assert!(result_of(b.as_ref(), "t1").await.is_some());
}

async fn wait_result_returns_a_final_record_at_once(b: Arc<dyn Broker>) {
    let done = result("t1", "FAILURE", Duration::from_secs(60));
    b.set_result(&done).await.expect("set a result");
    let got = b
        .wait_result("t1", Duration::from_secs(30))
        .await
        .expect("wait for a result");
    assert_eq!(got, Some(done.json));
}

async fn wait_result_wakes_when_the_record_becomes_final(b: Arc<dyn Broker>) {
    let ttl = Duration::from_secs(60);
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.wait_result("t1", Duration::from_secs(30)).await })
    };
    b.set_result(&result("t1", "STARTED", ttl))
        .await
        .expect("set a result");
    let done = result("t1", "SUCCESS", ttl);
    b.set_result(&done).await.expect("set a result");
    let got = waiter
        .await
        .expect("the waiter panicked")
        .expect("wait for a result");
    assert_eq!(got, Some(done.json));
}

async fn wait_result_wakes_on_a_completion(b: Arc<dyn Broker>) {
    enqueue(b.as_ref(), &["m"]).await;
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.wait_result("t1", Duration::from_secs(30)).await })
    };
    let d = fetch_one(b.as_ref(), "w").await;
    let done = result("t1", "SUCCESS", Duration::from_secs(60));
    let c = completion(&d, Disposition::Ack, Some(done.clone()));
    assert_eq!(complete(b.as_ref(), "w", c).await, Completed::Done);
    let got = waiter
        .await
        .expect("the waiter panicked")
        .expect("wait for a result");
    assert_eq!(got, Some(done.json));
}

async fn wait_result_gives_the_latest_record_at_the_timeout(b: Arc<dyn Broker>) {
    let started = result("t1", "STARTED", Duration::from_secs(60));
    b.set_result(&started).await.expect("set a result");
    let short = Duration::from_millis(200);
    let got = b.wait_result("t1", short).await.expect("wait for a result");
    assert_eq!(got, Some(started.json));
    let got = b
        .wait_result("unknown", short)
        .await
        .expect("wait for a result");
    assert_eq!(got, None);
}

// ---------------------------------------------------------------------
// Dead letters.

async fn dead_letters_are_listed_requeued_and_purged(b: Arc<dyn Broker>) {
    let task = json!({"id": "t1", "task": "math.add", "retries": 3, "args": [1, 2]}).to_string();
    enqueue(b.as_ref(), &[&task, "not json", "third"]).await;
    let got = fetch(b.as_ref(), "w", 10).await;
    b.set_result(&result("t1", "FAILURE", Duration::from_secs(60)))
        .await
        .expect("set a result");
    for d in &got {
        let dead = Disposition::DeadLetter {
            reason: format!("reason {}", d.payload.len()),
            payload: None,
        };
        assert_eq!(
            complete(b.as_ref(), "w", completion(d, dead, None)).await,
            Completed::Done
        );
    }
    let letters = b.dlq_list(Q, 10).await.expect("list dead letters");
    let listed: Vec<&str> = letters.iter().map(|l| l.payload.as_str()).collect();
    assert_eq!(listed, [task.as_str(), "not json", "third"]);
    let first = b.dlq_list(Q, 1).await.expect("list dead letters");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].id, letters[0].id);
    assert!(b.dlq_list("elsewhere", 10).await.expect("list").is_empty());

    // Back on the queue: retries reset, the old FAILURE record cleared.
    assert!(b.dlq_requeue(Q, &letters[0].id).await.expect("requeue"));
    assert_eq!(result_of(b.as_ref(), "t1").await, None);
    assert!(!b.dlq_requeue(Q, &letters[0].id).await.expect("requeue"));
    assert!(!b.dlq_requeue(Q, "1-1").await.expect("requeue"));
    // Not a message: back as it was, to be judged again.
    assert!(b.dlq_requeue(Q, &letters[1].id).await.expect("requeue"));
    assert_eq!(counts(b.as_ref(), Q).await, (2, 0, 0, 1));
    let again = fetch(b.as_ref(), "w", 10).await;
    assert_eq!(again.len(), 2);
    let rerun: Value = serde_json::from_str(&again[0].payload).expect("the task is JSON");
    assert_eq!(
        (rerun["id"].as_str(), rerun["retries"].as_u64()),
        (Some("t1"), Some(0))
    );
    assert_eq!(rerun["args"], json!([1, 2]));
    assert_eq!((&*again[1].payload, again[1].deliveries), ("not json", 1));

    assert_eq!(b.dlq_purge(Q).await.expect("purge"), 1);
    assert!(b.dlq_list(Q, 10).await.expect("list").is_empty());
    assert_eq!(b.dlq_purge(Q).await.expect("purge"), 0);
}

// ---------------------------------------------------------------------
// Monitoring.

async fn queues_lists_only_queues_enqueued_to_or_declared(b: Arc<dyn Broker>) {
    assert!(b.queues().await.expect("queues").is_empty());
    b.declare(&["declared".into()]).await.expect("declare");
    b.enqueue(&[message("enqueued", "m")])
        .await
        .expect("enqueue");
    b.enqueue(&[delayed("delayed", "m", now_ms() + 60_000)])
        .await
        .expect("enqueue");
    // Looking at a queue does not make it one.
    let looked_at = "looked-at";
    counts(b.as_ref(), looked_at).await;
    b.dlq_list(looked_at, 10).await.expect("list dead letters");
    b.dlq_purge(looked_at).await.expect("purge");
    b.pending(looked_at, "w", Duration::ZERO, 10)
        .await
        .expect("pending");
    b.promote_due(&[looked_at.into()], now_ms())
        .await
        .expect("promote");
    b.prune_consumers(looked_at, Duration::ZERO, None)
        .await
        .expect("prune");
    assert_eq!(
        b.queues().await.expect("queues"),
        ["declared", "delayed", "enqueued"]
    );
}

async fn queue_stats_of_an_unknown_queue_are_zero(b: Arc<dyn Broker>) {
    assert_eq!(counts(b.as_ref(), "nothing-here").await, (0, 0, 0, 0));
}

fn worker(id: &str, busy: u32, problem: Option<&str>) -> WorkerInfo {
    WorkerInfo {
        id: id.into(),
        host: "host".into(),
        pid: 42,
        queues: vec![Q.into()],
        concurrency: 2,
        busy,
        processed: 7,
        started_at: 1_000,
        seen_at: 2_000,
        problem: problem.map(str::to_string),
    }
}

async fn heartbeats_list_workers_until_forgotten_or_expired(b: Arc<dyn Broker>) {
    let listed = async || {
        let workers = b.workers().await.expect("list workers");
        workers
            .iter()
            .map(|w| serde_json::to_value(w).expect("a worker serializes"))
            .collect::<Vec<_>>()
    };
    let as_json = |w: &WorkerInfo| serde_json::to_value(w).expect("a worker serializes");
    assert!(listed().await.is_empty());
    let ttl = Duration::from_secs(60);
    let (zed, amy) = (worker("zed", 1, None), worker("amy", 0, None));
    let (kim, bob) = (worker("kim", 2, None), worker("bob", 0, None));
    for w in [&zed, &amy, &kim, &bob] {
        b.heartbeat(w, ttl).await.expect("heartbeat");
    }
    // By id.
    assert_eq!(
        listed().await,
        [as_json(&amy), as_json(&bob), as_json(&kim), as_json(&zed)]
    );
    for gone in ["bob", "kim"] {
        b.forget_worker(gone).await.expect("forget a worker");
    }
    assert_eq!(listed().await, [as_json(&amy), as_json(&zed)]);
    // A later beat replaces the earlier one.
    let troubled = worker("zed", 0, Some("cannot store results"));
    b.heartbeat(&troubled, ttl).await.expect("heartbeat");
    assert_eq!(listed().await, [as_json(&amy), as_json(&troubled)]);
    b.forget_worker("amy").await.expect("forget a worker");
    assert_eq!(listed().await, [as_json(&troubled)]);

    let brief = worker("brief", 0, None);
    b.heartbeat(&brief, Duration::from_secs(1))
        .await
        .expect("heartbeat");
    assert_eq!(listed().await.len(), 2);
    wait_for(
        "a 1 s heartbeat to expire",
        Duration::from_secs(10),
        async || {
            let now = listed().await;
            if now == [as_json(&troubled)] {
                Ok(())
            } else {
                Err(now)
            }
        },
    )
    .await;
}

// ---------------------------------------------------------------------
// The component store.

async fn component_bytes_are_stored_once_with_every_signature(b: Arc<dyn Broker>) {
    let bytes = b"\0asm component".to_vec();
    let digest = Digest::of(&bytes);
    let signatures = async || {
        let mut sigs = b
            .get_component_signatures(&digest)
            .await
            .expect("get signatures")
            .expect("signatures are stored");
        sigs.sort();
        sigs
    };
    assert!(
        b.put_component(&digest, &bytes, "k1", "math", "sig-k1-math")
            .await
            .expect("put a component")
    );
    assert_eq!(signatures().await, ["sig-k1-math"]);
    assert_eq!(
        b.get_component_bytes(&digest).await.expect("get bytes"),
        Some(bytes.clone())
    );
    // Same bytes, another key and another module: both signatures kept.
    assert!(
        !b.put_component(&digest, &bytes, "k2", "math", "sig-k2-math")
            .await
            .expect("put a component")
    );
    assert!(
        !b.put_component(&digest, &bytes, "k1", "calc", "sig-k1-calc")
            .await
            .expect("put a component")
    );
    assert_eq!(
        signatures().await,
        ["sig-k1-calc", "sig-k1-math", "sig-k2-math"]
    );
    // Re-signing replaces only its own slot; the bytes are stored once.
    assert!(
        !b.put_component(&digest, b"other bytes", "k1", "math", "sig-k1-math-2")
            .await
            .expect("put a component")
    );
    assert_eq!(
        signatures().await,
        ["sig-k1-calc", "sig-k1-math-2", "sig-k2-math"]
    );
    assert_eq!(
        b.get_component_bytes(&digest).await.expect("get bytes"),
        Some(bytes)
    );

    let unknown = Digest::of(b"never stored");
    assert_eq!(
        b.get_component_signatures(&unknown)
            .await
            .expect("get signatures"),
        None
    );
    assert_eq!(
        b.get_component_bytes(&unknown).await.expect("get bytes"),
        None
    );
}

fn module(name: &str, bytes: &[u8], signed_at: Option<&str>) -> ModuleInfo {
    ModuleInfo {
        module: name.into(),
        digest: Digest::of(bytes),
        signer: "alice".into(),
        size: bytes.len() as u64,
        uploaded_at: 1_700_000_000_000,
        signed_at: signed_at.map(str::to_string),
        grants: Default::default(),
    }
}

async fn modules_point_at_digests(b: Arc<dyn Broker>) {
    assert_eq!(b.get_module("math").await.expect("get a module"), None);
    assert!(b.list_modules().await.expect("list modules").is_empty());
    let v1 = module("math", b"v1", Some("2027-01-15T08:00:00Z"));
    let calc = module("calc", b"v1", None);
    b.set_module(&v1).await.expect("set a module");
    b.set_module(&calc).await.expect("set a module");
    assert_eq!(b.get_module("math").await.expect("get a module"), Some(v1));
    let v2 = module("math", b"v2", Some("2027-01-16T08:00:00Z"));
    b.set_module(&v2).await.expect("set a module");
    assert_eq!(
        b.get_module("math").await.expect("get a module"),
        Some(v2.clone())
    );
    assert_eq!(b.list_modules().await.expect("list modules"), [calc, v2]);
}

// ---------------------------------------------------------------------
// Key-value state of task modules.

async fn kv_values_are_stored_per_module(b: Arc<dyn Broker>) {
    assert_eq!(b.kv_get("web", "k").await.unwrap(), None);
    assert!(b.kv_set("web", "k", b"v1", None, false).await.unwrap());
    assert_eq!(b.kv_get("web", "k").await.unwrap(), Some(b"v1".to_vec()));
    // Another module's namespace holds nothing of `web`'s, even through a
    // key that looks like a path into it.
    assert_eq!(b.kv_get("other", "k").await.unwrap(), None);
    assert_eq!(b.kv_get("other", "web:k").await.unwrap(), None);
    assert_eq!(b.kv_get("we", "b:k").await.unwrap(), None);
    assert!(b.kv_set("web", "k", b"v2", None, false).await.unwrap());
    assert_eq!(b.kv_get("web", "k").await.unwrap(), Some(b"v2".to_vec()));
    assert!(b.kv_delete("web", "k").await.unwrap());
    assert!(!b.kv_delete("web", "k").await.unwrap());
    assert_eq!(b.kv_get("web", "k").await.unwrap(), None);
}

async fn kv_set_if_absent_and_ttl(b: Arc<dyn Broker>) {
    let ttl = Some(Duration::from_millis(300));
    assert!(b.kv_set("web", "idem", b"1", ttl, true).await.unwrap());
    assert!(!b.kv_set("web", "idem", b"2", ttl, true).await.unwrap());
    assert_eq!(b.kv_get("web", "idem").await.unwrap(), Some(b"1".to_vec()));
    wait_for("the key to expire", Duration::from_secs(5), async || {
        b.kv_get("web", "idem").await.unwrap().is_none()
    })
    .await;
    assert!(b.kv_set("web", "idem", b"3", None, true).await.unwrap());
}

async fn kv_increment_is_atomic_and_typed(b: Arc<dyn Broker>) {
    assert_eq!(b.kv_increment("web", "n", 5).await.unwrap(), Some(5));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let b = b.clone();
        tasks.push(tokio::spawn(
            async move { b.kv_increment("web", "n", 1).await },
        ));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(b.kv_get("web", "n").await.unwrap(), Some(b"25".to_vec()));
    assert_eq!(b.kv_increment("web", "n", -30).await.unwrap(), Some(-5));
    b.kv_set("web", "text", b"hello", None, false)
        .await
        .unwrap();
    assert_eq!(b.kv_increment("web", "text", 1).await.unwrap(), None);
    b.kv_set("web", "big", i64::MAX.to_string().as_bytes(), None, false)
        .await
        .unwrap();
    assert_eq!(b.kv_increment("web", "big", 1).await.unwrap(), None);
}
