//! Workflows from the producer's side: a [`Spec`] (built in Rust, or read
//! from JSON or TOML with [`Spec::parse`]) becomes protocol nodes with
//! every id assigned and every module pinned to its digest, then its first
//! steps are launched in one atomic broker call ([`run`]). What happens
//! next is the workers' (see `celeriac_protocol::workflow`).
//!
//! The file format is the spec's JSON shape; each node is an object with
//! exactly one of these keys:
//!
//! | node | shape |
//! | --- | --- |
//! | task | `{"task": "math.add", "args": [1, 2], "kwargs": {}, ` options, `"link": node or [nodes], "link_error": …}` |
//! | chain | `{"chain": [node, …]}`: each result is the next one's first argument |
//! | group | `{"group": [node, …]}`: the result is the list of results |
//! | chord | `{"chord": {"header": [node, …], "body": node}}` |
//! | map, starmap | `{"map": {"task": "math.fib", "items": [10, 20]}}` (one message) |
//! | chunks | `{"chunks": {"task": "math.add", "items": [[1, 2], …], "size": 10}}` (a group of starmaps) |
//!
//! Task options: `queue`, `priority`, `max_retries`, `countdown`,
//! `expires`, `timeout`, `soft_timeout`, `fuel`, `memory`, `result_ttl`
//! (durations as `10s`, `5m`; sizes as `64MiB`).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::value::to_raw_value;
use serde_json::{Map, Value};

use celeriac_broker::{Broker, Effects, Launched, ModuleInfo};
use celeriac_protocol::Event;
use celeriac_protocol::message::new_task_id;
use celeriac_protocol::now_ms;
use celeriac_protocol::record::{ResultRecord, TaskState};
use celeriac_protocol::units::{parse_duration, parse_size};
use celeriac_protocol::workflow::{
    Context, GROUP_TTL_SECS, GroupNode, Launch, MapCall, Node, final_id, launch,
};

use crate::{ClientError, Routes, SubmitOptions, outgoing, resolve, task_message};

/// A workflow as its author writes it.
#[derive(Debug, Clone)]
pub enum Spec {
    Task(TaskSpec),
    Chain(Vec<Spec>),
    Group(Vec<Spec>),
    /// A group, then `body` fed the list of its results, exactly once.
    Chord {
        header: Vec<Spec>,
        body: Box<Spec>,
    },
    /// `task` once per item in one message (`star`: each item is an
    /// argument list).
    Map {
        task: TaskSpec,
        items: Vec<Value>,
        star: bool,
    },
    /// `items` (argument lists) in messages of `size` calls, as a group.
    Chunks {
        task: TaskSpec,
        items: Vec<Value>,
        size: usize,
    },
}

