//! `text`: string tasks. The same module exists in every guest language
//! (see `tasks/*-text`) and all of them must answer identically.

use celeriac_sdk::task;
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

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

celeriac_sdk::export_tasks!(sha256, word_count, upper, reverse, stats);
