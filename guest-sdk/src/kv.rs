//! The module's key-value state (`celeriac:task/kv`), shared by every run
//! of every task of the module, on every worker; no other module can reach
//! it. Needs `celeriac sign --kv`. Errors map onto failure kinds: an
//! unreachable store is worth a retry; a missing grant or a value over the
//! host's bounds is not.

use std::time::Duration;

use crate::__private::bindings::celeriac::task::kv;
use crate::Error;

/// The bytes stored at `key`, if any.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    kv::get(key).map_err(to_error)
}

/// The text stored at `key`, if any (a fatal error if it is not UTF-8).
pub fn get_string(key: &str) -> Result<Option<String>, Error> {
    get(key)?
        .map(|v| String::from_utf8(v).map_err(|_| Error::fatal(format!("kv `{key}` is not text"))))
        .transpose()
}

/// Store `value` at `key`, expiring after `ttl` if given.
pub fn set(key: &str, value: impl AsRef<[u8]>, ttl: Option<Duration>) -> Result<(), Error> {
    kv::set(key, value.as_ref(), ttl.map(millis)).map_err(to_error)
}

/// Store `value` only if `key` holds nothing; true if this call stored it.
/// The idempotency-key primitive: `if !set_if_absent(id, "1", ttl)? { return
/// Ok(already_done) }`.
pub fn set_if_absent(
    key: &str,
    value: impl AsRef<[u8]>,
    ttl: Option<Duration>,
) -> Result<bool, Error> {
    kv::set_if_absent(key, value.as_ref(), ttl.map(millis)).map_err(to_error)
}

/// Remove `key`; true if it held a value.
pub fn delete(key: &str) -> Result<bool, Error> {
    kv::delete(key).map_err(to_error)
}

/// Add `delta` to the integer at `key` (absent is 0), atomically; the new
/// value.
pub fn increment(key: &str, delta: i64) -> Result<i64, Error> {
    kv::increment(key, delta).map_err(to_error)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn to_error(e: kv::Error) -> Error {
    match e {
        kv::Error::Denied(m) | kv::Error::Invalid(m) => Error::fatal(m),
        kv::Error::Unavailable(m) => Error::retry(m),
    }
}
