//! Celeriac's protocol: what crosses the queue and the result store, and
//! the rules every producer-controlled field is held to. Serde only: no
//! runtime, no Redis, no wasmtime, so a producer in any Rust program (and
//! every other crate here) shares one definition.
//!
//! - [`message`]: the task message, its limits, bounds and validation
//! - [`record`]: result records and task states
//! - [`workflow`]: chains, groups and chords as messages carry them
//! - [`event`]: task and worker events (observability, capped)
//! - [`grants`]: what a signed component may reach (HTTP origins, config, key-value)
//! - [`Digest`]: the content identity of a component
//! - [`Backoff`]: one exponential delay policy (task retries, reconnects)
//! - [`clock`], [`units`], [`text`]: Unix milliseconds, human durations and
//!   sizes, bounded text

pub mod backoff;
pub mod celery;
pub mod clock;
mod digest;
pub mod event;
pub mod grants;
pub mod message;
pub mod record;
pub mod text;
pub mod units;
pub mod workflow;

pub use backoff::Backoff;
pub use clock::now_ms;
pub use digest::{Digest, DigestError};
pub use event::{Event, EventFilter, EventKind};
pub use grants::{GrantError, Grants, OriginPattern};
pub use message::{MessageError, MessageLimits, TaskMessage, bounds};
pub use record::{ErrorInfo, RecordLimits, ResultRecord, TaskState};
