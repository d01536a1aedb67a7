//! Workflows on the wire: chains, groups and chords as what a task message
//! carries with it, and [`launch`], the one function that turns a workflow
//! node into the messages and groups to create. Pure: the client launches
//! a workflow's first steps with it, a worker the next ones as a task
//! completes, each step atomically with the completion that caused it.
//!
//! The model (Celery's, made explicit):
//! - a task message carries `chain`, the nodes to run after it, each fed
//!   the result of the one before as its first argument, and `member`, the
//!   group to report to once that chain is done;
//! - a group is a key in the broker counting its members' results by
//!   index; the member that completes it (or the first that fails) fires
//!   its *join*, a [`JoinMessage`] stored with the group, exactly once;
//! - a chord is a group followed by its body in a chain: the join feeds
//!   the ordered results to whatever follows the group.
//!
//! Every id is assigned when the workflow is built, so a waiter knows the
//! id of the final result before anything runs, and a step repeated after
//! a worker died produces the same ids (which the broker uses to do it
//! once).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::message::{TaskMessage, VERSION};

/// How long a group's state waits for its members, seconds (a member
/// delayed longer, by an eta or retries, finds its group gone and the
/// workflow fails with `expired`).
pub const GROUP_TTL_SECS: u64 = 7 * 24 * 3600;

/// One node of a workflow, as messages carry it (ids and digests fixed).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Node {
    /// A task: its message, minus what is filled in at launch (the input
    /// from upstream, correlation ids and continuation).
    Task(Box<TaskMessage>),
    /// Steps in order, each fed the result of the one before.
    Chain(Vec<Node>),
    /// Members in parallel; the result is their results in order.
    Group(GroupNode),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupNode {
    pub id: String,
    pub members: Vec<Node>,
}

/// Where a finished chain reports: member `index` of group `group`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub group: String,
    pub index: u32,
}

/// Many calls of one task in one message: each item is one call (its
/// only argument, or with `star` its argument list); the result is the
/// list of their results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MapCall {
    /// A JSON array.
    pub items: Box<RawValue>,
    #[serde(default)]
    pub star: bool,
}

/// Fired by the member that completes a group (or the first that fails):
/// reads the group's results and carries on with `chain` / `member`.
/// Serialized with `v` then `join` first, which is how a worker tells it
/// from a task message without parsing it twice ([`is_join`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinMessage {
    pub v: u32,
    /// The group's id.
    pub join: String,
    pub queue: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<Node>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<Member>,
    /// Result expiry for the group's record, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_ttl: Option<u64>,
}

const JOIN_HEAD: &str = "{\"v\":1,\"join\":";

/// Whether a payload is a [`JoinMessage`] (as this crate writes them).
pub fn is_join(payload: &str) -> bool {
    payload.starts_with(JOIN_HEAD)
}

impl JoinMessage {
    pub fn parse(payload: &str) -> Result<Self, crate::MessageError> {
        let m: JoinMessage = serde_json::from_str(payload)
            .map_err(|e| crate::MessageError::Malformed(e.to_string()))?;
        if m.v != VERSION || m.join.is_empty() || m.join.len() > 200 {
            return Err(crate::MessageError::Malformed(
                "join message with a bad version or group id".into(),
            ));
        }
        Ok(m)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A group to create: `size` members, then `join` (a [`JoinMessage`]) is
/// sent to `queue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGroup {
    pub id: String,
    pub size: u32,
    pub queue: String,
    pub join: String,
    /// How long the group's state is kept, seconds.
    pub ttl: u64,
}

/// What launching a node creates: messages to enqueue and groups to
/// create (before their members can report).
#[derive(Debug, Default)]
pub struct Launch {
    pub messages: Vec<TaskMessage>,
    pub groups: Vec<NewGroup>,
}

/// Correlation and timing shared by everything one step launches.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub root_id: &'a str,
    /// The task whose completion launches this (none for the first steps).
    pub parent_id: Option<&'a str>,
    /// Unix milliseconds: the launched messages' `submitted_at`.
    pub now: u64,
    /// The longest the state of a group is kept, seconds.
    pub group_ttl: u64,
}

