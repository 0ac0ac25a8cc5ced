//! The public keyset: everything the write path needs, signed by the
//! administrator.
//!
//! It lists the public key of every scope and the verifying keys of the
//! writers (tiering agents) whose snapshot manifests are to be trusted. Each
//! change increments `serial`, so a reader can refuse an older keyset than
//! one it has already seen.
//!
//! Keys rotate. A scope has a current key version and the retired versions
//! before it (`rotate-scope`); a writer key can be retired, its manifests up
//! to a sequence staying valid (`rotate-writer`); and the administrator's
//! signing key can hand over to its next version (`rotate-admin`): the old
//! key signs a statement naming the new one, which every later keyset
//! carries, so a reader that pinned the old key follows the hand-over and,
//! from then on, refuses anything the old key signed alone.
//!
//! A keyset that uses none of this is written as version 1, as before;
//! otherwise as version 2. Both are read.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use umbral_pre::{PublicKey, Signature};

use crate::error::{Error, Result};
use crate::ids::{FsName, ScopeLabel, UserName};
#[cfg(feature = "secrets")]
use crate::keys::AdminSecret;
use crate::keys::{fingerprint, public_key_from_hex, public_key_hex};
use crate::signed;

const FORMAT: &str = "cbfs-keyset";
const DOMAIN_V1: &str = "cbfs-keyset/v1";
const DOMAIN_V2: &str = "cbfs-keyset/v2";
const HANDOVER_DOMAIN: &str = "cbfs-admin-handover/v1";
const KIND: &str = "keyset";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyV1 {
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopeV2 {
    /// The current key version.
    version: u32,
    /// Its public key.
    key: String,
    /// Earlier versions, retired: lockboxes may still be sealed under them
    /// (until `rotate-scope` re-seals them), nodes refuse to re-encrypt for them.
    #[serde(default)]
    retired: Vec<RetiredScopeKey>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetiredScopeKey {
    version: u32,
    key: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetiredWriterV2 {
    key: String,
    /// When it was retired (RFC 3339).
    retired: String,
    /// The last snapshot sequence it may have signed: its manifests up to
    /// this one stay valid, later ones are refused.
    last_sequence: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HandoverV2 {
    /// The key that handed over.
    from: String,
    from_key_version: u32,
    /// The key it handed over to.
    to: String,
    to_key_version: u32,
    /// The serial of the first keyset signed by `to`.
    serial: u64,
    /// `from`'s signature (DER hex) over the statement.
    signature: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyV2 {
    format: String,
    version: u32,
    fs: FsName,
    serial: u64,
    updated: String,
    admin_verifying_key: String,
    admin_key_version: u32,
    scopes: BTreeMap<ScopeLabel, ScopeV2>,
    #[serde(default)]
    writers: BTreeMap<UserName, String>,
    #[serde(default)]
    retired_writers: BTreeMap<UserName, RetiredWriterV2>,
    #[serde(default)]
    handovers: Vec<HandoverV2>,
}

/// The statement an old administrator key signs to hand over.
#[derive(Serialize)]
struct HandoverStatement<'a> {
    fs: &'a FsName,
    from: &'a str,
    from_key_version: u32,
    to: &'a str,
    to_key_version: u32,
    serial: u64,
}

/// The keys of one scope: the current version and the retired ones.
#[derive(Clone, Debug, PartialEq)]
struct ScopeKeys {
    current: u32,
    keys: BTreeMap<u32, PublicKey>,
}

/// A writer key that was retired.
#[derive(Clone, Debug, PartialEq)]
pub struct RetiredWriter {
    /// Its verifying key.
    pub key: PublicKey,
    /// When it was retired (RFC 3339).
    pub retired: String,
    /// The last snapshot sequence whose manifest it may have signed.
    pub last_sequence: u64,
}

/// One hand-over of the administrator's signing key, proven by the old
/// key's signature.
#[derive(Clone, Debug, PartialEq)]
pub struct Handover {
    /// The key that handed over.
    pub from: PublicKey,
    /// Its derivation version.
    pub from_key_version: u32,
    /// The key it handed over to.
    pub to: PublicKey,
    /// Its derivation version.
    pub to_key_version: u32,
    /// The serial of the first keyset the new key signed.
    pub serial: u64,
    signature: Signature,
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
    admin_key_version: u32,
    scopes: BTreeMap<ScopeLabel, ScopeKeys>,
    /// The current key of every scope (what the write path seals to).
    current: BTreeMap<ScopeLabel, PublicKey>,
    writers: BTreeMap<UserName, PublicKey>,
    retired_writers: BTreeMap<UserName, RetiredWriter>,
    handovers: Vec<Handover>,
}

fn handover_message(statement: &HandoverStatement<'_>) -> Vec<u8> {
    let mut msg = HANDOVER_DOMAIN.as_bytes().to_vec();
    msg.push(0);
    msg.extend_from_slice(&serde_json::to_vec(statement).expect("statements serialize"));
    msg
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
            admin_key_version: admin.sign_version(),
            scopes: BTreeMap::new(),
            current: BTreeMap::new(),
            writers: BTreeMap::new(),
            retired_writers: BTreeMap::new(),
            handovers: Vec::new(),
        };
        let default = ScopeLabel::default_scope();
        keyset.insert_scope(&default, 1, admin.scope(&default).public_key());
        keyset
    }

    fn insert_scope(&mut self, label: &ScopeLabel, version: u32, key: PublicKey) {
        let entry = self.scopes.entry(label.clone()).or_insert(ScopeKeys {
            current: version,
            keys: BTreeMap::new(),
        });
        entry.current = version;
        entry.keys.insert(version, key);
        self.current.insert(label.clone(), key);
    }

    /// Parses and verifies a keyset. `location` names it in errors.
    pub fn from_bytes(bytes: &[u8], location: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::doc(KIND, location, format!("not valid JSON: {e}")))?;
        let version = value.get("version").and_then(serde_json::Value::as_u64);
        let key = |what: &str, hex: &str| {
            public_key_from_hex(hex).map_err(|e| Error::doc(KIND, location, format!("{what}: {e}")))
        };
        let check_format = |format: &str| {
            if format == FORMAT {
                Ok(())
            } else {
                Err(Error::doc(
                    KIND,
                    location,
                    format!("format is `{format}`, not `{FORMAT}`"),
                ))
            }
        };
        let mut keyset = match version {
            Some(1) => {
                let (body, signature): (BodyV1, _) = signed::parse(KIND, location, bytes)?;
                check_format(&body.format)?;
                let admin = key("admin_verifying_key", &body.admin_verifying_key)?;
                signed::verify(KIND, location, DOMAIN_V1, &body, &signature, &admin)?;
                let mut ks = Keyset {
                    raw: bytes.to_vec(),
                    fs: body.fs,
                    serial: body.serial,
                    updated: body.updated,
                    admin,
                    admin_key_version: 1,
                    scopes: BTreeMap::new(),
                    current: BTreeMap::new(),
                    writers: BTreeMap::new(),
                    retired_writers: BTreeMap::new(),
                    handovers: Vec::new(),
                };
                for (label, hex) in &body.scopes {
                    ks.insert_scope(label, 1, key(&format!("scope {label}"), hex)?);
                }
                for (name, hex) in &body.writers {
                    ks.writers
                        .insert(name.clone(), key(&format!("writer {name}"), hex)?);
                }
                ks
            }
            Some(2) => {
                let (body, signature): (BodyV2, _) = signed::parse(KIND, location, bytes)?;
                check_format(&body.format)?;
                let admin = key("admin_verifying_key", &body.admin_verifying_key)?;
                signed::verify(KIND, location, DOMAIN_V2, &body, &signature, &admin)?;
                Self::from_v2(body, admin, bytes, location)?
            }
            other => {
                return Err(Error::doc(
                    KIND,
                    location,
                    format!(
                        "version {} is not supported (this build reads versions 1 and 2)",
                        other.map_or("?".into(), |v| v.to_string())
                    ),
                ));
            }
        };
        if !keyset.scopes.contains_key(&ScopeLabel::default_scope()) {
            return Err(Error::doc(KIND, location, "it has no `default` scope"));
        }
        keyset.raw = bytes.to_vec();
        Ok(keyset)
    }

    fn from_v2(body: BodyV2, admin: PublicKey, bytes: &[u8], location: &str) -> Result<Self> {
        let key = |what: &str, hex: &str| {
            public_key_from_hex(hex).map_err(|e| Error::doc(KIND, location, format!("{what}: {e}")))
        };
        let bad = |reason: String| Error::doc(KIND, location, reason);
        let mut ks = Keyset {
            raw: bytes.to_vec(),
            fs: body.fs.clone(),
            serial: body.serial,
            updated: body.updated.clone(),
            admin,
            admin_key_version: body.admin_key_version.max(1),
            scopes: BTreeMap::new(),
            current: BTreeMap::new(),
            writers: BTreeMap::new(),
            retired_writers: BTreeMap::new(),
            handovers: Vec::new(),
        };
        for (label, scope) in &body.scopes {
            let mut keys = BTreeMap::new();
            for r in &scope.retired {
                if r.version == 0 || r.version >= scope.version || keys.contains_key(&r.version) {
                    return Err(bad(format!(
                        "scope {label}: retired key version {} is not below the current {} (or repeated)",
                        r.version, scope.version
                    )));
                }
                keys.insert(
                    r.version,
                    key(&format!("scope {label} version {}", r.version), &r.key)?,
                );
            }
            if scope.version == 0 {
                return Err(bad(format!("scope {label}: key version 0")));
            }
            let current = key(&format!("scope {label}"), &scope.key)?;
            keys.insert(scope.version, current);
            ks.scopes.insert(
                label.clone(),
                ScopeKeys {
                    current: scope.version,
                    keys,
                },
            );
            ks.current.insert(label.clone(), current);
        }
        for (name, hex) in &body.writers {
            ks.writers
                .insert(name.clone(), key(&format!("writer {name}"), hex)?);
        }
        for (name, r) in &body.retired_writers {
            signed::parse_time(&r.retired).map_err(bad)?;
            ks.retired_writers.insert(
                name.clone(),
                RetiredWriter {
                    key: key(&format!("retired writer {name}"), &r.key)?,
                    retired: r.retired.clone(),
                    last_sequence: r.last_sequence,
                },
            );
        }
        // The hand-overs chain from the first administrator key to the
        // current one; each is signed by the key that handed over.
        let mut previous_serial = 0;
        for (i, h) in body.handovers.iter().enumerate() {
            let from = key("hand-over key", &h.from)?;
            let to = key("hand-over key", &h.to)?;
            let sig_bytes = hex::decode(&h.signature)
                .map_err(|_| bad("a hand-over signature is not hex".into()))?;
            let signature = Signature::try_from_der_bytes(&sig_bytes)
                .map_err(|e| bad(format!("a hand-over signature is malformed: {e}")))?;
            let statement = HandoverStatement {
                fs: &body.fs,
                from: &h.from,
                from_key_version: h.from_key_version,
                to: &h.to,
                to_key_version: h.to_key_version,
                serial: h.serial,
            };
            if !signature.verify(&from, &handover_message(&statement)) {
                return Err(bad(format!(
                    "the hand-over from administrator key {} does not verify: altered, or not made by that key",
                    fingerprint(&from)
                )));
            }
            if let Some(prev) = ks.handovers.last()
                && prev.to != from
            {
                return Err(bad(format!(
                    "hand-over {} does not start from the key the one before handed over to",
                    i + 1
                )));
            }
            if h.serial <= previous_serial || h.serial > body.serial {
                return Err(bad(format!(
                    "hand-over {} is at serial {}, out of order",
                    i + 1,
                    h.serial
                )));
            }
            previous_serial = h.serial;
            ks.handovers.push(Handover {
                from,
                from_key_version: h.from_key_version,
                to,
                to_key_version: h.to_key_version,
                serial: h.serial,
                signature,
            });
        }
        if let Some(last) = ks.handovers.last()
            && (last.to != admin || last.to_key_version != ks.admin_key_version)
        {
            return Err(bad(
                "the last hand-over is not to the key that signed this keyset".into(),
            ));
        }
        Ok(ks)
    }

    /// Reads and verifies a keyset file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read keyset", path, e))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Whether this keyset needs version 2 to say what it holds.
    fn needs_v2(&self) -> bool {
        self.admin_key_version != 1
            || !self.handovers.is_empty()
            || !self.retired_writers.is_empty()
            || self
                .scopes
                .values()
                .any(|s| s.current != 1 || s.keys.len() > 1)
    }

    /// Signs the keyset with the administrator's key and serializes it.
    ///
    /// Fails if `admin` is not the key this keyset belongs to.
    #[cfg(feature = "secrets")]
    pub fn to_signed_bytes(&self, admin: &AdminSecret) -> Result<Vec<u8>> {
        self.check_admin(admin)?;
        let writers = self
            .writers
            .iter()
            .map(|(n, k)| (n.clone(), public_key_hex(k)))
            .collect();
        if !self.needs_v2() {
            let body = BodyV1 {
                format: FORMAT.into(),
                version: 1,
                fs: self.fs.clone(),
                serial: self.serial,
                updated: self.updated.clone(),
                admin_verifying_key: public_key_hex(&self.admin),
                scopes: self
                    .current
                    .iter()
                    .map(|(l, k)| (l.clone(), public_key_hex(k)))
                    .collect(),
                writers,
            };
            return Ok(signed::sign(DOMAIN_V1, &body, &admin.signer()));
        }
        let body = BodyV2 {
            format: FORMAT.into(),
            version: 2,
            fs: self.fs.clone(),
            serial: self.serial,
            updated: self.updated.clone(),
            admin_verifying_key: public_key_hex(&self.admin),
            admin_key_version: self.admin_key_version,
            scopes: self
                .scopes
                .iter()
                .map(|(l, s)| {
                    (
                        l.clone(),
                        ScopeV2 {
                            version: s.current,
                            key: public_key_hex(&s.keys[&s.current]),
                            retired: s
                                .keys
                                .iter()
                                .filter(|(v, _)| **v != s.current)
                                .map(|(v, k)| RetiredScopeKey {
                                    version: *v,
                                    key: public_key_hex(k),
                                })
                                .collect(),
                        },
                    )
                })
                .collect(),
            writers,
            retired_writers: self
                .retired_writers
                .iter()
                .map(|(n, r)| {
                    (
                        n.clone(),
                        RetiredWriterV2 {
                            key: public_key_hex(&r.key),
                            retired: r.retired.clone(),
                            last_sequence: r.last_sequence,
                        },
                    )
                })
                .collect(),
            handovers: self
                .handovers
                .iter()
                .map(|h| HandoverV2 {
                    from: public_key_hex(&h.from),
                    from_key_version: h.from_key_version,
                    to: public_key_hex(&h.to),
                    to_key_version: h.to_key_version,
                    serial: h.serial,
                    signature: hex::encode(h.signature.to_der_bytes()),
                })
                .collect(),
        };
        Ok(signed::sign(DOMAIN_V2, &body, &admin.signer()))
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

    #[cfg(feature = "secrets")]
    /// The root secret in `admin`, set to sign with the version of the
    /// administrator's key this keyset names; fails unless it is this
    /// keyset's administrator.
    pub fn admin_secret(&self, admin: AdminSecret) -> Result<AdminSecret> {
        let admin = admin.with_sign_version(self.admin_key_version);
        self.check_admin(&admin)?;
        Ok(admin)
    }

    /// Adds a scope derived from `admin`. Returns false if it already existed.
    #[cfg(feature = "secrets")]
    pub fn add_scope(&mut self, admin: &AdminSecret, label: &ScopeLabel) -> Result<bool> {
        self.check_admin(admin)?;
        if self.scopes.contains_key(label) {
            return Ok(false);
        }
        self.insert_scope(label, 1, admin.scope(label).public_key());
        self.bump();
        Ok(true)
    }

    #[cfg(feature = "secrets")]
    /// Makes the next key version of a scope current and retires the one
    /// before. Returns the new version.
    pub fn rotate_scope(&mut self, admin: &AdminSecret, label: &ScopeLabel) -> Result<u32> {
        self.check_admin(admin)?;
        let Some(keys) = self.scopes.get(label) else {
            return Err(Error::Usage(format!(
                "scope `{label}` is not in keyset `{}`",
                self.fs
            )));
        };
        let next = keys
            .keys
            .keys()
            .max()
            .copied()
            .unwrap_or(1)
            .checked_add(1)
            .ok_or_else(|| Error::Usage(format!("scope `{label}` has no next key version")))?;
        self.insert_scope(label, next, admin.scope_at(label, next).public_key());
        self.bump();
        Ok(next)
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
        if self.retired_writers.values().any(|r| r.key == key) {
            return Err(Error::Usage(format!(
                "writer key {} was retired; register a new key",
                fingerprint(&key)
            )));
        }
        self.writers.insert(name.clone(), key);
        self.bump();
        Ok(true)
    }

    #[cfg(feature = "secrets")]
    /// Retires writer `old` (its manifests up to `last_sequence` stay
    /// valid) and registers `new_key` as `new_name`.
    pub fn rotate_writer(
        &mut self,
        admin: &AdminSecret,
        old: &UserName,
        new_name: &UserName,
        new_key: PublicKey,
        last_sequence: u64,
    ) -> Result<()> {
        self.check_admin(admin)?;
        let Some(old_key) = self.writers.get(old).copied() else {
            return Err(Error::Usage(format!(
                "writer `{old}` is not registered in keyset `{}`",
                self.fs
            )));
        };
        if old_key == new_key {
            return Err(Error::Usage(
                "the new writer key is the one being retired".into(),
            ));
        }
        if self.retired_writers.values().any(|r| r.key == new_key)
            || self
                .writers
                .iter()
                .any(|(n, k)| *k == new_key && n != new_name && n != old)
        {
            return Err(Error::Usage(format!(
                "writer key {} is already registered or retired",
                fingerprint(&new_key)
            )));
        }
        if new_name != old && self.writers.contains_key(new_name) {
            return Err(Error::Usage(format!(
                "writer `{new_name}` is already registered"
            )));
        }
        let mut retired_name = old.clone();
        if self.retired_writers.contains_key(&retired_name) {
            let mut i = 2;
            loop {
                let n = UserName::new(format!(
                    "{}.{i}",
                    old.as_str().chars().take(58).collect::<String>()
                ))?;
                if !self.retired_writers.contains_key(&n) {
                    retired_name = n;
                    break;
                }
                i += 1;
            }
        }
        self.writers.remove(old);
        self.retired_writers.insert(
            retired_name,
            RetiredWriter {
                key: old_key,
                retired: signed::now_rfc3339(),
                last_sequence,
            },
        );
        self.writers.insert(new_name.clone(), new_key);
        self.bump();
        Ok(())
    }

    #[cfg(feature = "secrets")]
    /// Hands the administrator's signing over to the next version of the
    /// key: `old` (this keyset's administrator) signs a statement naming the
    /// new key, which every later keyset carries. Returns the root secret
    /// set to sign with the new version; sign this keyset with it.
    pub fn rotate_admin(&mut self, old: AdminSecret) -> Result<AdminSecret> {
        self.check_admin(&old)?;
        let from_version = old.sign_version();
        let to_version = from_version
            .checked_add(1)
            .ok_or_else(|| Error::Usage("no next administrator key version".into()))?;
        let from = old.verifying_key();
        let to = old.verifying_key_at(to_version);
        self.bump();
        let from_hex = public_key_hex(&from);
        let to_hex = public_key_hex(&to);
        let statement = HandoverStatement {
            fs: &self.fs,
            from: &from_hex,
            from_key_version: from_version,
            to: &to_hex,
            to_key_version: to_version,
            serial: self.serial,
        };
        let signature = old.signer().sign(&handover_message(&statement));
        self.handovers.push(Handover {
            from,
            from_key_version: from_version,
            to,
            to_key_version: to_version,
            serial: self.serial,
            signature,
        });
        self.admin = to;
        self.admin_key_version = to_version;
        Ok(old.with_sign_version(to_version))
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

    /// The derivation version of the administrator's key (1 until the
    /// first `rotate-admin`).
    pub fn admin_key_version(&self) -> u32 {
        self.admin_key_version
    }

    /// The hand-overs of the administrator's key, oldest first.
    pub fn handovers(&self) -> &[Handover] {
        &self.handovers
    }

    /// Whether a reader that pinned `key` may trust this keyset: `key` is
    /// its administrator, or an earlier administrator key that handed over
    /// (step by step) to it.
    pub fn chains_from(&self, key: &PublicKey) -> bool {
        *key == self.admin || self.handovers.iter().any(|h| h.from == *key)
    }

    /// The serial from which `key` no longer signs keysets, if this keyset
    /// shows it handed over: anything it signed alone at or after that
    /// serial is to be refused.
    pub fn handed_over_at(&self, key: &PublicKey) -> Option<u64> {
        self.handovers
            .iter()
            .find(|h| h.from == *key)
            .map(|h| h.serial)
    }

    /// Every administrator key this keyset chains from, current last.
    pub fn admin_history(&self) -> Vec<PublicKey> {
        let mut keys: Vec<PublicKey> = self.handovers.iter().map(|h| h.from).collect();
        keys.push(self.admin);
        keys
    }

    /// Current public key of a scope: what new lockboxes are sealed under.
    pub fn scope(&self, label: &ScopeLabel) -> Option<&PublicKey> {
        self.current.get(label)
    }

    /// The current key version of a scope.
    pub fn scope_version(&self, label: &ScopeLabel) -> Option<u32> {
        self.scopes.get(label).map(|s| s.current)
    }

    /// The public key of version `version` of a scope, current or retired.
    pub fn scope_key(&self, label: &ScopeLabel, version: u32) -> Option<&PublicKey> {
        self.scopes.get(label).and_then(|s| s.keys.get(&version))
    }

    /// Every key version of a scope, oldest first, with its key.
    pub fn scope_versions(&self, label: &ScopeLabel) -> Vec<(u32, PublicKey)> {
        self.scopes
            .get(label)
            .map(|s| s.keys.iter().map(|(v, k)| (*v, *k)).collect())
            .unwrap_or_default()
    }

    /// Whether version `version` of a scope is retired (an older version
    /// than the current one).
    pub fn is_retired(&self, label: &ScopeLabel, version: u32) -> bool {
        self.scopes.get(label).is_some_and(|s| version < s.current)
    }

    /// The (scope, version) a scope public key belongs to, current or retired.
    pub fn find_scope_key(&self, key: &PublicKey) -> Option<(ScopeLabel, u32)> {
        self.scopes.iter().find_map(|(l, s)| {
            s.keys
                .iter()
                .find(|(_, k)| *k == key)
                .map(|(v, _)| (l.clone(), *v))
        })
    }

    /// All scopes, by label, with their current keys.
    pub fn scopes(&self) -> &BTreeMap<ScopeLabel, PublicKey> {
        &self.current
    }

    /// All registered writers, by name.
    pub fn writers(&self) -> &BTreeMap<UserName, PublicKey> {
        &self.writers
    }

    /// Retired writers, by name.
    pub fn retired_writers(&self) -> &BTreeMap<UserName, RetiredWriter> {
        &self.retired_writers
    }
}

impl PartialEq for Keyset {
    fn eq(&self, other: &Self) -> bool {
        self.fs == other.fs
            && self.serial == other.serial
            && self.updated == other.updated
            && self.admin == other.admin
            && self.admin_key_version == other.admin_key_version
            && self.scopes == other.scopes
            && self.writers == other.writers
            && self.retired_writers == other.retired_writers
            && self.handovers == other.handovers
    }
}

#[cfg(all(test, feature = "secrets"))]
mod tests {
    use super::*;
    use crate::keys::Seed;

    fn setup() -> (AdminSecret, Keyset) {
        let admin = AdminSecret::generate();
        let ks = Keyset::new(FsName::new("fs1").unwrap(), &admin);
        (admin, ks)
    }

    fn copy(admin: &AdminSecret) -> AdminSecret {
        AdminSecret::from_seed(Seed::from_slice(admin.seed().expose_secret_bytes(), "t").unwrap())
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
        assert!(String::from_utf8_lossy(&bytes).contains("\"version\": 1"));
        let back = Keyset::from_bytes(&bytes, "t").unwrap();
        assert_eq!(back, ks);
        assert_eq!(back.serial(), 1);
        assert_eq!(
            back.scope(&ScopeLabel::new("alice").unwrap()),
            Some(&admin.scope(&ScopeLabel::new("alice").unwrap()).public_key())
        );
        assert_eq!(
            back.scope_version(&ScopeLabel::new("alice").unwrap()),
            Some(1)
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

    #[test]
    fn rotated_scopes_keep_their_retired_keys_in_version_2() {
        let (admin, mut ks) = setup();
        let alice = ScopeLabel::new("alice").unwrap();
        ks.add_scope(&admin, &alice).unwrap();
        assert_eq!(ks.rotate_scope(&admin, &alice).unwrap(), 2);
        assert_eq!(ks.rotate_scope(&admin, &alice).unwrap(), 3);
        let bytes = ks.to_signed_bytes(&admin).unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains("\"version\": 2"));
        let back = Keyset::from_bytes(&bytes, "t").unwrap();
        assert_eq!(back, ks);
        assert_eq!(back.scope_version(&alice), Some(3));
        assert_eq!(
            back.scope(&alice),
            Some(&admin.scope_at(&alice, 3).public_key())
        );
        assert_eq!(
            back.scope_key(&alice, 1),
            Some(&admin.scope(&alice).public_key())
        );
        assert!(back.is_retired(&alice, 2) && !back.is_retired(&alice, 3));
        assert_eq!(
            back.find_scope_key(&admin.scope_at(&alice, 2).public_key()),
            Some((alice.clone(), 2))
        );
        assert_eq!(back.scope_versions(&alice).len(), 3);
    }

    #[test]
    fn the_admin_hands_over_and_the_chain_verifies() {
        let (admin, mut ks) = setup();
        let first = admin.verifying_key();
        let new_admin = ks.rotate_admin(copy(&admin)).unwrap();
        assert_eq!(new_admin.sign_version(), 2);
        // The old key alone can no longer sign it.
        assert!(ks.to_signed_bytes(&admin).is_err());
        let bytes = ks.to_signed_bytes(&new_admin).unwrap();
        let back = Keyset::from_bytes(&bytes, "t").unwrap();
        assert_eq!(back.admin_verifying_key(), &admin.verifying_key_at(2));
        assert_eq!(back.admin_key_version(), 2);
        assert!(back.chains_from(&first));
        assert_eq!(back.handed_over_at(&first), Some(1));
        assert!(!back.chains_from(&AdminSecret::generate().verifying_key()));
        // A second hand-over keeps the first in the chain.
        let mut later = back.clone();
        let third = later.rotate_admin(new_admin).unwrap();
        let back = Keyset::from_bytes(&later.to_signed_bytes(&third).unwrap(), "t").unwrap();
        assert!(back.chains_from(&first) && back.chains_from(&admin.verifying_key_at(2)));
        assert_eq!(back.admin_history().len(), 3);
        // The root derives whatever version the keyset names.
        assert!(back.admin_secret(copy(&admin)).is_ok());

        // A forged hand-over (another key claiming to succeed the first)
        // does not verify.
        let text = String::from_utf8(bytes).unwrap();
        let forger = AdminSecret::generate();
        let forged = text.replace(
            &public_key_hex(&admin.verifying_key_at(2)),
            &public_key_hex(&forger.verifying_key()),
        );
        assert!(Keyset::from_bytes(forged.as_bytes(), "t").is_err());
    }

    #[test]
    fn writers_retire_with_their_last_sequence() {
        let (admin, mut ks) = setup();
        let old = crate::UserSecret::generate();
        let new = crate::UserSecret::generate();
        let agent = UserName::new("agent").unwrap();
        ks.add_writer(&admin, &agent, old.verifying_key()).unwrap();
        ks.rotate_writer(&admin, &agent, &agent, new.verifying_key(), 12)
            .unwrap();
        let back = Keyset::from_bytes(&ks.to_signed_bytes(&admin).unwrap(), "t").unwrap();
        assert_eq!(back.writers()[&agent], new.verifying_key());
        let r = &back.retired_writers()[&agent];
        assert_eq!((r.key, r.last_sequence), (old.verifying_key(), 12));
        assert!(
            ks.add_writer(&admin, &UserName::new("x").unwrap(), old.verifying_key())
                .is_err()
        );
    }
}
