//! `misbehave`: tasks that break the rules on purpose, so tests can show the
//! sandbox stops each one with the right cause and keeps going.

use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
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

/// Gives back what it was given, after `ms` milliseconds: any JSON in,
/// the same out (a slow chord callback, an error callback that shows what
/// it received).
#[task]
pub fn hold(value: Value, ms: Option<u64>) -> Value {
    std::thread::sleep(Duration::from_millis(ms.unwrap_or(0)));
    value
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

/// Makes the host do the work: `times` rounds (forever without it) of
/// `chunk` bytes of WASI random (`random`, `insecure`), stdout output
/// (`stdout`, straight to the WASI stream) or a log line (`log`), each
/// costing almost no wasm work. Returns the bytes moved.
#[task]
pub fn host_work(kind: String, chunk: u64, times: Option<u64>) -> Result<u64> {
    // Built only when sent: making it is wasm work the test must not count.
    let line = match kind.as_str() {
        "stdout" | "log" => "x".repeat(usize::try_from(chunk).unwrap_or(usize::MAX)),
        _ => String::new(),
    };
    let stdout = wasip2::cli::stdout::get_stdout();
    let mut moved: u64 = 0;
    let mut round = 0;
    while times.is_none_or(|t| round < t) {
        let n = match kind.as_str() {
            "random" => wasip2::random::random::get_random_bytes(chunk).len(),
            "insecure" => wasip2::random::insecure::get_insecure_random_bytes(chunk).len(),
            "stdout" => {
                let mut rest = line.as_bytes();
                while !rest.is_empty() {
                    let room = stdout
                        .check_write()
                        .map_err(|e| Error::fatal(e.to_string()))?;
                    let (now, later) = rest.split_at(rest.len().min(room as usize));
                    stdout.write(now).map_err(|e| Error::fatal(e.to_string()))?;
                    rest = later;
                }
                line.len()
            }
            "log" => {
                celeriac_sdk::log(celeriac_sdk::Level::Debug, &line);
                line.len()
            }
            other => return Err(Error::invalid_input(format!("unknown kind `{other}`"))),
        };
        moved += black_box(n) as u64;
        round += 1;
    }
    Ok(moved)
}

/// Writes `stderr` to stderr `repeat` times, then panics with `panic`, or
/// without it executes `unreachable` (a trap with no panic of its own, so
/// whatever stderr says is the guest's word only).
#[task]
pub fn crash(stderr: String, repeat: u64, panic: Option<String>) -> u64 {
    use std::io::Write;
    let mut err = std::io::stderr();
    for _ in 0..repeat {
        let _ = err.write_all(stderr.as_bytes());
    }
    match panic {
        Some(message) => panic!("{message}"),
        None => std::process::abort(),
    }
}

/// Exits instead of returning: through WASI `exit-with-code` (the exact
/// status reaches the host), or with `std: true` through Rust's
/// `std::process::exit`, whose WASI `exit` carries only success or failure.
#[task]
pub fn exit(status: u8, std: Option<bool>) -> u64 {
    if std == Some(true) {
        std::process::exit(i32::from(status))
    }
    wasip2::cli::exit::exit_with_code(status);
    unreachable!("exit-with-code returned")
}

/// How many times this task has run in this instance: 1 in a fresh one,
/// n for the n-th task of a reused one (a global survives only as long as
/// its instance).
#[task]
pub fn calls() -> u32 {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    CALLS.fetch_add(1, Ordering::Relaxed) + 1
}

/// Keeps `mib` MiB more in a global, as a leaking task would; returns the
/// MiB kept in this instance so far.
#[task]
pub fn keep(mib: usize) -> usize {
    static KEPT: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    let mut kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
    kept.push(black_box(vec![1u8; mib << 20]));
    kept.iter().map(|k| k.len() >> 20).sum()
}

celeriac_sdk::export_tasks!(
    hold, spin, hog, recurse, panic, flaky, fatal, patient, sleep, chatter, escape, host_work,
    crash, exit, bloat, calls, keep
);