/// One task of a workflow with its own options (unset ones take the
/// [`Defaults`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub task: String,
    #[serde(default)]
    pub args: Vec<Value>,
    #[serde(default)]
    pub kwargs: Map<String, Value>,
    #[serde(default)]
    pub queue: Option<String>,
    #[serde(default)]
    pub priority: Option<u8>,
    #[serde(default)]
    pub max_retries: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    pub countdown: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub expires: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub soft_timeout: Option<Duration>,
    #[serde(default)]
    pub fuel: Option<u64>,
    #[serde(default, deserialize_with = "size")]
    pub memory: Option<u64>,
    #[serde(default, deserialize_with = "duration")]
    pub result_ttl: Option<Duration>,
    /// Run on success, fed the result.
    #[serde(skip)]
    pub link: Vec<Spec>,
    /// Run on failure, fed `{"id", "task", "error": {"kind", "message"}}`.
    #[serde(skip)]
    pub link_error: Vec<Spec>,
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
        .transpose()
}

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Option::<Size>::deserialize(d)? {
        None => Ok(None),
        Some(Size::Bytes(n)) => Ok(Some(n)),
        Some(Size::Text(s)) => parse_size(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

impl TaskSpec {
    /// Its options: its own, else the defaults (its queue routed by name
    /// when it names none).
    pub fn options(&self, defaults: &Defaults, now: SystemTime) -> SubmitOptions {
        let d = &defaults.options;
        let later = |by: Duration| now.checked_add(by);
        let millis = celeriac_protocol::clock::millis;
        SubmitOptions {
            queue: self
                .queue
                .clone()
                .or_else(|| defaults.routes.queue_for(&self.task).map(str::to_string))
                .unwrap_or_else(|| d.queue.clone()),
            eta: self.countdown.and_then(later).or(d.eta),
            expires: self.expires.and_then(later).or(d.expires),
            max_retries: self.max_retries.unwrap_or(d.max_retries),
            limits: celeriac_protocol::MessageLimits {
                timeout_ms: self.timeout.map(millis).or(d.limits.timeout_ms),
                soft_timeout_ms: self.soft_timeout.map(millis).or(d.limits.soft_timeout_ms),
                fuel: self.fuel.or(d.limits.fuel),
                memory: self.memory.or(d.limits.memory),
            },
            result_ttl: self.result_ttl.or(d.result_ttl),
            ignore_result: d.ignore_result,
            priority: self.priority.unwrap_or(d.priority),
            unique: None,
        }
    }

    /// One line of a `--batch` file (a task node without links).
    pub fn parse_line(line: &str) -> Result<Self, ClientError> {
        serde_json::from_str(line).map_err(|e| ClientError::Workflow(e.to_string()))
    }

    /// As a request for [`crate::submit_batch`].
    pub fn request(&self) -> crate::TaskRequest {
        crate::TaskRequest {
            task: self.task.clone(),
            args: self.args.clone(),
            kwargs: self.kwargs.clone(),
        }
    }

    pub fn new(task: impl Into<String>) -> Self {
        Self {
            task: task.into(),
            ..Self::default()
        }
    }

    pub fn args(mut self, args: impl IntoIterator<Item = Value>) -> Self {
        self.args = args.into_iter().collect();
        self
    }

    pub fn link(mut self, spec: Spec) -> Self {
        self.link.push(spec);
        self
    }

    pub fn link_error(mut self, spec: Spec) -> Self {
        self.link_error.push(spec);
        self
    }
}

impl Spec {
    pub fn task(t: TaskSpec) -> Self {
        Spec::Task(t)
    }

    pub fn chain(steps: impl IntoIterator<Item = Spec>) -> Self {
        Spec::Chain(steps.into_iter().collect())
    }

    pub fn group(members: impl IntoIterator<Item = Spec>) -> Self {
        Spec::Group(members.into_iter().collect())
    }

    pub fn chord(header: impl IntoIterator<Item = Spec>, body: Spec) -> Self {
        Spec::Chord {
            header: header.into_iter().collect(),
            body: Box::new(body),
        }
    }

    /// A workflow file: JSON, or TOML when `toml` is set.
    pub fn parse(text: &str, toml: bool) -> Result<Self, ClientError> {
        let value: Value = if toml {
            let t: toml::Table = toml::from_str(text)
                .map_err(|e| ClientError::Workflow(format!("not TOML: {}", e.message())))?;
            serde_json::to_value(t).map_err(|e| ClientError::Workflow(e.to_string()))?
        } else {
            serde_json::from_str(text)
                .map_err(|e| ClientError::Workflow(format!("not JSON: {e}")))?
        };
        Self::from_value(&value, "workflow").map_err(ClientError::Workflow)
    }

    fn from_value(v: &Value, path: &str) -> Result<Self, String> {
        const KINDS: [&str; 7] = [
            "task", "chain", "group", "chord", "map", "starmap", "chunks",
        ];
        let obj = v
            .as_object()
            .ok_or_else(|| format!("{path}: expected an object, got `{v}`"))?;
        let kinds: Vec<&str> = KINDS.into_iter().filter(|k| obj.contains_key(*k)).collect();
        let kind = match kinds[..] {
            [one] => one,
            [] => {
                return Err(format!(
                    "{path}: expected one of {}",
                    KINDS.map(|k| format!("`{k}`")).join(", ")
                ));
            }
            _ => {
                return Err(format!(
                    "{path}: has both `{}` and `{}`",
                    kinds[0], kinds[1]
                ));
            }
        };
        let inner = &obj[kind];
        let at = format!("{path}.{kind}");
        let list = |v: &Value, at: &str| -> Result<Vec<Spec>, String> {
            let items = v
                .as_array()
                .ok_or_else(|| format!("{at}: expected a list"))?;
            items
                .iter()
                .enumerate()
                .map(|(i, v)| Self::from_value(v, &format!("{at}[{i}]")))
                .collect()
        };
        Ok(match kind {
            "task" => Spec::Task(task_spec(obj, path)?),
            "chain" => Spec::Chain(list(inner, &at)?),
            "group" => Spec::Group(list(inner, &at)?),
            "chord" => {
                let o = inner.as_object().ok_or_else(|| {
                    format!("{at}: expected {{\"header\": [...], \"body\": {{...}}}}")
                })?;
                if let Some(k) = o.keys().find(|k| *k != "header" && *k != "body") {
                    return Err(format!("{at}: unknown field `{k}` (expected header, body)"));
                }
                let header = o
                    .get("header")
                    .ok_or_else(|| format!("{at}: missing `header`"))?;
                let body = o
                    .get("body")
                    .ok_or_else(|| format!("{at}: missing `body`"))?;
                Spec::Chord {
                    header: list(header, &format!("{at}.header"))?,
                    body: Box::new(Self::from_value(body, &format!("{at}.body"))?),
                }
            }
            "map" | "starmap" | "chunks" => {
                let mut o = inner
                    .as_object()
                    .ok_or_else(|| format!("{at}: expected {{\"task\": …, \"items\": [...]}}"))?
                    .clone();
                let items = match o.remove("items") {
                    Some(Value::Array(items)) => items,
                    _ => return Err(format!("{at}: `items` must be a list")),
                };
                let size = o.remove("size");
                let task = task_spec(&o, &at)?;
                if kind == "chunks" {
                    let size = size
                        .and_then(|s| s.as_u64())
                        .filter(|s| *s > 0)
                        .ok_or_else(|| format!("{at}: `size` must be a positive integer"))?;
                    Spec::Chunks {
                        task,
                        items,
                        size: size as usize,
                    }
                } else {
                    if size.is_some() {
                        return Err(format!("{at}: unknown field `size`"));
                    }
                    Spec::Map {
                        task,
                        items,
                        star: kind == "starmap",
                    }
                }
            }
            _ => unreachable!("one of KINDS"),
        })
    }
}

/// A task node's fields, its links parsed as nodes.
fn task_spec(obj: &Map<String, Value>, path: &str) -> Result<TaskSpec, String> {
    let mut fields = obj.clone();
    let links = |v: Option<Value>, at: &str| -> Result<Vec<Spec>, String> {
        match v {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| Spec::from_value(v, &format!("{at}[{i}]")))
                .collect(),
            Some(v) => Ok(vec![Spec::from_value(&v, at)?]),
        }
    };
    let link = links(fields.remove("link"), &format!("{path}.link"))?;
    let link_error = links(fields.remove("link_error"), &format!("{path}.link_error"))?;
    let mut t: TaskSpec =
        serde_json::from_value(Value::Object(fields)).map_err(|e| format!("{path}: {e}"))?;
    t.link = link;
    t.link_error = link_error;
    Ok(t)
}

/// What tasks of a workflow get when they set nothing themselves.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    pub options: SubmitOptions,
    /// Queues for tasks that name none (before `options.queue`).
    pub routes: Routes,
}

