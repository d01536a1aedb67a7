//! What a settled task sets off in its workflow, and what a group's join
//! does: pure functions from the message, the verdict and the group's
//! state to the [`Effects`] the broker applies atomically with the ack.
//!
//! - success: the next step of the chain is launched with the result as
//!   its first argument, or the result is reported to the group the chain
//!   belongs to; `link` callbacks get the result;
//! - final failure (or revocation): every step the failure stops gets a
//!   record saying so (so nobody waits on them forever), the group is told
//!   (which fails it at once), `link_error` callbacks get the error;
//! - retries, requeues and early messages set off nothing: the task will
//!   run again.

use celeriac_broker::{Disposition, Effects, GroupReport, GroupState, Launched, Outgoing};
use celeriac_protocol::message::{TaskMessage, level_queue};
use celeriac_protocol::record::{ErrorInfo, TaskState};
use celeriac_protocol::workflow::{
    Context, Failed, GROUP_TTL_SECS, JoinMessage, Launch, Member, Node, launch, record_ids,
};
use serde_json::value::RawValue;

use crate::WorkerConfig;
use crate::settle::{Record, Verdict, anonymous_record, result_write};

/// How a task ended, for its workflow.
enum Outcome<'a> {
    Succeeded(&'a RawValue),
    Failed(Failed, TaskState),
}

/// The effects of `verdict` on `msg`'s workflow, as of `now`.
pub(crate) fn after_task(
    msg: &TaskMessage,
    verdict: &Verdict,
    config: &WorkerConfig,
    now: u64,
) -> Effects {
    let mut effects = Effects::default();
    if matches!(
        verdict.disposition,
        Disposition::Retry { .. } | Disposition::Requeue
    ) {
        return effects;
    }
    // Finished one way or another: a unique key is free again.
    if let Some(key) = &msg.unique_key {
        effects.release = Some((key.clone(), msg.id.clone()));
    }
    let Some(record) = &verdict.record else {
        return effects;
    };
    let outcome = match (&record.state, &record.result, &record.error) {
        (TaskState::Success, Some(result), _) => Outcome::Succeeded(result),
        (TaskState::Success, None, _) => return effects,
        (state, _, error) => Outcome::Failed(
            Failed {
                id: msg.id.clone(),
                task: msg.task.clone(),
                error: error.clone().unwrap_or_else(|| ErrorInfo {
                    kind: "failed".into(),
                    message: "failed".into(),
                }),
            },
            *state,
        ),
    };
    let cx = context(msg.root_id.as_deref().unwrap_or(&msg.id), &msg.id, now);
    let ttl = msg.result_ttl;
    match outcome {
        Outcome::Succeeded(result) => {
            carry_on(
                result,
                &msg.chain,
                msg.member.as_ref(),
                &cx,
                ttl,
                config,
                &mut effects,
            );
            for link in &msg.link {
                launch_into(link, Some(result), &[], None, &cx, &mut effects)
                    .unwrap_or_else(|e| tracing::warn!(error = %e, "could not launch link"));
            }
        }
        Outcome::Failed(failed, state) => {
            let why = format!(
                "upstream task {} ({}) failed: {}",
                failed.id, failed.task, failed.error.message
            );
            stop(
                &msg.chain,
                msg.member.as_ref(),
                &failed,
                state,
                &why,
                &cx,
                ttl,
                config,
                &mut effects,
            );
            if !msg.link_error.is_empty() {
                let input = serde_json::value::to_raw_value(&failed).ok();
                for link in &msg.link_error {
                    launch_into(link, input.as_deref(), &[], None, &cx, &mut effects)
                        .unwrap_or_else(
                            |e| tracing::warn!(error = %e, "could not launch link_error"),
                        );
                }
            }
        }
    }
    effects
}

