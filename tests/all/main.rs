//! Celeriac's end-to-end tests, one binary with a module per feature (one
//! link of wasmtime instead of one per file). Tests talk to a real Redis
//! (`CELERIAC_TEST_REDIS`, default the local one) under a key prefix of
//! their own, or to the in-memory broker beside it, and run real
//! components built from `tasks/`; what the modules share is in `support`.

mod support;

mod api;
mod beat;
mod broker;
mod capabilities;
mod celery;
mod cli;
mod console;
mod control;
mod hardening;
mod harness;
mod polyglot;
mod queue;
mod registry;
mod reuse;
mod sandbox;
mod worker_process;
mod workflows;
