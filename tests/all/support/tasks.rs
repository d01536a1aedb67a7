//! Submitting tasks and waiting for their records, as producers do
//! through `celeriac_client`.

use std::time::Duration;

use celeriac_broker::{Broker, FetchLimits};
use celeriac_client::{self as client, SubmitOptions, TaskRequest};
use celeriac_protocol::record::{ResultRecord, TaskState};
use serde_json::Value;

use super::wait::wait_for;

/// A request for `task` with positional `args` (a JSON array).
pub fn request(task: &str, args: Value) -> TaskRequest {
    TaskRequest {
        task: task.into(),
        args: args.as_array().cloned().unwrap_or_default(),
        kwargs: Default::default(),
    }
}

/// Submit `task(args…)`, returning its id.
pub async fn submit(b: &dyn Broker, task: &str, args: Value, options: &SubmitOptions) -> String {
    client::submit(b, request(task, args), options)
        .await
        .unwrap_or_else(|e| panic!("submit {task}: {e}"))
}

/// The final record of task `id` (SUCCESS, FAILURE or REVOKED), waited
/// for (push-based) up to `within`; panics if it has none by then.
pub async fn finished(b: &dyn Broker, id: &str, within: Duration) -> ResultRecord {
    let r = client::wait(b, id, within)
        .await
        .unwrap_or_else(|e| panic!("wait for task {id}: {e}"));
    match r {
        Some(r) if r.state.is_final() => r,
        Some(r) => panic!("task {id} did not finish within {within:?}; last record: {r:?}"),
        None => panic!("task {id} has no record after {within:?}"),
    }
}

/// The record of task `id` once it reaches `state` (polled).
pub async fn reached(b: &dyn Broker, id: &str, state: TaskState) -> ResultRecord {
    let what = format!("task {id} to reach {state:?}");
    wait_for(
        &what,
        Duration::from_secs(20),
        async || match client::result(b, id).await {
            Ok(Some(r)) if r.state == state => Ok(r),
            other => Err(other.map(|r| r.map(|r| r.state))),
        },
    )
    .await
}

/// Fetch up to `n` messages of any size.
pub fn fetch_limits(n: usize) -> FetchLimits {
    FetchLimits {
        max: n,
        max_bytes: usize::MAX,
        max_message_bytes: 64 << 20,
    }
}
