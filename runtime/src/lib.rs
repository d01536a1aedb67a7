//! Celeriac host library: the sandbox that runs task components, the
//! signing and trust model, and the `celeriac` CLI built on them.
//!
//! - [`sandbox`]: wasmtime engine, limits, compile cache, one fresh store per task
//! - [`signing`]: content digests, ed25519 keys, signature files, trust stores
//! - [`broker`]: queues, component store and results, in Redis or in memory
//! - [`registry`]: uploading components and fetching them back, verified
//! - [`client`]: submitting tasks and waiting for results
//! - [`worker`]: the consume loop: fetch, run, retry, ack, renew, reclaim
//! - [`results`]: result records and task states
//! - [`units`]: human-friendly durations and sizes for flags and config

pub mod broker;
pub mod cli;
pub mod client;
pub mod registry;
pub mod results;
pub mod sandbox;
pub mod signing;
pub mod units;
pub mod worker;