/// What a group's join does, given the group's state (`None`: it expired
/// or never existed): the group's own record, and the workflow carried
/// on with the ordered results, or stopped by the member that failed.
pub(crate) fn after_join(
    join: &JoinMessage,
    group: Option<&GroupState>,
    config: &WorkerConfig,
    now: u64,
) -> Effects {
    let mut effects = Effects::default();
    let root = join.root_id.as_deref().unwrap_or(&join.join);
    let cx = context(root, &join.join, now);
    let ttl = join.result_ttl;
    let mut record = group_record(join, config, now);
    let failure =
        match group {
            None => Some(failure_of(
                join,
                "expired",
                "the group's state expired before it completed",
            )),
            Some(g) => match &g.failed {
                Some(json) => Some(serde_json::from_str::<Failed>(json).unwrap_or_else(|e| {
                    failure_of(join, "failed", &format!("a member failed ({e})"))
                })),
                None if g.results.iter().all(Option::is_some) => None,
                None => Some(failure_of(
                    join,
                    "incomplete",
                    "joined before every member reported",
                )),
            },
        };
    match (failure, group) {
        (None, Some(g)) => {
            let parts: Vec<&str> = g.results.iter().flatten().map(String::as_str).collect();
            let list = format!("[{}]", parts.join(","));
            match RawValue::from_string(list) {
                Ok(results) => {
                    record.state = TaskState::Success;
                    record.result = Some(results.clone());
                    effects.records.push(result_write(&record, ttl, config));
                    carry_on(
                        &results,
                        &join.chain,
                        join.member.as_ref(),
                        &cx,
                        ttl,
                        config,
                        &mut effects,
                    );
                }
                Err(e) => {
                    let failed = failure_of(join, "fatal", &format!("results are not JSON: {e}"));
                    fail_group(join, record, failed, &cx, config, &mut effects);
                }
            }
        }
        (failure, _) => {
            let failed = failure.unwrap_or_else(|| failure_of(join, "expired", "no group"));
            fail_group(join, record, failed, &cx, config, &mut effects);
        }
    }
    effects
}

/// The group's record FAILURE with its member's error, and the rest of
/// the workflow stopped.
fn fail_group(
    join: &JoinMessage,
    mut record: Record,
    failed: Failed,
    cx: &Context,
    config: &WorkerConfig,
    effects: &mut Effects,
) {
    let why = if failed.id == join.join {
        failed.error.message.clone()
    } else {
        format!(
            "member {} ({}) failed: {}",
            failed.id, failed.task, failed.error.message
        )
    };
    record.state = TaskState::Failure;
    record.error = Some(ErrorInfo {
        kind: failed.error.kind.clone(),
        message: why.clone(),
    });
    effects
        .records
        .push(result_write(&record, join.result_ttl, config));
    stop(
        &join.chain,
        join.member.as_ref(),
        &failed,
        TaskState::Failure,
        &why,
        cx,
        join.result_ttl,
        config,
        effects,
    );
}

fn failure_of(join: &JoinMessage, kind: &str, message: &str) -> Failed {
    Failed {
        id: join.join.clone(),
        task: "group".into(),
        error: ErrorInfo {
            kind: kind.into(),
            message: message.into(),
        },
    }
}

fn group_record(join: &JoinMessage, config: &WorkerConfig, now: u64) -> Record {
    Record {
        task: "group".into(),
        state: TaskState::Started,
        worker: String::new(),
        root_id: join.root_id.clone(),
        ..anonymous_record(join.join.clone(), &join.queue, config, now)
    }
}

/// Success: the next step fed `result`, or the report to the group.
fn carry_on(
    result: &RawValue,
    chain: &[Node],
    member: Option<&Member>,
    cx: &Context,
    ttl: Option<u64>,
    config: &WorkerConfig,
    effects: &mut Effects,
) {
    match chain.split_first() {
        Some((next, rest)) => {
            if let Err(e) = launch_into(next, Some(result), rest, member, cx, effects) {
                // A step that cannot be built (arguments that are not a
                // list) stops the workflow as a failure would.
                let failed = Failed {
                    id: cx.parent_id.unwrap_or(cx.root_id).to_string(),
                    task: "chain".into(),
                    error: ErrorInfo {
                        kind: "invalid-input".into(),
                        message: format!("could not launch the next step: {e}"),
                    },
                };
                let why = failed.error.message.clone();
                stop(
                    chain,
                    member,
                    &failed,
                    TaskState::Failure,
                    &why,
                    cx,
                    ttl,
                    config,
                    effects,
                );
            }
        }
        None => {
            if let Some(m) = member {
                effects.report = Some(GroupReport {
                    group: m.group.clone(),
                    index: m.index,
                    outcome: Ok(result.get().to_string()),
                });
            }
        }
    }
}

