//! Durations like `500ms`, `2s`, `5m` and sizes like `64MiB`, as users type
//! them on the command line.

use std::time::Duration;

/// A value that could not be read as a duration or size.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error("invalid duration `{input}`: {reason} (examples: 500ms, 2s, 5m)")]
    Duration { input: String, reason: String },
    #[error("invalid size `{input}`: {reason} (examples: 64MiB, 1GiB, 512KiB)")]
    Size { input: String, reason: String },
}

/// Parse a duration such as `500ms`, `2s`, `1m30s`.
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    humantime::parse_duration(input.trim()).map_err(|e| UnitError::Duration {
        input: input.to_string(),
        reason: e.to_string(),
    })
}

/// Parse a size in bytes such as `64MiB`, `1GiB`, `4096`.
pub fn parse_size(input: &str) -> Result<u64, UnitError> {
    input
        .trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| UnitError::Size {
            input: input.to_string(),
            reason: e.to_string(),
        })
}

/// A rate limit such as `10/s`, `100/m`, `5/h`: how far apart calls must
/// be (`1/s` is one a second; `10/s` one every 100 ms).
pub fn parse_rate(input: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("invalid rate `{input}`: {why} (examples: 10/s, 100/m, 5/h)");
    let (n, per) = input
        .trim()
        .split_once('/')
        .ok_or_else(|| bad("expected COUNT/UNIT"))?;
    let n: u32 = n
        .trim()
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| bad("COUNT must be a positive integer"))?;
    let period = match per.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        _ => return Err(bad("UNIT must be s, m or h")),
    };
    Ok(period / n)
}

/// Format a byte count for people: `256 MiB`.
pub fn format_size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

/// Format a duration for people: `1.5s`, `250ms`, `12µs`.
pub fn format_duration(d: Duration) -> String {
    let micros = d.as_micros();
    if micros < 1_000 {
        format!("{micros}µs")
    } else if micros < 1_000_000 {
        format!("{:.1}ms", micros as f64 / 1e3)
    } else {
        format!("{:.2}s", micros as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        let err = parse_duration("soon").unwrap_err().to_string();
        assert!(err.starts_with("invalid duration `soon`"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        let err = parse_size("lots").unwrap_err().to_string();
        assert!(err.starts_with("invalid size `lots`"), "{err}");
    }
}
