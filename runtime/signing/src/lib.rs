//! Identity and trust: a component is named by the SHA-256 of its bytes and
//! signed with ed25519 over that digest plus a small manifest. Workers run
//! only what a key in their trust directory signed.
//!
//! A signature file (`COMPONENT.sig`) is JSON:
//!
//! ```json
//! {
//!   "format": "celeriac-signature/v1",
//!   "key_id": "9f2c4e1a7b3d5f60",
//!   "payload": "<base64 of the manifest JSON>",
//!   "signature": "<base64 of the 64-byte ed25519 signature>"
//! }
//! ```
//!
//! The signature covers `celeriac-signature/v1\n` followed by the exact
//! payload bytes, so no JSON canonicalisation is involved. The manifest
//! holds `digest` (`sha256:<hex>`), `size`, `module`, `signer` and
//! `signed_at` (RFC 3339), and `grants` when the component may reach
//! anything (see [`celeriac_protocol::grants`]).

mod keys;
mod signature;
mod trust;

pub use celeriac_protocol::{Digest, DigestError, GrantError, Grants, OriginPattern};
pub use keys::{KeyError, KeyPair, PublicKey, generate_keypair, key_id};
pub use signature::{
    Manifest, SignatureError, SignatureFile, sign_component, sign_component_at,
    sign_component_with, signature_path, validate_module_name,
};
pub use trust::{Signed, TrustStore, Verified, VerifyError};
