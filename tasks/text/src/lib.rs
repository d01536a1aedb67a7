//! `text`: string tasks. The same module exists in every guest language
//! (see `tasks/*-text`) and all of them must answer identically.

use celeriac_sdk::{Error, Result, task};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Lower-case hex SHA-256 of the UTF-8 bytes of `text`.
#[task]
pub fn sha256(text: String) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// Number of whitespace-separated words.
#[task]
pub fn word_count(text: String) -> usize {
    text.split_whitespace().count()
}

/// Upper-cased text (Unicode-aware).
#[task]
pub fn upper(text: String) -> String {
    text.to_uppercase()
}

/// Text with its characters (Unicode scalar values) in reverse order.
#[task]
pub fn reverse(text: String) -> String {
    text.chars().rev().collect()
}

#[derive(Serialize)]
pub struct Stats {
    bytes: usize,
    chars: usize,
    words: usize,
    lines: usize,
}

/// Byte, character, word and line counts.
#[task]
pub fn stats(text: String) -> Stats {
    Stats {
        bytes: text.len(),
        chars: text.chars().count(),
        words: text.split_whitespace().count(),
        lines: text.lines().count(),
    }
}

/// The text back, once the task has been retried `after` times: a
/// transient failure until then.
#[task]
pub fn eventually(text: String, after: u32) -> Result<String> {
    let retries = celeriac_sdk::task_info().retries;
    if retries < after {
        return Err(Error::retry(format!(
            "not yet: attempt {} of {}",
            retries + 1,
            after + 1
        )));
    }
    Ok(text)
}

/// The text back if it is ASCII; a permanent failure naming the first
/// other character otherwise.
#[task]
pub fn ascii(text: String) -> Result<String> {
    match text.chars().enumerate().find(|(_, c)| !c.is_ascii()) {
        Some((i, c)) => Err(Error::fatal(format!("not ASCII: `{c}` at character {i}"))),
        None => Ok(text),
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

/// Whether the worker has a configuration value for `key` (granted keys
/// only).
#[task]
fn config_has(key: String) -> Result<bool> {
    Ok(celeriac_sdk::config::get(&key)?.is_some())
}

/// Add one to the module's counter `key`.
#[task]
fn counter(key: String) -> Result<i64> {
    celeriac_sdk::kv::increment(&key, 1)
}

celeriac_sdk::export_tasks!(
    sha256, word_count, upper, reverse, stats, eventually, ascii, config_has, counter
);
