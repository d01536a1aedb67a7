//! `misbehave`: tasks that break the rules on purpose, so tests can show the
//! sandbox stops each one with the right cause and keeps going.

use std::hint::black_box;
use std::time::Duration;

use celeriac_sdk::{Error, Result, task};
use serde_json::{Value, json};

/// Never returns: only fuel or the hard time limit stops it.
#[task]
pub fn spin() -> u64 {
    let mut i: u64 = 0;
    loop {
        i = black_box(i.wrapping_add(1));
    }
}

/// Allocates (and touches) `step_mib` MiB at a time until memory runs out.
#[task]
pub fn hog(step_mib: Option<usize>) -> usize {
    let step = step_mib.unwrap_or(8) << 20;
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        held.push(black_box(vec![1u8; step]));
        if held.len() == usize::MAX {
            return held.len();
        }
    }
}

/// Recurses without bound until the wasm call stack overflows.
#[task]
pub fn recurse(depth: Option<u64>) -> u64 {
    #[allow(unconditional_recursion)]
    fn go(n: u64) -> u64 {
        // black_box on the result keeps this a real call, not a loop.
        black_box(go(n + 1)).wrapping_add(n)
    }
    go(depth.unwrap_or(0))
}

/// Panics with the given message.
#[task]
pub fn panic(message: Option<String>) -> u64 {
    panic!(
        "{}",
        message.unwrap_or_else(|| "misbehave.panic was asked to panic".into())
    )
}

/// Asks for a retry until it has been retried `succeed_after` times.
#[task]
pub fn flaky(succeed_after: u32) -> Result<Value> {
    let info = celeriac_sdk::task_info();
    if info.retries < succeed_after {
        return Err(Error::retry(format!(
            "not yet: attempt {} of {}",
            info.retries + 1,
            succeed_after + 1
        )));
    }
    Ok(json!({ "retries": info.retries }))
}

/// Fails for good with the given message.
#[task]
pub fn fatal(message: String) -> Result<()> {
    Err(Error::fatal(message))
}

/// A long task done right: works in small steps, polls the soft limit and
/// returns cleanly (reporting how far it got) when told to stop.
#[task]
pub fn patient(seconds: f64) -> Value {
    let steps = (seconds * 100.0).max(1.0) as u64;
    for step in 0..steps {
        if celeriac_sdk::should_stop() {
            celeriac_sdk::warn!("soft time limit reached after {step} of {steps} steps");
            return json!({ "stopped": true, "steps": step });
        }
        celeriac_sdk::progress(step, steps);
        std::thread::sleep(Duration::from_millis(10));
    }
    json!({ "stopped": false, "steps": steps })
}

/// Blocks in a host call (a WASI sleep) for `ms` milliseconds: the hard
/// time limit must bound time spent outside wasm too.
#[task]
pub fn sleep(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Prints `bytes` bytes to stdout: the host must cap what it keeps.
#[task]
pub fn chatter(bytes: usize) -> usize {
    use std::io::Write;
    let line = [b'x'; 1023];
    let mut out = std::io::stdout();
    let mut written = 0;
    while written < bytes {
        let _ = out.write_all(&line);
        let _ = out.write_all(b"\n");
        written += 1024;
    }
    written
}

/// Tries what the sandbox must not allow and reports what happened.
#[task]
pub fn escape() -> Value {
    json!({
        "read_etc_passwd": std::fs::read_to_string("/etc/passwd").is_ok(),
        "list_root": std::fs::read_dir("/").is_ok(),
        "env_vars": std::env::vars().count(),
        "args": std::env::args().count(),
        "tcp_connect": std::net::TcpStream::connect("127.0.0.1:6379").is_ok(),
    })
}

/// Makes the worker store `mib` MiB: as the result (`"result"`), or as
/// the message of a fatal failure made of control characters, which JSON
/// escapes to six times the size (`"failure"`).
#[task]
pub fn bloat(kind: String, mib: usize) -> Result<String> {
    let n = mib << 20;
    match kind.as_str() {
        "result" => Ok("x".repeat(n)),
        "failure" => Err(Error::fatal("\u{1}".repeat(n))),
        other => Err(Error::invalid_input(format!("kind `{other}`"))),
    }
}

celeriac_sdk::export_tasks!(
    spin, hog, recurse, panic, flaky, fatal, patient, sleep, chatter, escape, bloat
);
