//! Tasks that reach out, under the grants they are signed with: HTTP through
//! `wasi:http` (the `wstd` client), configuration and secrets, and the
//! module's key-value state. Real patterns from Celery practice:
//!
//! - `get`: fetch a URL (optionally following redirects, each hop checked
//!   by the host against the grant and the worker's policy);
//! - `webhook`: deliver a JSON payload exactly once per idempotency key,
//!   retried with backoff on 5xx and network errors, never on 4xx;
//! - `fetch_store`: fetch → transform → store the large part in key-value
//!   and return a small reference instead of the data;
//! - `authorized`: call an API with a bearer token read from configuration
//!   (the token never appears in the result);
//! - `fetch_many`: n sequential requests to one origin (the host's pool
//!   keeps the connection);
//! - `config_has`, `counter`, `kv_read`: configuration and key-value,
//!   alone.

use std::time::Duration;

use celeriac_sdk::{Error, Result, config, kv, task};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wstd::http::{Body, Client, Request};

/// Redirect hops `get` follows at most.
const MAX_REDIRECTS: usize = 5;

struct Response {
    status: u16,
    location: Option<String>,
    body: Vec<u8>,
}

/// One request, synchronously. A host refusal (outside the grant, a
/// private address, a body over the cap, a timeout) comes back as the
/// wasi:http error code, in the message.
fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<Response> {
    let outcome: wstd::http::Result<Response> = wstd::runtime::block_on(async {
        let mut req = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(body.map(Body::from).unwrap_or_else(Body::empty))?;
        let mut resp = Client::new().send(req).await?;
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let status = resp.status().as_u16();
        let body = resp.body_mut().contents().await?.to_vec();
        Ok(Response {
            status,
            location,
            body,
        })
    });
    // Network trouble is worth a retry; the task's retry policy bounds it.
    outcome.map_err(|e| Error::retry(format!("{method} {url}: {e:?}")))
}

/// GET `url`; with `follow`, follow up to five redirects.
#[task]
fn get(url: String, follow: Option<bool>) -> Result<Value> {
    let mut url = url;
    let mut hops = 0;
    loop {
        let resp = send("GET", &url, &[], None)?;
        if follow.unwrap_or(false)
            && (300..400).contains(&resp.status)
            && let Some(next) = resp.location
        {
            hops += 1;
            if hops > MAX_REDIRECTS {
                return Err(Error::fatal(format!("more than {MAX_REDIRECTS} redirects")));
            }
            url = next;
            continue;
        }
        let text = String::from_utf8_lossy(&resp.body);
        let head: String = text.chars().take(1024).collect();
        return Ok(
            json!({ "status": resp.status, "bytes": resp.body.len(), "body": head, "url": url }),
        );
    }
}

/// POST `payload` to `url` once per `key`, whatever the retries: the key is
/// claimed before sending, released on a failure worth retrying, and kept
/// (for a day) once the receiver has it.
#[task]
fn webhook(url: String, payload: Value, key: String) -> Result<Value> {
    let slot = format!("webhook:{key}");
    let day = Some(Duration::from_secs(86_400));
    if !kv::set_if_absent(&slot, "sending", day)? {
        let state = kv::get_string(&slot)?.unwrap_or_default();
        return Ok(json!({ "delivered": false, "duplicate": true, "state": state }));
    }
    let body = serde_json::to_vec(&payload).map_err(|e| Error::fatal(e.to_string()))?;
    let sent = send(
        "POST",
        &url,
        &[
            ("content-type", "application/json"),
            ("idempotency-key", &key),
        ],
        Some(body),
    );
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            kv::delete(&slot)?;
            return Err(e);
        }
    };
    match resp.status {
        200..=299 => {
            kv::set(&slot, "delivered", day)?;
            Ok(json!({ "delivered": true, "status": resp.status }))
        }
        500..=599 => {
            kv::delete(&slot)?;
            Err(Error::retry(format!("receiver answered {}", resp.status)))
        }
        s => {
            kv::set(&slot, format!("refused {s}"), day)?;
            Err(Error::fatal(format!("receiver refused the webhook: {s}")))
        }
    }
}

/// Fetch `url`, count its lines and words, keep the body in key-value for
/// an hour under its digest, and return the reference, not the body.
#[task]
fn fetch_store(url: String) -> Result<Value> {
    let resp = send("GET", &url, &[], None)?;
    if resp.status != 200 {
        return Err(Error::retry(format!("{url} answered {}", resp.status)));
    }
    let text = String::from_utf8_lossy(&resp.body);
    let digest = hex::encode(Sha256::digest(&resp.body));
    let key = format!("blob:{digest}");
    kv::set(&key, &resp.body, Some(Duration::from_secs(3600)))?;
    Ok(json!({
        "ref": format!("kv:{key}"),
        "bytes": resp.body.len(),
        "lines": text.lines().count(),
        "words": text.split_whitespace().count(),
    }))
}

/// GET `url` with `Authorization: Bearer <api_token>` from configuration.
#[task]
fn authorized(url: String) -> Result<Value> {
    let token = config::require("api_token")?;
    let auth = format!("Bearer {token}");
    let resp = send("GET", &url, &[("authorization", &auth)], None)?;
    Ok(json!({ "status": resp.status }))
}

/// `n` sequential GETs of `url`; the statuses' sum.
#[task]
fn fetch_many(url: String, n: u32) -> Result<u64> {
    let mut total = 0u64;
    for _ in 0..n {
        total += u64::from(send("GET", &url, &[], None)?.status);
    }
    Ok(total)
}

/// Whether the worker has a value for `key` (the value stays inside).
#[task]
fn config_has(key: String) -> Result<bool> {
    Ok(config::get(&key)?.is_some())
}

/// Add one to the counter `key`; its new value.
#[task]
fn counter(key: String) -> Result<i64> {
    kv::increment(&key, 1)
}

/// The text at `key`, if any.
#[task]
fn kv_read(key: String) -> Result<Option<String>> {
    kv::get_string(&key)
}

celeriac_sdk::export_tasks!(
    get,
    webhook,
    fetch_store,
    authorized,
    fetch_many,
    config_has,
    counter,
    kv_read
);
