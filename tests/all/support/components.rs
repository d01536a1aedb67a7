//! The example components (built once from `tasks/` with the toolchain
//! users have), the upload check `celeriac upload` makes, and
//! [`Publisher`]: a signing key whose public half is trusted, and the
//! examples signed with it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

use celeriac_broker::Broker;
use celeriac_broker::registry::UploadOptions;
use celeriac_sandbox::{Sandbox, SandboxConfig};
use celeriac_signing::{
    Grants, KeyPair, PublicKey, TrustStore, generate_keypair, sign_component, sign_component_with,
};

pub fn workspace_root() -> PathBuf {
    // CARGO_MANIFEST_DIR is runtime/cli.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("runtime/cli sits two levels under the workspace root")
        .to_path_buf()
}

/// The target directory this test binary was built in
/// (`<target>/debug/deps/all-…`): wherever `CARGO_TARGET_DIR` put it, the
/// components are built next to it.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("the test binary sits in <target>/<profile>/deps")
        .to_path_buf()
}

/// Path of the built example component `name` (math, text, misbehave).
/// The first call builds all of them (a no-op when they are up to date).
pub fn component(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let target = target_dir();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace_root())
            .args(["build", "--release", "--target", "wasm32-wasip2", "-p", "math", "-p", "text", "-p", "misbehave", "-p", "web"])
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("run cargo to build the example tasks");
        assert!(
            status.success(),
            "building tasks/ failed; is the wasm32-wasip2 target installed? (rustup target add wasm32-wasip2)"
        );
        target.join("wasm32-wasip2/release")
    });
    dir.join(format!("{name}.wasm"))
}

pub fn read_component(name: &str) -> Vec<u8> {
    let path = component(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The upload check `celeriac upload` makes: load the component as a
/// worker would (compile, link, contract). One sandbox per test binary, so
/// each component compiles once.
pub fn worker_check(bytes: &[u8]) -> Result<(), String> {
    static CHECKER: OnceLock<Sandbox> = OnceLock::new();
    let sandbox = CHECKER.get_or_init(|| {
        Sandbox::new(SandboxConfig {
            concurrency: 1,
            cache_dir: None,
            ..SandboxConfig::default()
        })
        .expect("a sandbox for upload checks")
    });
    sandbox.check(bytes)
}

/// [`UploadOptions`] with [`worker_check`] as the check.
pub fn upload_options() -> UploadOptions<'static> {
    UploadOptions::new(&worker_check)
}

/// A publisher key, a trust directory holding its public half, and the
/// example components signed with it.
pub struct Publisher {
    pub dir: tempfile::TempDir,
    pub key: KeyPair,
    pub trust: TrustStore,
}

impl Publisher {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for the publisher");
        std::fs::create_dir_all(dir.path().join("trust")).expect("create the trust directory");
        let (secret, public, _) =
            generate_keypair(&dir.path().join("keys/alice")).expect("generate a signing key");
        std::fs::copy(&public, dir.path().join("trust/alice.pub"))
            .expect("put the public key in the trust directory");
        let key = KeyPair::load(&secret).expect("load the signing key");
        let trust = TrustStore::from_keys([PublicKey::load(&public).expect("load the public key")]);
        Self { dir, key, trust }
    }

    pub fn trust_dir(&self) -> PathBuf {
        self.dir.path().join("trust")
    }

    /// The public key file the trust directory holds.
    pub fn public_key(&self) -> PathBuf {
        self.trust_dir().join("alice.pub")
    }

    /// Sign `bytes` as `module` and upload them through the registry
    /// (checked as `celeriac upload` checks them).
    pub async fn upload_bytes(&self, broker: &dyn Broker, bytes: &[u8], module: &str) {
        self.upload_granting(broker, bytes, module, &Grants::default())
            .await;
    }

    /// As [`Publisher::upload_bytes`], the signed manifest granting `grants`.
    pub async fn upload_granting(
        &self,
        broker: &dyn Broker,
        bytes: &[u8],
        module: &str,
        grants: &Grants,
    ) {
        let sig = sign_component_with(bytes, &self.key, module, grants, SystemTime::now())
            .expect("sign the component");
        celeriac_broker::registry::upload(broker, bytes, &sig, &self.trust, upload_options())
            .await
            .unwrap_or_else(|e| panic!("upload {module}: {e}"));
    }

    /// Sign and upload example components as their own module names.
    pub async fn upload(&self, broker: &dyn Broker, examples: &[&str]) {
        for name in examples {
            self.upload_bytes(broker, &read_component(name), name).await;
        }
    }

    /// Write `name.wasm` and its signature into the publisher's directory
    /// (for the CLI), returning the component path.
    pub fn signed_file(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.wasm"));
        let bytes = read_component(name);
        std::fs::write(&path, &bytes).expect("write the component file");
        let sig = sign_component(&bytes, &self.key, name).expect("sign the component");
        std::fs::write(celeriac_signing::signature_path(&path), sig.to_json())
            .expect("write the signature file");
        path
    }
}