/// Failure: a record for every step `chain` will now never run, and the
/// group told.
#[allow(clippy::too_many_arguments)]
fn stop(
    chain: &[Node],
    member: Option<&Member>,
    failed: &Failed,
    state: TaskState,
    why: &str,
    cx: &Context,
    ttl: Option<u64>,
    config: &WorkerConfig,
    effects: &mut Effects,
) {
    let mut ids = Vec::new();
    record_ids(chain, &mut ids);
    let state = if state == TaskState::Revoked {
        TaskState::Revoked
    } else {
        TaskState::Failure
    };
    for id in ids {
        let record = Record {
            state,
            error: Some(ErrorInfo {
                kind: failed.error.kind.clone(),
                message: why.to_string(),
            }),
            root_id: Some(cx.root_id.to_string()),
            parent_id: cx.parent_id.map(str::to_string),
            ..anonymous_record(id.to_string(), "", config, cx.now)
        };
        effects.records.push(result_write(&record, ttl, config));
    }
    if let Some(m) = member {
        effects.report = Some(GroupReport {
            group: m.group.clone(),
            index: m.index,
            outcome: Err(serde_json::to_string(failed).unwrap_or_default()),
        });
    }
}

fn context<'a>(root: &'a str, parent: &'a str, now: u64) -> Context<'a> {
    Context {
        root_id: root,
        parent_id: Some(parent),
        now,
        group_ttl: GROUP_TTL_SECS,
    }
}