/// Launch `node` fed `input` (prepended to each task's arguments), to be
/// followed by `chain` and then report to `member`.
pub fn launch(
    node: &Node,
    input: Option<&RawValue>,
    chain: &[Node],
    member: Option<&Member>,
    cx: &Context,
    out: &mut Launch,
) -> Result<(), String> {
    match node {
        Node::Task(t) => {
            let mut m = (**t).clone();
            if let Some(input) = input {
                m.args = prepend(input, &m.args)?;
            }
            m.v = VERSION;
            m.retries = 0;
            m.submitted_at = cx.now;
            m.root_id = Some(cx.root_id.to_string());
            m.parent_id = cx.parent_id.map(str::to_string);
            m.chain = chain.to_vec();
            m.member = member.cloned();
            out.messages.push(m);
        }
        Node::Chain(steps) => {
            let (first, rest) = steps
                .split_first()
                .ok_or_else(|| "a chain needs at least one step".to_string())?;
            let mut tail = rest.to_vec();
            tail.extend_from_slice(chain);
            launch(first, input, &tail, member, cx, out)?;
        }
        Node::Group(g) => {
            if g.members.is_empty() {
                return Err(format!("group {} has no members", g.id));
            }
            let join = JoinMessage {
                v: VERSION,
                join: g.id.clone(),
                queue: first_queue(node).unwrap_or("default").to_string(),
                root_id: Some(cx.root_id.to_string()),
                chain: chain.to_vec(),
                member: member.cloned(),
                result_ttl: first_task(node).and_then(|t| t.result_ttl),
            };
            out.groups.push(NewGroup {
                id: g.id.clone(),
                size: u32::try_from(g.members.len()).map_err(|_| "group too large")?,
                queue: join.queue.clone(),
                join: join.to_json(),
                ttl: cx.group_ttl,
            });
            for (i, m) in g.members.iter().enumerate() {
                let member = Member {
                    group: g.id.clone(),
                    index: i as u32,
                };
                launch(m, input, &[], Some(&member), cx, out)?;
            }
        }
    }
    Ok(())
}

/// `[input, ...args]`, as JSON text.
pub fn prepend(input: &RawValue, args: &RawValue) -> Result<Box<RawValue>, String> {
    let text = args.get().trim();
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| "args must be a JSON array".to_string())?;
    let joined = if inner.trim().is_empty() {
        format!("[{}]", input.get())
    } else {
        format!("[{},{inner}]", input.get())
    };
    RawValue::from_string(joined).map_err(|e| format!("arguments are not JSON: {e}"))
}

/// The first task a node runs (where its options are read from).
pub fn first_task(node: &Node) -> Option<&TaskMessage> {
    match node {
        Node::Task(t) => Some(t),
        Node::Chain(steps) => steps.first().and_then(first_task),
        Node::Group(g) => g.members.first().and_then(first_task),
    }
}

fn first_queue(node: &Node) -> Option<&str> {
    first_task(node).map(|t| t.queue.as_str())
}

/// The id whose record is a node's result: a task's own, a group's, a
/// chain's last step's.
pub fn final_id(node: &Node) -> Option<&str> {
    match node {
        Node::Task(t) => Some(&t.id),
        Node::Chain(steps) => steps.last().and_then(final_id),
        Node::Group(g) => Some(&g.id),
    }
}

/// The id whose record ends what `chain` leads to: its last node's final
/// id, or `None` when there is nothing after.
pub fn chain_final_id(chain: &[Node]) -> Option<&str> {
    chain.last().and_then(final_id)
}

/// Every task and group id of `nodes` that would get a record (links are
/// not: they run only on their task's outcome), depth first.
pub fn record_ids<'a>(nodes: &'a [Node], out: &mut Vec<&'a str>) {
    for n in nodes {
        match n {
            Node::Task(t) => out.push(&t.id),
            Node::Chain(steps) => record_ids(steps, out),
            Node::Group(g) => {
                out.push(&g.id);
                record_ids(&g.members, out);
            }
        }
    }
}

/// Visit every task message in `nodes`, links included.
pub fn each_task<'a>(nodes: &'a [Node], f: &mut impl FnMut(&'a TaskMessage)) {
    for n in nodes {
        match n {
            Node::Task(t) => {
                f(t);
                each_task(&t.chain, f);
                each_task(&t.link, f);
                each_task(&t.link_error, f);
            }
            Node::Chain(steps) => each_task(steps, f),
            Node::Group(g) => each_task(&g.members, f),
        }
    }
}

