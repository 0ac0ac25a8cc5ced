//! The key hierarchy: root seeds, scope keys, user and writer identities.
//!
//! ```text
//! root seed (32 bytes, one per file system)
//!  └─ Umbral SecretKeyFactory
//!      ├─ make_key("cbfs/v1/admin/sign")             administrator signing key, version 1
//!      ├─ make_key("cbfs/v1/admin/sign/v<N>")        its version N >= 2 (`rotate-admin`)
//!      ├─ make_secret("cbfs/v1/scope/<label>")        scope seed (32 bytes), key version 1
//!      ├─ make_secret("cbfs/v1/scope/<label>/v<N>")   its key version N >= 2 (`rotate-scope`)
//!      │   └─ SecretKeyFactory ─ make_key("cbfs/v1/scope/key")   scope key pair
//! user seed (32 bytes, one per user)
//!  └─ SecretKeyFactory ─ make_key("cbfs/v1/user/encrypt")  user key pair
//!                      └ make_key("cbfs/v1/user/sign")     user signing key
//! ```
//!
//! A scope seed can be exported on its own, so that one scope can be opened
//! without the root. Delegation is always from a scope key, never from the
//! root: with Umbral, a user holding threshold-many kfrags can compute the
//! delegating secret, so the blast radius of a delegation must be one scope.

#[cfg(feature = "secrets")]
use std::fmt;

#[cfg(feature = "secrets")]
use rand::RngCore;
#[cfg(feature = "secrets")]
use secrecy::{ExposeSecret, SecretBox};
use umbral_pre::PublicKey;
#[cfg(feature = "secrets")]
use umbral_pre::{SecretKey, SecretKeyFactory, Signer};

#[cfg(feature = "secrets")]
use crate::error::{Error, Result};
#[cfg(feature = "secrets")]
use crate::ids::ScopeLabel;

/// Length in bytes of every seed cbfs stores.
pub const SEED_LEN: usize = 32;

/// 32 bytes of secret seed: a root, scope, user, writer or node secret.
///
/// Zeroized on drop; neither `Clone` nor a `Debug` that shows the bytes.
#[cfg(feature = "secrets")]
pub struct Seed(SecretBox<[u8; SEED_LEN]>);

#[cfg(feature = "secrets")]
impl Seed {
    /// A fresh seed from the operating system's random source.
    pub fn generate() -> Self {
        let mut bytes = Box::new([0u8; SEED_LEN]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        Seed(SecretBox::new(bytes))
    }

    /// Wraps seed bytes read from `location` (used in the error message only).
    pub fn from_slice(bytes: &[u8], location: &str) -> Result<Self> {
        if bytes.len() != SEED_LEN {
            return Err(Error::Malformed {
                location: location.to_owned(),
                reason: format!(
                    "expected exactly {SEED_LEN} bytes of key, found {}",
                    bytes.len()
                ),
            });
        }
        let mut boxed = Box::new([0u8; SEED_LEN]);
        boxed.copy_from_slice(bytes);
        Ok(Seed(SecretBox::new(boxed)))
    }

    /// The secret bytes. Only key sources, which must store them, need this.
    pub fn expose_secret_bytes(&self) -> &[u8; SEED_LEN] {
        self.0.expose_secret()
    }

    fn factory(&self) -> SecretKeyFactory {
        SecretKeyFactory::from_secure_randomness(self.0.expose_secret())
            .expect("seed length equals the factory seed size")
    }
}

#[cfg(feature = "secrets")]
impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Seed([redacted])")
    }
}

const ADMIN_SIGN: &[u8] = b"cbfs/v1/admin/sign";
const SCOPE_SEED_PREFIX: &[u8] = b"cbfs/v1/scope/";
const SCOPE_KEY: &[u8] = b"cbfs/v1/scope/key";
const USER_ENCRYPT: &[u8] = b"cbfs/v1/user/encrypt";
const USER_SIGN: &[u8] = b"cbfs/v1/user/sign";

/// The administrator's root secret for one file system.
///
/// Every key of the file system derives from it, each in every version it
/// was rotated to: so the root secret alone still opens everything. It
/// signs with the version of the administrator's signing key that the
/// keyset names ([`with_sign_version`](Self::with_sign_version)).
#[cfg(feature = "secrets")]
pub struct AdminSecret {
    seed: Seed,
    factory: SecretKeyFactory,
    sign_version: u32,
}

/// The derivation label of a versioned key: version 1 is the label alone,
/// as before keys had versions.
fn versioned(base: &[u8], version: u32) -> Vec<u8> {
    if version <= 1 {
        base.to_vec()
    } else {
        [base, format!("/v{version}").as_bytes()].concat()
    }
}

#[cfg(feature = "secrets")]
impl AdminSecret {
    /// A new random root secret.
    pub fn generate() -> Self {
        Self::from_seed(Seed::generate())
    }

