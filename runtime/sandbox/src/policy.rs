//! What a host's operator decides per module: which modules run without
//! fuel metering, and which may keep an instance for several tasks (when
//! their signer allows it too). Pure data and decisions.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use celeriac_protocol::Grants;

/// A set of modules a policy covers: none, every one, or those named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Modules {
    #[default]
    None,
    All,
    Named(BTreeSet<String>),
}

impl Modules {
    pub fn contains(&self, module: &str) -> bool {
        match self {
            Self::None => false,
            Self::All => true,
            Self::Named(names) => names.contains(module),
        }
    }

    pub fn is_none(&self) -> bool {
        match self {
            Self::None => true,
            Self::All => false,
            Self::Named(names) => names.is_empty(),
        }
    }
}

/// `*` (every module), `none` or the empty string, or a comma-separated
/// list of module names.
impl FromStr for Modules {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        match text {
            "" | "none" => return Ok(Self::None),
            "*" => return Ok(Self::All),
            _ => {}
        }
        let mut names = BTreeSet::new();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return Ok(Self::All);
            }
            if !celeriac_protocol::message::valid_module_name(name) {
                return Err(format!(
                    "`{name}` is not a module name (letters, digits, `_` and `-`; or `*` for every module)"
                ));
            }
            names.insert(name.to_string());
        }
        Ok(Self::Named(names))
    }
}

impl fmt::Display for Modules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::All => f.write_str("*"),
            Self::Named(names) if names.is_empty() => f.write_str("none"),
            Self::Named(names) => {
                let list: Vec<&str> = names.iter().map(String::as_str).collect();
                f.write_str(&list.join(","))
            }
        }
    }
}

/// When an instance may serve more than one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReusePolicy {
    /// Modules whose instances may be kept, where their signer allows it.
    pub modules: Modules,
    /// Most tasks one instance serves, whatever the signer allows.
    pub max_tasks: u32,
    /// An instance whose memories total more than this after a task is
    /// thrown away, so a task that leaks cannot grow one for good.
    pub max_memory: u64,
}

impl ReusePolicy {
    pub const DEFAULT_MAX_TASKS: u32 = 1_000;
    pub const DEFAULT_MAX_MEMORY: u64 = 128 << 20;

    /// How many tasks an instance of `module`, signed with `grants`, may
    /// serve here: `None` unless both the signer and this policy allow
    /// reuse, and then the smaller of their counts.
    pub fn allowance(&self, module: &str, grants: &Grants) -> Option<u32> {
        let signed = grants.reuse?;
        if !self.modules.contains(module) || self.max_tasks < 2 {
            return None;
        }
        Some(signed.min(self.max_tasks)).filter(|n| *n >= 2)
    }

    /// Whether an instance that has served `uses` tasks, the last one
    /// cleanly, and now holds `memory` bytes may serve another.
    pub fn keeps(allowance: u32, uses: u32, memory: u64, max_memory: u64) -> bool {
        uses < allowance && memory <= max_memory
    }
}

impl Default for ReusePolicy {
    fn default() -> Self {
        Self {
            modules: Modules::None,
            max_tasks: Self::DEFAULT_MAX_TASKS,
            max_memory: Self::DEFAULT_MAX_MEMORY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modules(text: &str) -> Modules {
        text.parse().unwrap()
    }

    #[test]
    fn module_sets_parse_from_flags() {
        assert_eq!(modules(""), Modules::None);
        assert_eq!(modules("none"), Modules::None);
        assert_eq!(modules("*"), Modules::All);
        assert_eq!(modules("text, *"), Modules::All);
        let named = modules("text,math, text");
        assert!(named.contains("text") && named.contains("math"));
        assert!(!named.contains("web"));
        assert_eq!(named.to_string(), "math,text");
        assert!(modules(",").is_none());
        let e = "text,a b".parse::<Modules>().unwrap_err();
        assert!(e.contains("`a b` is not a module name"), "{e}");
        assert!("9lives".parse::<Modules>().is_err());
    }

    #[test]
    fn reuse_needs_the_signer_and_the_policy() {
        let signed = |n| Grants {
            reuse: n,
            ..Grants::default()
        };
        let policy = ReusePolicy {
            modules: modules("text"),
            max_tasks: 100,
            ..ReusePolicy::default()
        };
        assert_eq!(policy.allowance("text", &signed(Some(10))), Some(10));
        assert_eq!(policy.allowance("text", &signed(Some(5000))), Some(100));
        // Signer silent, or another module: a fresh instance every time.
        assert_eq!(policy.allowance("text", &signed(None)), None);
        assert_eq!(policy.allowance("math", &signed(Some(10))), None);
        // The default policy permits nothing.
        assert_eq!(
            ReusePolicy::default().allowance("text", &signed(Some(10))),
            None
        );
        let one = ReusePolicy {
            max_tasks: 1,
            ..policy
        };
        assert_eq!(one.allowance("text", &signed(Some(10))), None);
    }

    #[test]
    fn an_instance_is_kept_until_its_count_or_memory_bound() {
        assert!(ReusePolicy::keeps(3, 1, 10, 100));
        assert!(ReusePolicy::keeps(3, 2, 100, 100));
        assert!(!ReusePolicy::keeps(3, 3, 10, 100));
        assert!(!ReusePolicy::keeps(3, 1, 101, 100));
    }
}
