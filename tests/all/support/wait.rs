//! Waiting for a state instead of sleeping for it: [`wait_for`] polls a
//! condition until it holds, up to a deadline, and panics naming what was
//! awaited (and what was last seen) when it never does.

use std::fmt::Debug;
use std::time::{Duration, Instant};

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(20);

/// A poll's answer: settled with a value, or not yet (with what was seen,
/// for the panic message). `bool`: settled when true; `Option`: settled
/// when `Some`; `Result`: settled when `Ok`, the `Err` saying what was seen.
pub trait Awaited {
    type Value;
    fn settled(self) -> Result<Self::Value, Option<String>>;
}

impl Awaited for bool {
    type Value = ();
    fn settled(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T> Awaited for Option<T> {
    type Value = T;
    fn settled(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Debug> Awaited for Result<T, E> {
    type Value = T;
    fn settled(self) -> Result<T, Option<String>> {
        self.map_err(|seen| Some(format!("{seen:?}")))
    }
}

/// Poll `poll` until it settles (see [`Awaited`]) and return its value;
/// panic if it has not within `within`. `what` names the awaited state
/// ("the worker's heartbeat"), for the panic message.
pub async fn wait_for<A: Awaited>(
    what: &str,
    within: Duration,
    mut poll: impl AsyncFnMut() -> A,
) -> A::Value {
    let deadline = Instant::now() + within;
    loop {
        match poll().await.settled() {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => timed_out(what, within, seen),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// [`wait_for`] outside async code (blocking the thread between polls).
pub fn wait_for_blocking<A: Awaited>(
    what: &str,
    within: Duration,
    mut poll: impl FnMut() -> A,
) -> A::Value {
    let deadline = Instant::now() + within;
    loop {
        match poll().settled() {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => timed_out(what, within, seen),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

fn timed_out(what: &str, within: Duration, seen: Option<String>) -> ! {
    match seen {
        Some(seen) => panic!("timed out after {within:?} waiting for {what}; last seen: {seen}"),
        None => panic!("timed out after {within:?} waiting for {what}"),
    }
}
