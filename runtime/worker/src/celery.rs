//! Celery interop: a worker that consumes Celery queues. Three parts:
//!
//! - the ingress ([`Worker::celery_ingress`]) moves Celery messages of
//!   tasks this worker runs from kombu's lists onto the Celeriac queues of
//!   the same names, each in one atomic Redis step, so from there on they
//!   are held, leased, retried, dead-lettered and taken over as any
//!   message (acks late, nothing lost to a SIGKILL);
//! - [`Worker::admit_celery`] reads such a message and finds the signed
//!   module its Celery name runs as;
//! - [`completion`] (pure) turns what happened into what Celery expects:
//!   its result records, retries re-sent with `retries` one more, and the
//!   canvas' next steps (chain, link, link_error) sent as Celery messages.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use celeriac_broker::retry::Reconnect;
use celeriac_broker::{CelerySend, Completion, Delivery, Disposition, Effects, ResultWrite};
use celeriac_protocol::celery::{Inbound, Meta, Sender, exception, retry_envelope, signature_id};
use celeriac_protocol::message::split_level;
use celeriac_protocol::record::{ErrorInfo, TaskState};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::admit::{Admission, Turned, admit_message};
use crate::settle::{self, Verdict};
use crate::{Worker, WorkerConfig};

pub use celeriac_protocol::celery::is_envelope;

/// Where a canvas step goes when its signature names no queue: the
/// worker's routes for its Celery name (`None`: the queue of the task that
/// set it off).
#[derive(Clone)]
pub struct CeleryRouter(pub Arc<RouteFn>);

/// Celery name → queue.
pub type RouteFn = dyn Fn(&str) -> Option<String> + Send + Sync;

impl std::fmt::Debug for CeleryRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CeleryRouter")
    }
}

/// How a Celery task name runs here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CeleryName {
    /// `module.task`.
    pub task: String,
    /// Celery's `max_retries` for it (the default when unset).
    pub max_retries: Option<u32>,
}

/// The Celery queues a worker consumes and how their names run.
#[derive(Debug, Clone)]
pub struct CeleryConfig {
    /// kombu queues, each also consumed as the Celeriac queue of its name.
    pub queues: Vec<String>,
    /// Celery names mapped explicitly. Any other name `module.task` of a
    /// registered module runs as itself.
    pub names: HashMap<String, CeleryName>,
    /// Celery's `result_expires`.
    pub result_expires: Duration,
    /// `max_retries` of names mapped without one (Celery's default, 3).
    pub max_retries: u32,
    pub router: Option<CeleryRouter>,
    /// Celery's `global_keyprefix` (its broker and result backend transport
    /// option), empty for none.
    pub key_prefix: String,
}

impl Default for CeleryConfig {
    fn default() -> Self {
        Self {
            queues: vec!["celery".into()],
            names: HashMap::new(),
            result_expires: Duration::from_secs(24 * 3600),
            max_retries: celeriac_protocol::celery::DEFAULT_MAX_RETRIES,
            router: None,
            key_prefix: String::new(),
        }
    }
}

impl CeleryConfig {
    /// `(module.task, max_retries)` for a Celery name.
    pub fn resolve<'a>(&'a self, name: &'a str) -> (&'a str, u32) {
        match self.names.get(name) {
            Some(n) => (&n.task, n.max_retries.unwrap_or(self.max_retries)),
            None => (name, self.max_retries),
        }
    }

    fn route(&self, name: &str) -> Option<String> {
        self.router.as_ref().and_then(|r| (r.0)(name))
    }
}