/// A launched workflow: its root id (every member's `root_id`; `celeriac
/// result ROOT` shows them all) and the id whose record is its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub root_id: String,
    pub final_id: String,
}

/// What is stored under the root id: the workflow's shape, for reading
/// its members' records back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outline {
    pub root_id: String,
    pub final_id: String,
    pub nodes: OutlineNode,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutlineNode {
    Task {
        id: String,
        task: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        link: Vec<OutlineNode>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        link_error: Vec<OutlineNode>,
    },
    Chain(Vec<OutlineNode>),
    Group {
        id: String,
        members: Vec<OutlineNode>,
    },
}

fn outline(node: &Node) -> OutlineNode {
    match node {
        Node::Task(t) => OutlineNode::Task {
            id: t.id.clone(),
            task: t.task.clone(),
            link: t.link.iter().map(outline).collect(),
            link_error: t.link_error.iter().map(outline).collect(),
        },
        Node::Chain(steps) => OutlineNode::Chain(steps.iter().map(outline).collect()),
        Node::Group(g) => OutlineNode::Group {
            id: g.id.clone(),
            members: g.members.iter().map(outline).collect(),
        },
    }
}

/// Build `spec` into a node: modules resolved (an unknown one fails before
/// anything is sent), ids assigned, every task checked as a worker would.
pub async fn build(
    broker: &dyn Broker,
    spec: &Spec,
    defaults: &Defaults,
) -> Result<Node, ClientError> {
    let mut tasks = Vec::new();
    collect_tasks(spec, &mut tasks);
    let modules = resolve(broker, tasks.into_iter()).await?;
    let now = SystemTime::now();
    node(spec, &modules, defaults, now)
}

fn collect_tasks<'a>(spec: &'a Spec, out: &mut Vec<&'a str>) {
    match spec {
        Spec::Task(t) => {
            out.push(&t.task);
            t.link.iter().for_each(|s| collect_tasks(s, out));
            t.link_error.iter().for_each(|s| collect_tasks(s, out));
        }
        Spec::Chain(s) | Spec::Group(s) => s.iter().for_each(|s| collect_tasks(s, out)),
        Spec::Chord { header, body } => {
            header.iter().for_each(|s| collect_tasks(s, out));
            collect_tasks(body, out);
        }
        Spec::Map { task, .. } | Spec::Chunks { task, .. } => out.push(&task.task),
    }
}

