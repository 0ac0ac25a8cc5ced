//! The public keyset: everything the write path needs, signed by the
//! administrator.
//!
//! It lists the public key of every scope and the verifying keys of the
//! writers (tiering agents) whose snapshot manifests are to be trusted. Each
//! change increments `serial`, so a reader can refuse an older keyset than
//! one it has already seen.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use umbral_pre::PublicKey;

use crate::error::{Error, Result};
use crate::ids::{FsName, ScopeLabel, UserName};
#[cfg(feature = "secrets")]
use crate::keys::AdminSecret;
use crate::keys::{fingerprint, public_key_from_hex, public_key_hex};
use crate::signed;

const FORMAT: &str = "cbfs-keyset";
const VERSION: u32 = 1;
const DOMAIN: &str = "cbfs-keyset/v1";
const KIND: &str = "keyset";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    format: String,
    version: u32,
    fs: FsName,
    serial: u64,
    updated: String,
    admin_verifying_key: String,
    scopes: BTreeMap<ScopeLabel, String>,
    #[serde(default)]
    writers: BTreeMap<UserName, String>,
}

/// A verified public keyset.
#[derive(Clone, Debug)]
pub struct Keyset {
    /// The signed bytes it was read from; empty for a keyset made here.
    raw: Vec<u8>,
    fs: FsName,
    serial: u64,
    updated: String,
    admin: PublicKey,
    scopes: BTreeMap<ScopeLabel, PublicKey>,
    writers: BTreeMap<UserName, PublicKey>,
}

impl Keyset {
    /// A new keyset for file system `fs`, holding the `default` scope.
    #[cfg(feature = "secrets")]
    pub fn new(fs: FsName, admin: &AdminSecret) -> Self {
        let mut keyset = Keyset {
            raw: Vec::new(),
            fs,
            serial: 0,
            updated: signed::now_rfc3339(),
            admin: admin.verifying_key(),
            scopes: BTreeMap::new(),
            writers: BTreeMap::new(),
        };
        keyset.scopes.insert(
            ScopeLabel::default_scope(),
            admin.scope(&ScopeLabel::default_scope()).public_key(),
        );
        keyset
    }

    /// Parses and verifies a keyset. `location` names it in errors.
    pub fn from_bytes(bytes: &[u8], location: &str) -> Result<Self> {
        let (body, signature): (Body, _) = signed::parse(KIND, location, bytes)?;
        if body.format != FORMAT {
            return Err(Error::doc(
                KIND,
                location,
                format!("format is `{}`, not `{FORMAT}`", body.format),
            ));
        }
        if body.version != VERSION {
            return Err(Error::doc(
                KIND,
                location,
                format!(
                    "version {} is not supported (this build reads version {VERSION})",
                    body.version
                ),
            ));
        }
        let key = |what: &str, hex: &str| {
            public_key_from_hex(hex).map_err(|e| Error::doc(KIND, location, format!("{what}: {e}")))
        };
        let admin = key("admin_verifying_key", &body.admin_verifying_key)?;
        signed::verify(KIND, location, DOMAIN, &body, &signature, &admin)?;
        if !body.scopes.contains_key(&ScopeLabel::default_scope()) {
            return Err(Error::doc(KIND, location, "it has no `default` scope"));
        }
        let mut scopes = BTreeMap::new();
        for (label, hex) in &body.scopes {
            scopes.insert(label.clone(), key(&format!("scope {label}"), hex)?);
        }
        let mut writers = BTreeMap::new();
        for (name, hex) in &body.writers {
            writers.insert(name.clone(), key(&format!("writer {name}"), hex)?);
        }
        Ok(Keyset {
            raw: bytes.to_vec(),
            fs: body.fs,
            serial: body.serial,
            updated: body.updated,
            admin,
            scopes,
            writers,
        })
    }

    /// Reads and verifies a keyset file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read keyset", path, e))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Signs the keyset with the administrator's key and serializes it.
    ///
    /// Fails if `admin` is not the key this keyset belongs to.
    #[cfg(feature = "secrets")]
    pub fn to_signed_bytes(&self, admin: &AdminSecret) -> Result<Vec<u8>> {
        self.check_admin(admin)?;
        let body = Body {
            format: FORMAT.into(),
            version: VERSION,
            fs: self.fs.clone(),
            serial: self.serial,
            updated: self.updated.clone(),
            admin_verifying_key: public_key_hex(&self.admin),
            scopes: self
                .scopes
                .iter()
                .map(|(l, k)| (l.clone(), public_key_hex(k)))
                .collect(),
            writers: self
                .writers
                .iter()
                .map(|(n, k)| (n.clone(), public_key_hex(k)))
                .collect(),
        };
        Ok(signed::sign(DOMAIN, &body, &admin.signer()))
    }

    /// Fails unless `admin` is this keyset's administrator key.
    #[cfg(feature = "secrets")]
    pub fn check_admin(&self, admin: &AdminSecret) -> Result<()> {
        if admin.verifying_key() == self.admin {
            Ok(())
        } else {
            Err(Error::KeyMismatch {
                what: format!(
                    "the administrator secret does not belong to keyset `{}` (its administrator key is {}, the secret's is {}); use that file system's own secret",
                    self.fs,
                    fingerprint(&self.admin),
                    fingerprint(&admin.verifying_key())
                ),
            })
        }
    }

