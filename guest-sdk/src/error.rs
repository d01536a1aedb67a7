//! Task failures as a Rust task author returns them: [`Error`] with its
//! kind (retry, fatal, invalid input) and an optional retry delay.

use std::fmt;
use std::time::Duration;

use crate::__private::{Failure, WitFailureKind};

/// How the runtime treats a failed task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Transient: retried with exponential backoff up to the task's max retries.
    Retry,
    /// Permanent: not retried.
    Fatal,
    /// The arguments do not fit the task: not retried.
    InvalidInput,
}

/// A task failure. Any `std::error::Error` converts into a fatal one, so `?`
/// works on ordinary fallible calls; use [`Error::retry`] for transient
/// conditions.
///
/// Like `anyhow::Error`, this type deliberately does not implement
/// `std::error::Error`, which is what makes the blanket `From` possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: FailureKind,
    message: String,
    retry_after: Option<Duration>,
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A transient failure: the task is retried later.
    pub fn retry(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Retry, message)
    }

    /// A permanent failure: the task is not retried.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Fatal, message)
    }

    /// The input does not fit the task: not retried.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(FailureKind::InvalidInput, message)
    }

    /// For a retry: wait this long before the next attempt instead of
    /// following the backoff schedule.
    pub fn after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The failure kind.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The message shown to whoever submitted the task.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(err: E) -> Self {
        // Keep the cause chain: it is usually the useful part.
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Error::fatal(message)
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        Failure {
            kind: match err.kind {
                FailureKind::Retry => WitFailureKind::Retry,
                FailureKind::Fatal => WitFailureKind::Fatal,
                FailureKind::InvalidInput => WitFailureKind::InvalidInput,
            },
            message: err.message,
            retry_after_ms: err
                .retry_after
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}