fn nodes(
    specs: &[Spec],
    modules: &HashMap<String, ModuleInfo>,
    defaults: &Defaults,
    now: SystemTime,
) -> Result<Vec<Node>, ClientError> {
    specs
        .iter()
        .map(|s| node(s, modules, defaults, now))
        .collect()
}

fn node(
    spec: &Spec,
    modules: &HashMap<String, ModuleInfo>,
    defaults: &Defaults,
    now: SystemTime,
) -> Result<Node, ClientError> {
    let many = |specs: &[Spec]| nodes(specs, modules, defaults, now);
    let group = |members: Vec<Node>| -> Result<Node, ClientError> {
        if members.is_empty() {
            return Err(ClientError::Workflow(
                "a group needs at least one member".into(),
            ));
        }
        Ok(Node::Group(GroupNode {
            id: new_task_id(),
            members,
        }))
    };
    Ok(match spec {
        Spec::Task(t) => Node::Task(Box::new(task(t, None, modules, defaults, now)?)),
        Spec::Chain(steps) => {
            if steps.is_empty() {
                return Err(ClientError::Workflow(
                    "a chain needs at least one step".into(),
                ));
            }
            Node::Chain(many(steps)?)
        }
        Spec::Group(members) => group(many(members)?)?,
        Spec::Chord { header, body } => Node::Chain(vec![
            group(many(header)?)?,
            node(body, modules, defaults, now)?,
        ]),
        Spec::Map {
            task: t,
            items,
            star,
        } => Node::Task(Box::new(task(
            t,
            Some((items, *star)),
            modules,
            defaults,
            now,
        )?)),
        Spec::Chunks {
            task: t,
            items,
            size,
        } => group(
            items
                .chunks(*size)
                .map(|chunk| {
                    task(t, Some((chunk, true)), modules, defaults, now)
                        .map(|m| Node::Task(Box::new(m)))
                })
                .collect::<Result<_, _>>()?,
        )?,
    })
}

fn task(
    t: &TaskSpec,
    map: Option<(&[Value], bool)>,
    modules: &HashMap<String, ModuleInfo>,
    defaults: &Defaults,
    now: SystemTime,
) -> Result<celeriac_protocol::TaskMessage, ClientError> {
    let (module, _) = crate::split(&t.task)?;
    let options = t.options(defaults, now);
    let args = match map {
        Some(_) => to_raw_value(&Vec::<Value>::new())?,
        None => to_raw_value(&t.args)?,
    };
    let mut msg = task_message(
        new_task_id(),
        t.task.clone(),
        modules[module].digest,
        args,
        to_raw_value(&t.kwargs)?,
        &options,
        now_ms(),
    )?;
    if let Some((items, star)) = map {
        if star && items.iter().any(|i| !i.is_array()) {
            return Err(ClientError::Workflow(format!(
                "{}: starmap and chunks items must be argument lists",
                t.task
            )));
        }
        msg.map = Some(MapCall {
            items: to_raw_value(items)?,
            star,
        });
    }
    msg.link = nodes(&t.link, modules, defaults, now)?;
    msg.link_error = nodes(&t.link_error, modules, defaults, now)?;
    Ok(msg)
}

/// Build and launch `spec`: its description stored under a new root id,
/// its groups created and its first messages enqueued in one atomic step.
pub async fn run(
    broker: &dyn Broker,
    spec: &Spec,
    defaults: &Defaults,
) -> Result<Running, ClientError> {
    let node = build(broker, spec, defaults).await?;
    launch_node(broker, &node).await
}

/// Launch a built node (see [`build`]).
pub async fn launch_node(broker: &dyn Broker, node: &Node) -> Result<Running, ClientError> {
    let root_id = new_task_id();
    let final_id = final_id(node)
        .ok_or_else(|| ClientError::Workflow("an empty workflow".into()))?
        .to_string();
    let cx = Context {
        root_id: &root_id,
        parent_id: None,
        now: now_ms(),
        group_ttl: GROUP_TTL_SECS,
    };
    let mut out = Launch::default();
    launch(node, None, &[], None, &cx, &mut out).map_err(ClientError::Workflow)?;
    let mut effects = Effects {
        groups: out.groups,
        ..Effects::default()
    };
    for m in &out.messages {
        if broker.events_enabled() {
            effects.events.push(Event::sent(m, cx.now).to_json());
        }
        effects.launch.push(Launched {
            task_id: m.id.clone(),
            message: outgoing(m)?,
        });
    }
    let outline = Outline {
        root_id: root_id.clone(),
        final_id: final_id.clone(),
        nodes: outline(node),
    };
    let json = serde_json::to_string(&outline)?;
    broker
        .put_workflow(&root_id, &json, Duration::from_secs(GROUP_TTL_SECS))
        .await?;
    broker.apply(&effects).await?;
    Ok(Running { root_id, final_id })
}