impl Worker {
    /// Move Celery messages onto this worker's queues until `stop`: right
    /// away while there are some, waiting (without taking any) on kombu's
    /// lists when there are none, and only while few wait unread on the
    /// Celeriac side (where any worker of the queue takes them).
    pub(crate) async fn celery_ingress(self: Arc<Self>, stop: CancellationToken) {
        let Some(cfg) = &self.config.celery else {
            return;
        };
        let names: Vec<String> = cfg.names.keys().cloned().collect();
        // Enough waiting on the Celeriac side that the fetch never runs dry
        // between two looks, few enough that Celery's view of its queue
        // stays close to the truth.
        let backlog = (4 * (self.config.concurrency + self.config.prefetch) as usize).max(256);
        let mut reconnect = Reconnect::new();
        // Looks while full back off from 5 to 50 ms: a fleet busy with long
        // tasks does not keep Redis busy asking.
        let mut full_pause = Duration::from_millis(5);
        while !stop.is_cancelled() {
            let pause = match self
                .broker
                .celery_ingest(&cfg.key_prefix, &cfg.queues, &names, backlog)
                .await
            {
                Ok(i) => {
                    reconnect.succeeded();
                    if i.moved > 0 {
                        tracing::debug!(moved = i.moved, "took Celery messages");
                        full_pause = Duration::from_millis(5);
                        continue;
                    }
                    if i.full {
                        // Enough waiting here: look again as they drain.
                        let p = full_pause;
                        full_pause = (full_pause * 2).min(Duration::from_millis(50));
                        Some(p)
                    } else if i.left > 0 {
                        // Only Celery's own tasks wait: poll, as waiting on
                        // the list would return at once.
                        Some(Duration::from_millis(100))
                    } else {
                        None
                    }
                }
                Err(e) => {
                    let wait = reconnect.failed();
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot read Celery queues");
                    Some(wait)
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = async {
                    match pause {
                        Some(p) => tokio::time::sleep(p).await,
                        None => {
                            if let Err(e) = self.broker.celery_wait(&cfg.key_prefix, &cfg.queues, Duration::from_secs(1)).await {
                                tracing::debug!(error = %e, "waiting on Celery queues");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                    }
                } => {}
            }
        }
    }

    /// Read a Celery message and judge it as any message, once its name is
    /// resolved to the module that runs it. The message comes back too, for
    /// [`completion`].
    pub(crate) async fn admit_celery(
        &self,
        delivery: &Delivery,
        now: u64,
    ) -> (Admission, Option<Box<Inbound>>) {
        let default = CeleryConfig::default();
        let cfg = self.config.celery.as_ref().unwrap_or(&default);
        let turned = |why, reason: String, verdict: Verdict| Admission::Turned {
            why,
            reason,
            msg: None,
            verdict,
        };
        let refused = |reason: String| {
            let verdict = settle::refuse_unread(None, "refused", &reason, &self.config);
            turned(Turned::Malformed, reason, verdict)
        };
        let inbound = match Inbound::parse(&delivery.payload, now) {
            Ok(m) => Box::new(m),
            Err(e) => return (refused(e.to_string()), None),
        };
        let (task, max_retries) = cfg.resolve(&inbound.name);
        let Some((module, _)) = task
            .rsplit_once('.')
            .filter(|(m, t)| !m.is_empty() && !t.is_empty())
        else {
            let reason = format!(
                "Celery task `{}` is not `module.task`: map it to one in [celery.tasks]",
                inbound.name
            );
            return (refused(reason), Some(inbound));
        };
        let digest = match self.broker.get_module(module).await {
            Ok(Some(info)) => info.digest,
            Ok(None) => {
                let reason = format!(
                    "Celery task `{}` runs as `{task}`, but no module `{module}` is uploaded",
                    inbound.name
                );
                return (refused(reason), Some(inbound));
            }
            Err(e) => {
                // Not straight back: the broker is struggling.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let verdict = Verdict {
                    record: None,
                    disposition: Disposition::Requeue,
                };
                let reason = format!("module `{module}`: {e}");
                return (turned(Turned::Unavailable, reason, verdict), Some(inbound));
            }
        };
        let base = split_level(&delivery.queue).0;
        let ttl = cfg
            .result_expires
            .as_secs()
            .clamp(1, celeriac_protocol::bounds::MAX_RESULT_TTL_SECS);
        let msg = inbound.to_message(task.to_string(), digest, base, max_retries, Some(ttl));
        if let Err(e) = msg.validate(now) {
            return (refused(format!("Celery message: {e}")), Some(inbound));
        }
        (
            admit_message(delivery, msg, &self.config, now),
            Some(inbound),
        )
    }
}

/// The completion of a Celery message: Celery's result record (unless
/// `ignore_result`), a retry re-sent as Celery re-sends one, and the
/// canvas' next steps, all with the ack.
pub(crate) fn completion(
    delivery: &Delivery,
    verdict: Verdict,
    inbound: &Inbound,
    config: &WorkerConfig,
    origin: &str,
    now: u64,
) -> Completion {
    let default = CeleryConfig::default();
    let cfg = config.celery.as_ref().unwrap_or(&default);
    let mut disposition = verdict.disposition;
    let outcome: Option<(TaskState, Option<ErrorInfo>, Option<&str>)> =
        match (&verdict.record, &disposition) {
            (Some(r), _) => Some((
                r.state,
                r.error.clone(),
                r.result.as_deref().map(|v| v.get()),
            )),
            (None, Disposition::DeadLetter { reason, .. }) => Some((
                TaskState::Failure,
                Some(ErrorInfo {
                    kind: "refused".into(),
                    message: reason.clone(),
                }),
                None,
            )),
            _ => None,
        };
    // A retry goes back as Celery re-sends one; a message sent back to wait
    // (its eta ahead, a rate limit) goes back as it came.
    if let Disposition::Retry { payload, due_ms } = &mut disposition {
        let retrying = matches!(outcome, Some((TaskState::Retry, ..)));
        *payload = match retrying {
            true => retry_envelope(&delivery.payload, inbound.retries + 1, *due_ms)
                .unwrap_or_else(|_| delivery.payload.to_string()),
            false => delivery.payload.to_string(),
        };
    }
    let mut fx = Effects {
        celery_prefix: cfg.key_prefix.clone(),
        ..Effects::default()
    };
    if let Some((state, error, result)) = outcome {
        let steps = Steps {
            cfg,
            inbound,
            queue: split_level(&delivery.queue).0,
            ttl: cfg.result_expires,
            sender: Sender {
                parent_id: &inbound.id,
                root_id: inbound.root_id.as_deref().unwrap_or(&inbound.id),
                reply_to: inbound.reply_to.as_deref(),
                priority: inbound.priority,
                origin,
                now_ms: now,
            },
        };
        let (value, traceback) = match &error {
            Some(e) => {
                let (exc, tb) = failure(&e.kind, &e.message);
                (Cow::Owned(exc), Some(tb))
            }
            None => (Cow::Borrowed(result.unwrap_or("null")), None),
        };
        if !inbound.ignore_result {
            fx.celery_records.push(steps.record(
                &inbound.id,
                state,
                value.clone(),
                traceback.as_deref(),
                true,
            ));
        }
        match state {
            TaskState::Success => steps.carry_on(result.unwrap_or("null"), &mut fx),
            TaskState::Failure | TaskState::Revoked => {
                steps.stop(state, &value, traceback.as_deref(), &mut fx)
            }
            _ => {}
        }
    }
    settle::with_effects(delivery, disposition, fx)
}

/// Celery's STARTED record for `inbound` (a worker with `--track-started`,
/// as Celery's `task_track_started`).
pub(crate) fn started(inbound: &Inbound, config: &WorkerConfig, now: u64) -> Effects {
    let default = CeleryConfig::default();
    let cfg = config.celery.as_ref().unwrap_or(&default);
    let meta = Meta {
        task_id: &inbound.id,
        state: TaskState::Started,
        result: Cow::Borrowed("null"),
        traceback: None,
        group_id: inbound.group.as_deref(),
        parent_id: inbound.parent_id.as_deref(),
    };
    Effects {
        celery_records: vec![ResultWrite {
            task_id: inbound.id.clone(),
            json: meta.to_json(now),
            ttl: cfg.result_expires,
        }],
        celery_prefix: cfg.key_prefix.clone(),
        ..Effects::default()
    }
}

/// A failure of `kind` as Celery's record holds it: the exception Python
/// raises, and the traceback text.
fn failure(kind: &str, message: &str) -> (String, String) {
    (
        exception(kind, message).to_string(),
        format!("celeriac: {kind}: {message}"),
    )
}

/// What one completion sets off in a Celery canvas.
struct Steps<'a> {
    cfg: &'a CeleryConfig,
    inbound: &'a Inbound,
    /// The queue the finished task came from: its steps go there unless
    /// their signature or the routes say otherwise.
    queue: &'a str,
    ttl: Duration,
    sender: Sender<'a>,
}

impl Steps<'_> {
    fn record(
        &self,
        id: &str,
        state: TaskState,
        result: Cow<str>,
        traceback: Option<&str>,
        own: bool,
    ) -> ResultWrite {
        let meta = Meta {
            task_id: id,
            state,
            result,
            traceback,
            group_id: self.inbound.group.as_deref().filter(|_| own),
            parent_id: if own {
                self.inbound.parent_id.as_deref()
            } else {
                Some(&self.inbound.id)
            },
        };
        ResultWrite {
            task_id: id.to_string(),
            json: meta.to_json(self.sender.now_ms),
            ttl: self.ttl,
        }
    }

