//! Configuration and secrets from the worker (`wasi:config/store`): only
//! the keys the component's signed manifest grants (`celeriac sign
//! --config KEY`) can be read.

use crate::__private::bindings::wasi::config::store;
use crate::Error;

/// The value of `key`, or `None` if the worker has none. A key the
/// manifest does not grant is a fatal error naming it.
pub fn get(key: &str) -> Result<Option<String>, Error> {
    store::get(key).map_err(to_error)
}

/// The value of `key`, or a fatal error if the worker has none.
pub fn require(key: &str) -> Result<String, Error> {
    get(key)?.ok_or_else(|| Error::fatal(format!("the worker has no configuration value `{key}`")))
}

fn to_error(e: store::Error) -> Error {
    match e {
        store::Error::Upstream(m) => Error::fatal(m),
        store::Error::Io(m) => Error::retry(m),
    }
}
