//! The shared core of cbfs: the key hierarchy, key sources and the signed
//! key documents every tool reads.
//!
//! ```
//! use cbfs_core::{AdminSecret, FsName, Keyset, ScopeLabel};
//!
//! // The administrator makes a root secret and its public keyset.
//! let admin = AdminSecret::generate();
//! let mut keyset = Keyset::new(FsName::new("projects").unwrap(), &admin);
//! keyset.add_scope(&admin, &ScopeLabel::new("alice").unwrap()).unwrap();
//! let signed = keyset.to_signed_bytes(&admin).unwrap();
//!
//! // The write path reads only the public, signed keyset.
//! let public = Keyset::from_bytes(&signed, "keyset.json").unwrap();
//! let alice = public.scope(&ScopeLabel::new("alice").unwrap()).unwrap();
//! let (capsule, sealed) = umbral_pre::encrypt(alice, b"a group key").unwrap();
//!
//! // Only alice's scope secret opens what was sealed for alice's scope.
//! let scope = admin.scope(&ScopeLabel::new("alice").unwrap());
//! let opened = umbral_pre::decrypt_original(scope.secret_key(), &capsule, &sealed).unwrap();
//! assert_eq!(&*opened, b"a group key");
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Without `secrets` (the keyless build of cbfs-gc) the derivation labels
// and signing helpers the secret-key code shares are left unused.
#![cfg_attr(not(feature = "secrets"), allow(dead_code, unused_imports))]

mod clock;
mod delegation;
mod error;
#[cfg(feature = "secrets")]
mod grant;
mod ids;
mod keys;
mod keyset;
mod signed;
#[cfg(feature = "secrets")]
mod source;
mod user;

pub use clock::{
    Clock, FakeClock, SystemClock, TEST_CLOCK_ENV, TEST_HOOKS, now, system_clock, test_hooks,
};
pub use delegation::DelegationRecord;
pub use error::{Error, Result, error_chain};
#[cfg(feature = "secrets")]
pub use grant::{Delegation, DelegationTerms, Grant, Revocation, SealedGrant, delegate};
pub use ids::{FsName, ScopeLabel, UserName};
#[cfg(feature = "secrets")]
pub use keys::{AdminSecret, ScopeSecret, Seed, UserSecret};
pub use keys::{SEED_LEN, fingerprint, public_key_from_hex, public_key_hex};
pub use keyset::{Handover, Keyset, RetiredWriter};
pub use signed::parse_time;
/// The helpers the key-source backends (`cbfs-localkeys`, `cbfs-keysource`) build on.
#[cfg(feature = "secrets")]
pub use source::backend as source_backend;
#[cfg(feature = "secrets")]
pub use source::{
    KeySource, LocalSources, PinSource, Pkcs11Uri, Protection, RemoteSources, RewrapTo, Rewrapped,
    Unlock,
};
pub use user::UserPublic;

/// The signed JSON documents cbfs-core reads and writes, as
/// `(format, versions written, versions read)`: what `--version` prints.
/// (A keyset is written as version 1 until a key is rotated, then 2.)
pub const DOCUMENTS: &[(&str, &[u32], &[u32])] = &[
    ("cbfs-keyset", &[1, 2], &[1, 2]),
    ("cbfs-user", &[user::VERSION], &[user::VERSION]),
    ("cbfs-grant", &[1], &[1]),
    (
        "cbfs-delegation",
        &[delegation::VERSION],
        &[delegation::VERSION],
    ),
    ("cbfs-revocation", &[1], &[1]),
];

/// Re-exported so that users of this crate name the same Umbral types.
pub use umbral_pre;