    /// Send `sig`; a signature that cannot be sent fails in its own record
    /// (if it has an id someone may wait on) with the reason.
    fn send(&self, sig: &Value, first: Option<Value>, rest: &[Value], fx: &mut Effects) {
        match self.sender.send(sig, first, rest) {
            Ok(out) => fx.celery_sends.push(CelerySend {
                queue: out
                    .queue
                    .or_else(|| self.cfg.route(&out.name))
                    .unwrap_or_else(|| self.queue.to_string()),
                priority: out.priority,
                envelope: out.envelope,
            }),
            Err(why) => {
                tracing::warn!(reason = %why, "cannot send the next step");
                if let Some(id) = signature_id(sig) {
                    self.fail(id, "canvas", &why, fx);
                }
            }
        }
    }

    /// Success: the chain's next step and every `link`, fed the result.
    fn carry_on(&self, result: &str, fx: &mut Effects) {
        let value: Value = serde_json::from_str(result).unwrap_or(Value::Null);
        let embed = &self.inbound.embed;
        if let Some((next, rest)) = embed.chain.split_last() {
            self.send(next, Some(value.clone()), rest, fx);
        }
        for link in &embed.callbacks {
            self.send(link, Some(value.clone()), &[], fx);
        }
        self.refuse_chord(fx);
    }