    /// The root secret held in `seed`, signing with version 1 of the
    /// administrator's key.
    pub fn from_seed(seed: Seed) -> Self {
        let factory = seed.factory();
        AdminSecret {
            seed,
            factory,
            sign_version: 1,
        }
    }

    /// The same root secret, signing with version `version` of the
    /// administrator's key (what the keyset names after `rotate-admin`).
    pub fn with_sign_version(mut self, version: u32) -> Self {
        self.sign_version = version.max(1);
        self
    }

    /// The version of the administrator's key it signs with.
    pub fn sign_version(&self) -> u32 {
        self.sign_version
    }

    /// The seed, to store it in a key source.
    pub fn seed(&self) -> &Seed {
        &self.seed
    }

    /// The administrator's signing key (signs keysets and grants).
    pub fn signer(&self) -> Signer {
        self.signer_at(self.sign_version)
    }

    /// Version `version` of the administrator's signing key.
    pub fn signer_at(&self, version: u32) -> Signer {
        Signer::new(self.factory.make_key(&versioned(ADMIN_SIGN, version)))
    }

    /// The administrator's verifying key.
    pub fn verifying_key(&self) -> PublicKey {
        self.signer().verifying_key()
    }

    /// Version `version` of the administrator's verifying key.
    pub fn verifying_key_at(&self, version: u32) -> PublicKey {
        self.signer_at(version).verifying_key()
    }

    /// The secret of one scope, key version 1.
    pub fn scope(&self, label: &ScopeLabel) -> ScopeSecret {
        self.scope_at(label, 1)
    }

    /// The secret of one scope in key version `version` (1 is the
    /// original key; each `rotate-scope` makes the next).
    pub fn scope_at(&self, label: &ScopeLabel, version: u32) -> ScopeSecret {
        let base = [SCOPE_SEED_PREFIX, label.as_str().as_bytes()].concat();
        let derived = self.factory.make_secret(&versioned(&base, version));
        let seed = Seed::from_slice(&derived.as_secret()[..SEED_LEN], "scope derivation")
            .expect("factory derives at least 32 bytes");
        ScopeSecret::from_seed_at(label.clone(), version.max(1), seed)
    }
}

#[cfg(feature = "secrets")]
impl fmt::Debug for AdminSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminSecret([redacted])")
    }
}

/// The secret of one scope in one key version: opens that scope's
/// lockboxes of that version, and only those.
#[cfg(feature = "secrets")]
pub struct ScopeSecret {
    label: ScopeLabel,
    version: u32,
    seed: Seed,
    key: SecretKey,
}

#[cfg(feature = "secrets")]
impl ScopeSecret {
    /// The scope secret held in `seed`, for the scope `label`, key version 1.
    pub fn from_seed(label: ScopeLabel, seed: Seed) -> Self {
        Self::from_seed_at(label, 1, seed)
    }

    /// The scope secret held in `seed`, for key version `version` of `label`.
    pub fn from_seed_at(label: ScopeLabel, version: u32, seed: Seed) -> Self {
        let key = seed.factory().make_key(SCOPE_KEY);
        ScopeSecret {
            label,
            version,
            seed,
            key,
        }
    }

    /// The scope's label.
    pub fn label(&self) -> &ScopeLabel {
        &self.label
    }

    /// Its key version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The seed, to export this one scope to a key source.
    pub fn seed(&self) -> &Seed {
        &self.seed
    }

    /// The Umbral secret key of the scope.
    pub fn secret_key(&self) -> &SecretKey {
        &self.key
    }

    /// The scope's public key: what lockboxes are sealed under.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }
}

#[cfg(feature = "secrets")]
impl fmt::Debug for ScopeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ScopeSecret({} v{}, [redacted])",
            self.label, self.version
        )
    }
}

/// A user's (or service identity's) secret: decrypts what is re-encrypted for
/// it, and signs its requests.
#[cfg(feature = "secrets")]
pub struct UserSecret {
    seed: Seed,
    factory: SecretKeyFactory,
}

#[cfg(feature = "secrets")]
impl UserSecret {
    /// A new random user secret.
    pub fn generate() -> Self {
        Self::from_seed(Seed::generate())
    }

    /// The user secret held in `seed`.
    pub fn from_seed(seed: Seed) -> Self {
        let factory = seed.factory();
        UserSecret { seed, factory }
    }

    /// The seed, to store it in a key source.
    pub fn seed(&self) -> &Seed {
        &self.seed
    }

    /// The Umbral key that opens re-encrypted capsules.
    pub fn secret_key(&self) -> SecretKey {
        self.factory.make_key(USER_ENCRYPT)
    }

    /// The user's encryption public key (the receiving key of delegations).
    pub fn public_key(&self) -> PublicKey {
        self.secret_key().public_key()
    }

    /// The key that signs the user's requests.
    pub fn signer(&self) -> Signer {
        Signer::new(self.factory.make_key(USER_SIGN))
    }

