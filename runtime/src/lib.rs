//! Celeriac host library: the sandbox that runs task components, the
//! signing and trust model, and the `celeriac` CLI built on them.
//!
//! - [`sandbox`]: wasmtime engine, limits, compile cache, one fresh store per task
//! - [`signing`]: content digests, ed25519 keys, signature files, trust stores
//! - [`units`]: human-friendly durations and sizes for flags and config

pub mod cli;
pub mod sandbox;
pub mod signing;
pub mod units;