/// What a failed task hands its error callbacks (`link_error`) as their
/// first argument, and a group its failed member.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Failed {
    pub id: String,
    pub task: String,
    pub error: crate::ErrorInfo,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Digest;

    fn task(id: &str, name: &str, args: &str, queue: &str) -> Node {
        let json = serde_json::json!({
            "v": 1, "id": id, "task": name, "digest": Digest::of(b"x"),
            "args": serde_json::from_str::<serde_json::Value>(args).unwrap(), "queue": queue,
        });
        Node::Task(Box::new(
            TaskMessage::parse(&json.to_string(), 0).expect("valid"),
        ))
    }

    fn cx() -> Context<'static> {
        Context {
            root_id: "root",
            parent_id: Some("p"),
            now: 7,
            group_ttl: 60,
        }
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn input_is_prepended_to_arguments() {
        assert_eq!(prepend(&raw("5"), &raw("[]")).unwrap().get(), "[5]");
        assert_eq!(prepend(&raw("5"), &raw("[ ]")).unwrap().get(), "[5]");
        assert_eq!(
            prepend(&raw("[1,2]"), &raw("[3, {\"a\":1}]"))
                .unwrap()
                .get(),
            "[[1,2],3, {\"a\":1}]"
        );
        assert!(prepend(&raw("5"), &raw("{}")).is_err());
    }

    #[test]
    fn a_chain_launches_its_first_step_carrying_the_rest() {
        let chain = Node::Chain(vec![
            task("a", "m.add", "[2,2]", "q1"),
            task("b", "m.mul", "[4]", "q2"),
            task("c", "m.add", "[1]", "q1"),
        ]);
        let mut out = Launch::default();
        launch(&chain, None, &[], None, &cx(), &mut out).unwrap();
        assert!(out.groups.is_empty());
        let [m] = &out.messages[..] else {
            panic!("{:?}", out.messages)
        };
        assert_eq!((m.id.as_str(), m.args.get()), ("a", "[2,2]"));
        assert_eq!(m.chain.len(), 2);
        assert_eq!(m.root_id.as_deref(), Some("root"));
        assert_eq!(m.parent_id.as_deref(), Some("p"));
        assert_eq!(m.submitted_at, 7);
        assert_eq!(chain_final_id(&m.chain), Some("c"));
        // The next step gets the result first, and the rest of the chain.
        let mut next = Launch::default();
        launch(
            &m.chain[0],
            Some(&raw("4")),
            &m.chain[1..],
            None,
            &cx(),
            &mut next,
        )
        .unwrap();
        assert_eq!(next.messages[0].args.get(), "[4,4]");
        assert_eq!(next.messages[0].chain.len(), 1);
    }

    #[test]
    fn a_chord_is_a_group_whose_join_carries_the_body() {
        let chord = Node::Chain(vec![
            Node::Group(GroupNode {
                id: "g".into(),
                members: vec![
                    task("a", "m.add", "[1,1]", "work"),
                    Node::Chain(vec![
                        task("b", "m.add", "[2,2]", "work"),
                        task("c", "m.mul", "[10]", "work"),
                    ]),
                ],
            }),
            task("body", "m.sum", "[]", "sums"),
        ]);
        assert_eq!(final_id(&chord), Some("body"));
        let mut out = Launch::default();
        launch(&chord, None, &[], None, &cx(), &mut out).unwrap();
        let [g] = &out.groups[..] else { panic!() };
        assert_eq!((g.id.as_str(), g.size, g.queue.as_str()), ("g", 2, "work"));
        assert!(is_join(&g.join), "{}", g.join);
        let join = JoinMessage::parse(&g.join).unwrap();
        assert_eq!(final_id(&join.chain[0]), Some("body"));
        assert!(join.member.is_none());
        let ids: Vec<_> = out.messages.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        // Member 1 is a chain: its last step reports, so it carries the index.
        let b = &out.messages[1];
        assert_eq!(
            b.member,
            Some(Member {
                group: "g".into(),
                index: 1
            })
        );
        assert_eq!(b.chain.len(), 1);
        let mut ids = Vec::new();
        record_ids(std::slice::from_ref(&chord), &mut ids);
        assert_eq!(ids, ["g", "a", "b", "c", "body"]);
    }

    #[test]
    fn empty_chains_and_groups_are_refused() {
        let mut out = Launch::default();
        assert!(launch(&Node::Chain(vec![]), None, &[], None, &cx(), &mut out).is_err());
        let empty = Node::Group(GroupNode {
            id: "g".into(),
            members: vec![],
        });
        assert!(launch(&empty, None, &[], None, &cx(), &mut out).is_err());
    }
}
