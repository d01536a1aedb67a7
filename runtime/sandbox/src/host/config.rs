//! Configuration and secrets (`wasi:config/store`): values the worker holds
//! (from its environment or a file), each readable only by components whose
//! signed manifest names its key. Values never reach a log line: the type
//! that holds them prints only key names.

use std::collections::BTreeMap;
use std::fmt;

use super::HostState;
use crate::bindings::wasi::config::store;

/// The worker's configuration values by key.
#[derive(Clone, Default)]
pub struct ConfigValues(BTreeMap<String, String>);

impl ConfigValues {
    pub fn new(values: impl IntoIterator<Item = (String, String)>) -> Self {
        Self(values.into_iter().collect())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Key names only: values may be secrets.
impl fmt::Debug for ConfigValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl store::Host for HostState {
    fn get(&mut self, key: String) -> Result<Option<String>, store::Error> {
        self.charge(key.len());
        if !self.caps.grants.allows_config(&key) {
            let key = celeriac_protocol::text::clip(&key, 128);
            tracing::warn!(task_id = %self.task.id, key, "config read refused: key not granted");
            return Err(store::Error::Upstream(format!(
                "config key `{key}` is not granted to module `{}` (sign it with --config {key})",
                self.task.module
            )));
        }
        let value = self.caps.config.get(&key).map(str::to_string);
        self.charge(value.as_ref().map_or(0, String::len));
        Ok(value)
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, store::Error> {
        let granted: Vec<(String, String)> = self
            .caps
            .grants
            .config
            .iter()
            .filter_map(|k| Some((k.clone(), self.caps.config.get(k)?.to_string())))
            .collect();
        self.charge(granted.iter().map(|(k, v)| k.len() + v.len()).sum());
        Ok(granted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_keys_never_values() {
        let values = ConfigValues::new([("api_token".to_string(), "s3cr3t-value".to_string())]);
        let shown = format!("{values:?}");
        assert_eq!(shown, r#"{"api_token"}"#);
        assert!(!shown.contains("s3cr3t"));
    }
}
