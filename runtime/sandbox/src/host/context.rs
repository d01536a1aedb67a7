//! The contract's own imports (`celeriac:task/context`): guest log lines
//! through `tracing` with the task id (each line capped, all of them within
//! a per-task budget, every byte charged as host work), task info, the
//! soft time limit's should-stop, and progress.

use std::time::Instant;

use super::HostState;
use crate::bindings::celeriac::task::{context, types};

/// Longest guest log line kept, in bytes; longer ones are cut (with a
/// marker) so one call cannot spend the whole per-task log budget.
pub(crate) const LOG_LINE_CAP: usize = 8 << 10;

impl types::Host for HostState {}

impl context::Host for HostState {
    fn log(&mut self, level: context::Level, message: String) {
        // The whole line crossed into the host, kept or not: charge it.
        self.charge(message.len());
        let (message, truncated) = cap_log_line(message);
        if message.len() > self.log_budget {
            self.logs_dropped += 1;
            return;
        }
        self.log_budget -= message.len();
        self.logs_truncated += u64::from(truncated);
        let id = self.task.id.as_str();
        // Guest lines go to their own target so operators can filter them.
        match level {
            context::Level::Trace => tracing::trace!(target: "guest", task_id = id, "{message}"),
            context::Level::Debug => tracing::debug!(target: "guest", task_id = id, "{message}"),
            context::Level::Info => tracing::info!(target: "guest", task_id = id, "{message}"),
            context::Level::Warn => tracing::warn!(target: "guest", task_id = id, "{message}"),
            context::Level::Error => tracing::error!(target: "guest", task_id = id, "{message}"),
        }
    }

    fn info(&mut self) -> context::TaskInfo {
        let now = Instant::now();
        let remaining = |t: Instant| {
            u64::try_from(t.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
        };
        context::TaskInfo {
            id: self.task.id.clone(),
            module: self.task.module.clone(),
            name: self.task.name.clone(),
            retries: self.task.retries,
            max_retries: self.task.max_retries,
            soft_remaining_ms: self.task.soft_deadline.map(remaining),
            hard_remaining_ms: Some(remaining(self.task.hard_deadline)),
        }
    }

    fn should_stop(&mut self) -> bool {
        self.task.soft_deadline.is_some_and(|t| Instant::now() >= t)
    }

    fn progress(&mut self, done: u64, total: u64) {
        self.progress = Some((done, total));
    }
}

/// Cut a guest log line to [`LOG_LINE_CAP`] bytes (on a character
/// boundary), saying how much was cut.
fn cap_log_line(mut message: String) -> (String, bool) {
    if message.len() <= LOG_LINE_CAP {
        return (message, false);
    }
    let mut end = LOG_LINE_CAP;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let cut = message.len() - end;
    message.truncate(end);
    message.push_str(&format!(" … [{cut} more bytes truncated]"));
    (message, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_log_lines_are_cut_with_a_marker() {
        let (line, cut) = cap_log_line("short".into());
        assert_eq!((line.as_str(), cut), ("short", false));
        let (line, cut) = cap_log_line("é".repeat(LOG_LINE_CAP));
        assert!(cut);
        assert!(line.starts_with("éé"));
        assert!(
            line.ends_with(&format!(" … [{} more bytes truncated]", LOG_LINE_CAP)),
            "{}",
            &line[line.len() - 40..]
        );
        assert!(line.len() < LOG_LINE_CAP + 64);
    }
}
