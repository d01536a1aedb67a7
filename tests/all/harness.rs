//! The harness itself: a developer's shell settings never reach the
//! `celeriac` binary the tests start (see `support::command`).

use std::process::Command;

use crate::support::{Outcome, TestCommand, component};

/// Set in the child process this test starts (see below).
const CHILD: &str = "CELERIAC_HARNESS_CHILD";

/// Settings that, if they leaked, would change what the binary does: a
/// trust directory that does not exist, a broker nobody answers on,
/// another prefix, another cache, JSON and trace logs.
const SHELL: &[(&str, &str)] = &[
    ("CELERIAC_TRUST", "/nonexistent/trust"),
    ("CELERIAC_BROKER", "redis://127.0.0.1:1"),
    ("CELERIAC_PREFIX", "leaked:"),
    ("CELERIAC_CACHE_DIR", "/nonexistent/cache"),
    ("CELERIAC_LOG_FORMAT", "json"),
    ("CELERIAC_LOG", "trace"),
    ("RUST_LOG", "trace"),
];

/// Runs this very test again in a child process whose environment holds
/// [`SHELL`] (this process's own environment is left alone); there the
/// binary must behave as if none of it were set.
#[test]
fn a_developers_shell_settings_do_not_reach_the_binary() {
    if std::env::var_os(CHILD).is_none() {
        let me = "harness::a_developers_shell_settings_do_not_reach_the_binary";
        let out = Command::new(std::env::current_exe().expect("the test binary's path"))
            .args([me, "--exact", "--test-threads", "1"])
            .env(CHILD, "1")
            .envs(SHELL.iter().copied())
            .output()
            .expect("run the test binary again");
        assert!(
            out.status.success() && out.stdout_text().contains("1 passed"),
            "in a shell with {SHELL:?}:\n{}\n{}",
            out.stdout_text(),
            out.stderr_text()
        );
        return;
    }

    let command = TestCommand::new();
    let environment = command.environment();
    for (name, _) in SHELL {
        assert!(
            environment.iter().any(|(k, v)| k == name && v.is_none()),
            "{name} is not removed: {environment:?}"
        );
    }
    // With --trust from the leaked setting this would be refused, and the
    // leaked logs would show on stderr.
    let cache = tempfile::tempdir().expect("a cache directory");
    let math = component("math");
    let o = TestCommand::new()
        .cache(cache.path())
        .arg("run")
        .arg(&math)
        .args(["math.add", "[2, 3]"])
        .output();
    assert_eq!(
        (o.code(), o.stdout_text().as_str(), o.stderr_text().as_str()),
        (Some(0), "5\n", "")
    );
}
