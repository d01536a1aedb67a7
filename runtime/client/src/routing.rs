//! Routing: which queue a task goes to when the producer names none.
//! Rules map task names or globs (`math.*`, `*.slow`) to queues; the
//! first rule that matches wins, so put specific ones first.

use crate::ClientError;

/// Task name patterns to queues, in order.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    rules: Vec<(glob::Pattern, String)>,
}

impl Routes {
    /// Rules as `(pattern, queue)` pairs, checked in order.
    pub fn new<I, P, Q>(rules: I) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = (P, Q)>,
        P: AsRef<str>,
        Q: Into<String>,
    {
        let mut out = Vec::new();
        for (pattern, queue) in rules {
            let pattern = pattern.as_ref();
            let queue = queue.into();
            crate::validate_queue(&queue)?;
            let glob = glob::Pattern::new(pattern).map_err(|e| {
                ClientError::Route(format!("route `{pattern}` is not a valid pattern: {e}"))
            })?;
            out.push((glob, queue));
        }
        Ok(Self { rules: out })
    }

    /// The queue of the first rule matching `task`.
    pub fn queue_for(&self, task: &str) -> Option<&str> {
        self.rules
            .iter()
            .find(|(p, _)| p.matches(task))
            .map(|(_, q)| q.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_rule_wins() {
        let r = Routes::new([("math.fib", "cpu"), ("math.*", "math"), ("*.fetch", "io")]).unwrap();
        assert_eq!(r.queue_for("math.fib"), Some("cpu"));
        assert_eq!(r.queue_for("math.add"), Some("math"));
        assert_eq!(r.queue_for("web.fetch"), Some("io"));
        assert_eq!(r.queue_for("text.upper"), None);
        assert!(Routes::new([("a.*", "bad queue")]).is_err());
        assert!(Routes::new([("a[", "q")]).is_err());
    }
}