    /// Failure or revoke: every `link_error` (a failure only), fed the
    /// task's id as Celery feeds errbacks it cannot call in process; the
    /// chain's later steps get the same record, so a producer waiting on
    /// the chain's last result hears of the failure (as Celery does).
    fn stop(&self, state: TaskState, value: &str, traceback: Option<&str>, fx: &mut Effects) {
        if state == TaskState::Failure {
            for errback in &self.inbound.embed.errbacks {
                self.send(
                    errback,
                    Some(Value::from(self.inbound.id.as_str())),
                    &[],
                    fx,
                );
            }
        }
        for step in &self.inbound.embed.chain {
            if let Some(id) = signature_id(step) {
                fx.celery_records.push(self.record(
                    id,
                    state,
                    Cow::Borrowed(value),
                    traceback,
                    false,
                ));
            }
        }
        self.refuse_chord(fx);
    }

    /// A chord's header member: Celeriac does not take part in Celery's
    /// chord join (Celery's internals, changed between releases: see the
    /// README), so the chord's body fails with the reason rather than
    /// leaving its producer waiting for ever.
    fn refuse_chord(&self, fx: &mut Effects) {
        let Some(id) = self.inbound.embed.chord.as_ref().and_then(signature_id) else {
            return;
        };
        let why = "chords whose header tasks run on Celeriac workers are not supported: \
                   use a group and join it in the producer, or Celeriac's own chords";
        self.fail(id, "unsupported", why, fx);
    }