    /// The verifying key of the user's requests.
    pub fn verifying_key(&self) -> PublicKey {
        self.signer().verifying_key()
    }
}

#[cfg(feature = "secrets")]
impl fmt::Debug for UserSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserSecret([redacted])")
    }
}

/// Hex of a public key's compressed form, as it appears in every document.
pub fn public_key_hex(pk: &PublicKey) -> String {
    hex::encode(pk.to_compressed_bytes())
}

/// Parses the hex of a compressed public key.
pub fn public_key_from_hex(hex_str: &str) -> std::result::Result<PublicKey, String> {
    let bytes = hex::decode(hex_str).map_err(|e| format!("public key is not hex: {e}"))?;
    PublicKey::try_from_compressed_bytes(&bytes).map_err(|e| format!("bad public key: {e}"))
}

/// A short, human-comparable fingerprint of a public key.
pub fn fingerprint(pk: &PublicKey) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(pk.to_compressed_bytes());
    let hex = hex::encode(&digest[..10]);
    hex.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("hex is ascii"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(all(test, feature = "secrets"))]
mod tests {
    use super::*;
    use umbral_pre::{decrypt_original, encrypt};

    fn label(s: &str) -> ScopeLabel {
        ScopeLabel::new(s).unwrap()
    }

    #[test]
    fn derivation_is_deterministic_and_separated() {
        let admin = AdminSecret::generate();
        let again = AdminSecret::from_seed(
            Seed::from_slice(admin.seed().expose_secret_bytes(), "t").unwrap(),
        );
        assert_eq!(admin.verifying_key(), again.verifying_key());
        let a = admin.scope(&label("a")).public_key();
        assert_eq!(a, again.scope(&label("a")).public_key());
        assert_ne!(a, admin.scope(&label("b")).public_key());
        assert_ne!(a, admin.verifying_key());
    }

    #[test]
    fn exported_scope_seed_rebuilds_the_scope_only() {
        let admin = AdminSecret::generate();
        let scope = admin.scope(&label("proj"));
        let exported = Seed::from_slice(scope.seed().expose_secret_bytes(), "t").unwrap();
        let rebuilt = ScopeSecret::from_seed(label("proj"), exported);
        assert_eq!(rebuilt.public_key(), scope.public_key());
        let (capsule, ct) = encrypt(&scope.public_key(), b"group key").unwrap();
        assert_eq!(
            &*decrypt_original(rebuilt.secret_key(), &capsule, &ct).unwrap(),
            b"group key"
        );
        let other = admin.scope(&label("other"));
        assert!(decrypt_original(other.secret_key(), &capsule, &ct).is_err());
    }

    #[test]
    fn debug_never_shows_secret_bytes() {
        let admin = AdminSecret::generate();
        let hex_seed = hex::encode(admin.seed().expose_secret_bytes());
        for text in [
            format!("{admin:?}"),
            format!("{:?}", admin.seed()),
            format!("{:?}", admin.scope(&label("x"))),
            format!("{:?}", UserSecret::generate()),
        ] {
            assert!(text.contains("redacted"), "{text}");
            assert!(!text.contains(&hex_seed));
        }
    }

    #[test]
    fn key_versions_derive_apart_and_version_one_is_the_original() {
        let admin = AdminSecret::generate();
        let l = label("proj");
        assert_eq!(
            admin.scope_at(&l, 1).public_key(),
            admin.scope(&l).public_key()
        );
        let v2 = admin.scope_at(&l, 2);
        assert_eq!(v2.version(), 2);
        assert_ne!(v2.public_key(), admin.scope(&l).public_key());
        assert_ne!(v2.public_key(), admin.scope_at(&l, 3).public_key());
        // An exported version-2 seed rebuilds version 2 only.
        let back = ScopeSecret::from_seed_at(
            l.clone(),
            2,
            Seed::from_slice(v2.seed().expose_secret_bytes(), "t").unwrap(),
        );
        assert_eq!(back.public_key(), v2.public_key());
        assert_eq!(admin.verifying_key_at(1), admin.verifying_key());
        let rotated = AdminSecret::from_seed(
            Seed::from_slice(admin.seed().expose_secret_bytes(), "t").unwrap(),
        )
        .with_sign_version(2);
        assert_eq!(rotated.verifying_key(), admin.verifying_key_at(2));
        assert_ne!(rotated.verifying_key(), admin.verifying_key());
    }

    #[test]
    fn seed_length_is_checked() {
        let err = Seed::from_slice(&[0u8; 31], "file:x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("file:x") && err.contains("found 31"), "{err}");
    }

    #[test]
    fn fingerprint_is_stable_and_short() {
        let admin = AdminSecret::generate();
        let fp = fingerprint(&admin.verifying_key());
        assert_eq!(fp, fingerprint(&admin.verifying_key()));
        assert_eq!(fp.len(), 24);
    }
}