    /// Adds a scope derived from `admin`. Returns false if it already existed.
    #[cfg(feature = "secrets")]
    pub fn add_scope(&mut self, admin: &AdminSecret, label: &ScopeLabel) -> Result<bool> {
        self.check_admin(admin)?;
        if self.scopes.contains_key(label) {
            return Ok(false);
        }
        self.scopes
            .insert(label.clone(), admin.scope(label).public_key());
        self.bump();
        Ok(true)
    }

    /// Registers a writer's verifying key. Returns false if it was already there.
    #[cfg(feature = "secrets")]
    pub fn add_writer(
        &mut self,
        admin: &AdminSecret,
        name: &UserName,
        key: PublicKey,
    ) -> Result<bool> {
        self.check_admin(admin)?;
        if self.writers.get(name) == Some(&key) {
            return Ok(false);
        }
        self.writers.insert(name.clone(), key);
        self.bump();
        Ok(true)
    }

    fn bump(&mut self) {
        self.serial += 1;
        self.updated = signed::now_rfc3339();
    }

    /// The signed bytes this keyset was read from (empty if it was made in
    /// this process and not read back).
    pub fn signed_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// The file system this keyset belongs to.
    pub fn fs(&self) -> &FsName {
        &self.fs
    }

    /// Incremented on every change.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// When the keyset last changed (RFC 3339).
    pub fn updated(&self) -> &str {
        &self.updated
    }

    /// The administrator's verifying key.
    pub fn admin_verifying_key(&self) -> &PublicKey {
        &self.admin
    }

    /// Public key of a scope.
    pub fn scope(&self, label: &ScopeLabel) -> Option<&PublicKey> {
        self.scopes.get(label)
    }

    /// All scopes, by label.
    pub fn scopes(&self) -> &BTreeMap<ScopeLabel, PublicKey> {
        &self.scopes
    }

    /// All registered writers, by name.
    pub fn writers(&self) -> &BTreeMap<UserName, PublicKey> {
        &self.writers
    }
}

impl PartialEq for Keyset {
    fn eq(&self, other: &Self) -> bool {
        self.fs == other.fs
            && self.serial == other.serial
            && self.updated == other.updated
            && self.admin == other.admin
            && self.scopes == other.scopes
            && self.writers == other.writers
    }
}

#[cfg(all(test, feature = "secrets"))]
mod tests {
    use super::*;

    fn setup() -> (AdminSecret, Keyset) {
        let admin = AdminSecret::generate();
        let ks = Keyset::new(FsName::new("fs1").unwrap(), &admin);
        (admin, ks)
    }

    #[test]
    fn round_trip_and_verify() {
        let (admin, mut ks) = setup();
        assert!(
            ks.add_scope(&admin, &ScopeLabel::new("alice").unwrap())
                .unwrap()
        );
        assert!(
            !ks.add_scope(&admin, &ScopeLabel::new("alice").unwrap())
                .unwrap()
        );
        let bytes = ks.to_signed_bytes(&admin).unwrap();
        let back = Keyset::from_bytes(&bytes, "t").unwrap();
        assert_eq!(back, ks);
        assert_eq!(back.serial(), 1);
        assert_eq!(
            back.scope(&ScopeLabel::new("alice").unwrap()),
            Some(&admin.scope(&ScopeLabel::new("alice").unwrap()).public_key())
        );
    }

    #[test]
    fn tampering_is_detected() {
        let (admin, ks) = setup();
        let text = String::from_utf8(ks.to_signed_bytes(&admin).unwrap()).unwrap();
        let forged = text.replace("\"serial\": 0", "\"serial\": 7");
        assert_ne!(forged, text);
        let err = Keyset::from_bytes(forged.as_bytes(), "ks.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ks.json") && err.contains("does not verify"),
            "{err}"
        );
    }

    #[test]
    fn substituted_scope_key_is_detected() {
        let (admin, ks) = setup();
        let other = AdminSecret::generate();
        let text = String::from_utf8(ks.to_signed_bytes(&admin).unwrap()).unwrap();
        let real = public_key_hex(ks.scope(&ScopeLabel::default_scope()).unwrap());
        let fake = public_key_hex(&other.scope(&ScopeLabel::default_scope()).public_key());
        let forged = text.replace(&real, &fake);
        assert!(Keyset::from_bytes(forged.as_bytes(), "t").is_err());
    }

    #[test]
    fn wrong_admin_is_refused() {
        let (_, ks) = setup();
        let err = ks
            .to_signed_bytes(&AdminSecret::generate())
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not belong to keyset `fs1`"), "{err}");
    }

    #[test]
    fn unknown_version_is_refused() {
        let (admin, ks) = setup();
        let text = String::from_utf8(ks.to_signed_bytes(&admin).unwrap()).unwrap();
        let future = text.replace("\"version\": 1", "\"version\": 9");
        let err = Keyset::from_bytes(future.as_bytes(), "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("version 9 is not supported"), "{err}");
    }
}