    /// Fail another task's record (one this task would have set off).
    fn fail(&self, id: &str, kind: &str, why: &str, fx: &mut Effects) {
        let (exc, tb) = failure(kind, why);
        fx.celery_records.push(self.record(
            id,
            TaskState::Failure,
            Cow::Owned(exc),
            Some(&tb),
            false,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use celeriac_protocol::celery::Inbound;
    use serde_json::json;

    use crate::settle::tests::msg;

    fn envelope(embed: Value) -> String {
        let body = json!([[2, 3], {}, embed]).to_string();
        json!({
            "body": base64::engine::general_purpose::STANDARD.encode(body),
            "content-type": "application/json",
            "headers": {"task": "math.add", "id": "t1", "retries": 0, "root_id": "r"},
            "properties": {"body_encoding": "base64", "priority": 0},
        })
        .to_string()
    }

    fn config() -> WorkerConfig {
        WorkerConfig {
            id: "w".into(),
            celery: Some(CeleryConfig::default()),
            ..WorkerConfig::default()
        }
    }

    fn finish(payload: &str, verdict: Verdict) -> Completion {
        let d = Delivery::new("celery@9", "1-0".into(), payload.to_string(), 1);
        let inbound = Inbound::parse(payload, 0).unwrap();
        completion(&d, verdict, &inbound, &config(), "celeriac@h", 1_000)
    }

    fn ran(state: TaskState, result: Option<&str>, error: Option<(&str, &str)>) -> Verdict {
        let cfg = config();
        let mut r = settle::record(&msg(0, 3), state, &cfg, 1_000);
        r.result = result.map(|j| serde_json::value::RawValue::from_string(j.into()).unwrap());
        r.error = error.map(|(kind, message)| ErrorInfo {
            kind: kind.into(),
            message: message.into(),
        });
        Verdict {
            record: Some(r),
            disposition: Disposition::Ack,
        }
    }

    fn record(c: &Completion, id: &str) -> Value {
        let w = c
            .effects
            .celery_records
            .iter()
            .find(|r| r.task_id == id)
            .unwrap();
        serde_json::from_str(&w.json).unwrap()
    }

    #[test]
    fn success_stores_celerys_record_and_sends_the_chain_on() {
        let next = json!({"task": "math.add", "args": [4], "options": {"task_id": "t2"}});
        let c = finish(
            &envelope(json!({"chain": [next], "callbacks": [{"task": "text.upper", "args": []}]})),
            ran(TaskState::Success, Some("5"), None),
        );
        assert!(c.result.is_none(), "no Celeriac record for a Celery task");
        let r = record(&c, "t1");
        assert_eq!(
            (r["status"].as_str(), &r["result"]),
            (Some("SUCCESS"), &json!(5))
        );
        let sent: Vec<Inbound> = c
            .effects
            .celery_sends
            .iter()
            .map(|s| {
                assert_eq!(s.queue, "celery", "the queue the parent came from");
                Inbound::parse(&s.envelope, 0).unwrap()
            })
            .collect();
        assert_eq!((sent[0].id.as_str(), sent[0].args.get()), ("t2", "[5,4]"));
        assert_eq!(sent[0].parent_id.as_deref(), Some("t1"));
        assert_eq!(sent[0].root_id.as_deref(), Some("r"));
        assert_eq!(
            (sent[1].name.as_str(), sent[1].args.get()),
            ("text.upper", "[5]")
        );
    }

    #[test]
    fn failure_raises_in_python_and_reaches_errbacks_and_the_chains_end() {
        let next = json!({"task": "math.add", "args": [4], "options": {"task_id": "t2"}});
        let c = finish(
            &envelope(json!({"chain": [next], "errbacks": [{"task": "m.on_error"}]})),
            ran(
                TaskState::Failure,
                None,
                Some(("fatal", "division by zero")),
            ),
        );
        let r = record(&c, "t1");
        assert_eq!(r["status"], "FAILURE");
        assert_eq!(
            r["result"],
            json!({"exc_type": "FatalError", "exc_message": ["division by zero"], "exc_module": "celeriac"})
        );
        assert_eq!(r["traceback"], "celeriac: fatal: division by zero");
        assert_eq!(record(&c, "t2")["status"], "FAILURE");
        assert_eq!(c.effects.celery_sends.len(), 1);
        let errback = Inbound::parse(&c.effects.celery_sends[0].envelope, 0).unwrap();
        assert_eq!(errback.args.get(), "[\"t1\"]");
    }

    #[test]
    fn retries_are_resent_with_one_more_retry_and_a_retry_record() {
        let payload = envelope(json!(null));
        let mut v = ran(TaskState::Retry, None, Some(("retry", "not yet")));
        v.disposition = Disposition::Retry {
            payload: "native".into(),
            due_ms: 5_000,
        };
        let c = finish(&payload, v);
        let Disposition::Retry {
            payload: again,
            due_ms,
        } = &c.disposition
        else {
            panic!("{:?}", c.disposition)
        };
        let m = Inbound::parse(again, 0).unwrap();
        assert_eq!((m.retries, m.eta, *due_ms), (1, Some(5_000), 5_000));
        assert_eq!(record(&c, "t1")["status"], "RETRY");

        // Sent back to wait (early, or rate limited): as it came, no record.
        let early = Verdict {
            record: None,
            disposition: Disposition::Retry {
                payload: "native".into(),
                due_ms: 5_000,
            },
        };
        let c = finish(&payload, early);
        let Disposition::Retry { payload: again, .. } = &c.disposition else {
            panic!()
        };
        assert_eq!(again, &payload);
        assert!(c.effects.celery_records.is_empty());
    }

    #[test]
    fn ignore_result_stores_nothing_but_still_carries_on() {
        let mut v: Value =
            serde_json::from_str(&envelope(json!({"callbacks": [{"task": "m.t"}]}))).unwrap();
        v["headers"]["ignore_result"] = true.into();
        let c = finish(&v.to_string(), ran(TaskState::Success, Some("5"), None));
        assert!(c.effects.celery_records.is_empty());
        assert_eq!(c.effects.celery_sends.len(), 1);
    }

    #[test]
    fn refusals_and_chords_fail_with_the_reason() {
        let dead =
            settle::refuse_unread(None, "refused", "no module `math` is uploaded", &config());
        let c = finish(&envelope(json!(null)), dead);
        let r = record(&c, "t1");
        assert_eq!(r["result"]["exc_type"], "RefusedError");
        assert!(matches!(c.disposition, Disposition::DeadLetter { .. }));

        let body = json!({"task": "math.sum", "options": {"task_id": "body"}});
        let c = finish(
            &envelope(json!({"chord": body})),
            ran(TaskState::Success, Some("5"), None),
        );
        let r = record(&c, "body");
        assert_eq!(r["status"], "FAILURE");
        assert!(r["traceback"].as_str().unwrap().contains("chords"), "{r}");
    }

    #[test]
    fn names_resolve_through_the_mapping_or_as_themselves() {
        let mut cfg = CeleryConfig::default();
        cfg.names.insert(
            "myapp.tasks.add".into(),
            CeleryName {
                task: "math.add".into(),
                max_retries: Some(5),
            },
        );
        assert_eq!(cfg.resolve("myapp.tasks.add"), ("math.add", 5));
        assert_eq!(cfg.resolve("math.mul"), ("math.mul", 3));
    }
}