/// A workflow's state: its result record (once final), and every
/// member's record in the order of the description.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub root_id: String,
    pub final_id: String,
    pub state: TaskState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultRecord>,
    pub members: Vec<MemberStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub id: String,
    pub task: String,
    pub state: TaskState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<ResultRecord>,
}

/// The state of the workflow launched as `root_id`, `None` if unknown.
pub async fn status(broker: &dyn Broker, root_id: &str) -> Result<Option<Status>, ClientError> {
    let Some(json) = broker.get_workflow(root_id).await? else {
        return Ok(None);
    };
    let outline: Outline = serde_json::from_str(&json)
        .map_err(|e| ClientError::CorruptResult(format!("workflow {root_id}: {e}")))?;
    let mut ids = Vec::new();
    flatten(&outline.nodes, &mut ids);
    let mut members = Vec::with_capacity(ids.len());
    for (id, task) in ids {
        let record = crate::result(broker, &id).await?;
        members.push(MemberStatus {
            state: record.as_ref().map_or(TaskState::Pending, |r| r.state),
            id,
            task,
            record,
        });
    }
    let result = crate::result(broker, &outline.final_id).await?;
    let state = match &result {
        Some(r) if r.state.is_final() => r.state,
        _ if members.iter().any(|m| m.state != TaskState::Pending) => TaskState::Started,
        _ => TaskState::Pending,
    };
    Ok(Some(Status {
        root_id: outline.root_id,
        final_id: outline.final_id,
        state,
        result: result.filter(|r| r.state.is_final()),
        members,
    }))
}

fn flatten(node: &OutlineNode, out: &mut Vec<(String, String)>) {
    match node {
        OutlineNode::Task {
            id,
            task,
            link,
            link_error,
        } => {
            out.push((id.clone(), task.clone()));
            link.iter().chain(link_error).for_each(|n| flatten(n, out));
        }
        OutlineNode::Chain(steps) => steps.iter().for_each(|n| flatten(n, out)),
        OutlineNode::Group { id, members } => {
            out.push((id.clone(), "group".into()));
            members.iter().for_each(|n| flatten(n, out));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_name_what_is_wrong_and_where() {
        let ok = r#"{"chord": {"header": [{"task": "math.add", "args": [1, 1]},
            {"chain": [{"task": "math.add", "args": [2, 2]}, {"task": "math.mul", "args": [3], "priority": 5}]}],
            "body": {"task": "math.sum", "link": {"task": "math.add", "args": [1]}}}}"#;
        let Spec::Chord { header, body } = Spec::parse(ok, false).unwrap() else {
            panic!()
        };
        assert_eq!(header.len(), 2);
        let Spec::Task(b) = *body else { panic!() };
        assert_eq!(b.link.len(), 1);
        let toml = "[chain]\n";
        assert!(Spec::parse(toml, true).is_err());
        let toml = r#"
            [[chain]]
            task = "math.add"
            args = [2, 2]
            countdown = "1s"
            [[chain]]
            map = { task = "math.fib", items = [1, 2, 3] }
        "#;
        let Spec::Chain(steps) = Spec::parse(toml, true).unwrap() else {
            panic!()
        };
        assert!(matches!(&steps[0], Spec::Task(t) if t.countdown == Some(Duration::from_secs(1))));
        assert!(matches!(&steps[1], Spec::Map { items, star: false, .. } if items.len() == 3));
        for (bad, says) in [
            (
                r#"{"chain": [{"task": "a.b"}, {"tsak": "a.b"}]}"#,
                "workflow.chain[1]: expected one of",
            ),
            (
                r#"{"group": [{"task": "a.b", "retries": 3}]}"#,
                "workflow.group[0]: unknown field `retries`",
            ),
            (
                r#"{"chord": {"header": []}}"#,
                "workflow.chord: missing `body`",
            ),
            (
                r#"{"task": "a.b", "chain": []}"#,
                "workflow: has both `task` and `chain`",
            ),
            (
                r#"{"chunks": {"task": "a.b", "items": [[1]]}}"#,
                "`size` must be a positive integer",
            ),
            (r#"{"task": "a.b", "countdown": "soon"}"#, "workflow: "),
            ("[1]", "workflow: expected an object"),
        ] {
            let err = Spec::parse(bad, false).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