/// Launch `node` into `effects`.
pub(crate) fn launch_into(
    node: &Node,
    input: Option<&RawValue>,
    chain: &[Node],
    member: Option<&Member>,
    cx: &Context,
    effects: &mut Effects,
) -> Result<(), String> {
    let mut out = Launch::default();
    launch(node, input, chain, member, cx, &mut out)?;
    effects.groups.extend(out.groups);
    effects
        .launch
        .extend(out.messages.into_iter().map(|m| Launched {
            task_id: m.id.clone(),
            message: Outgoing {
                queue: level_queue(&m.queue, m.priority),
                due_ms: m.eta,
                payload: m.to_json(),
            },
        }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settle::tests::{config, msg};
    use celeriac_protocol::workflow::GroupNode;

    fn node(id: &str, task: &str, args: &str) -> Node {
        let mut m = msg(0, 0);
        m.id = id.into();
        m.task = task.into();
        m.args = RawValue::from_string(args.into()).unwrap();
        m.eta = None;
        Node::Task(Box::new(m))
    }

    fn verdict(state: TaskState, result: Option<&str>, error: Option<&str>) -> Verdict {
        let mut r = crate::settle::record(&msg(0, 0), state, &config(), 5);
        r.result = result.map(|j| RawValue::from_string(j.into()).unwrap());
        r.error = error.map(|m| ErrorInfo {
            kind: "fatal".into(),
            message: m.into(),
        });
        Verdict {
            record: Some(r),
            disposition: Disposition::Ack,
        }
    }

    fn payloads(e: &Effects) -> Vec<TaskMessage> {
        e.launch
            .iter()
            .map(|l| TaskMessage::parse(&l.message.payload, 0).unwrap())
            .collect()
    }

    #[test]
    fn success_feeds_the_next_step_or_reports_to_the_group() {
        let mut m = msg(0, 0);
        m.root_id = Some("root".into());
        m.chain = vec![node("b", "m.mul", "[4]"), node("c", "m.add", "[1]")];
        m.member = Some(Member {
            group: "g".into(),
            index: 2,
        });
        m.link = vec![node("l", "m.log", "[]")];
        let e = after_task(
            &m,
            &verdict(TaskState::Success, Some("4"), None),
            &config(),
            9,
        );
        let sent = payloads(&e);
        assert_eq!(sent.len(), 2, "the next step and the link");
        let next = &sent[0];
        assert_eq!((next.id.as_str(), next.args.get()), ("b", "[4,4]"));
        assert_eq!(next.parent_id.as_deref(), Some("t1"));
        assert_eq!(next.root_id.as_deref(), Some("root"));
        assert_eq!(next.member, m.member, "the chain's last step reports");
        assert_eq!(sent[1].args.get(), "[4]");
        assert!(e.report.is_none() && e.records.is_empty());
        // The last step reports its result to the group.
        m.chain.clear();
        m.link.clear();
        let e = after_task(
            &m,
            &verdict(TaskState::Success, Some("[1,2]"), None),
            &config(),
            9,
        );
        let r = e.report.expect("a report");
        assert_eq!((r.group.as_str(), r.index), ("g", 2));
        assert_eq!(r.outcome, Ok("[1,2]".to_string()));
    }

    #[test]
    fn failure_stops_the_chain_with_records_fails_the_group_and_calls_link_error() {
        let mut m = msg(0, 0);
        m.task = "m.div".into();
        m.unique_key = Some("k".into());
        m.chain = vec![
            node("b", "m.mul", "[4]"),
            Node::Group(GroupNode {
                id: "g2".into(),
                members: vec![node("c", "m.add", "[1]")],
            }),
        ];
        m.member = Some(Member {
            group: "g".into(),
            index: 0,
        });
        m.link_error = vec![node("e", "m.hold", "[]")];
        let e = after_task(
            &m,
            &verdict(TaskState::Failure, None, Some("boom")),
            &config(),
            9,
        );
        let ids: Vec<&str> = e.records.iter().map(|r| r.task_id.as_str()).collect();
        assert_eq!(ids, ["b", "g2", "c"]);
        assert!(
            e.records[0]
                .json
                .contains("upstream task t1 (m.div) failed: boom")
        );
        let Err(failed) = &e.report.as_ref().unwrap().outcome else {
            panic!("a failure report")
        };
        let failed: Failed = serde_json::from_str(failed).unwrap();
        assert_eq!(
            (failed.id.as_str(), failed.error.message.as_str()),
            ("t1", "boom")
        );
        let sent = payloads(&e);
        assert_eq!(sent[0].id, "e");
        assert!(sent[0].args.get().contains("\"boom\""));
        assert_eq!(e.release, Some(("k".into(), "t1".into())));
    }

    #[test]
    fn retries_set_off_nothing() {
        let mut m = msg(0, 3);
        m.unique_key = Some("k".into());
        m.chain = vec![node("b", "m.mul", "[4]")];
        let v = Verdict {
            record: None,
            disposition: Disposition::Retry {
                payload: String::new(),
                due_ms: 1,
            },
        };
        assert!(after_task(&m, &v, &config(), 9).is_empty());
    }

    fn join() -> JoinMessage {
        JoinMessage {
            v: 1,
            join: "g".into(),
            queue: "q".into(),
            root_id: Some("root".into()),
            chain: vec![node("body", "m.sum", "[]")],
            member: None,
            result_ttl: None,
        }
    }

    #[test]
    fn a_join_records_the_group_and_feeds_the_body_the_ordered_results() {
        let g = GroupState {
            size: 2,
            results: vec![Some("1".into()), Some("{\"a\":2}".into())],
            failed: None,
        };
        let e = after_join(&join(), Some(&g), &config(), 9);
        assert_eq!(e.records.len(), 1);
        assert!(e.records[0].json.contains("\"result\":[1,{\"a\":2}]"));
        let sent = payloads(&e);
        assert_eq!(sent[0].args.get(), "[[1,{\"a\":2}]]");
        assert_eq!(sent[0].parent_id.as_deref(), Some("g"));
    }

    #[test]
    fn a_join_of_a_failed_or_expired_group_fails_what_follows() {
        let failed = Failed {
            id: "m3".into(),
            task: "m.div".into(),
            error: ErrorInfo {
                kind: "invalid-input".into(),
                message: "division by zero".into(),
            },
        };
        let g = GroupState {
            size: 2,
            results: vec![Some("1".into()), None],
            failed: Some(serde_json::to_string(&failed).unwrap()),
        };
        let e = after_join(&join(), Some(&g), &config(), 9);
        assert!(e.launch.is_empty());
        let ids: Vec<&str> = e.records.iter().map(|r| r.task_id.as_str()).collect();
        assert_eq!(ids, ["g", "body"]);
        for r in &e.records {
            assert!(
                r.json
                    .contains("member m3 (m.div) failed: division by zero"),
                "{}",
                r.json
            );
            assert!(r.json.contains("\"kind\":\"invalid-input\""));
        }
        let e = after_join(&join(), None, &config(), 9);
        assert!(e.records[1].json.contains("expired"));
    }
}
