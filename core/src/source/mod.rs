//! Key sources: where a secret seed lives, written the same way by every tool.
//!
//! - `file:PATH`: the file holds the 32-byte key and nothing else, or an age
//!   file wrapping it (passphrase or x25519 recipients). Created 0600; a file
//!   that group or others can read is refused, as ssh does.
//! - `keyring:SERVICE/NAME`: the OS keyring through `keyring-core`: the
//!   freedesktop Secret Service where a session bus has one running (with the
//!   `secret-service` feature), else the Linux kernel keyutils, whose keys do
//!   not survive a reboot. `CBFS_KEYRING_STORE=keyutils|secret-service`
//!   picks one.
//! - `openbao:KEYNAME:PATH`: PATH holds the key wrapped by the OpenBao/Vault
//!   transit key KEYNAME; it is unwrapped in memory at each use. The address
//!   and token come from `BAO_ADDR`/`BAO_TOKEN` or `VAULT_ADDR`/`VAULT_TOKEN`.
//! - `awskms:KEY_ID:PATH`: PATH holds the key wrapped by the AWS KMS key
//!   KEY_ID (an id, an alias or an ARN); credentials, region and endpoint as
//!   the AWS CLI reads them.
//! - `pkcs11:token=...;object=...?x-wrapped=PATH&...`: an RFC 7512 URI; PATH
//!   holds the key wrapped (AES-GCM) by an AES key that never leaves the
//!   token. The PIN comes from a 0600 file or the environment, never from
//!   the command line.

#[cfg(feature = "kms")]
mod awskms;
mod file;
#[cfg(target_os = "linux")]
mod keyring;
#[cfg(feature = "kms")]
mod openbao;
#[cfg(feature = "pkcs11")]
mod pkcs11;
mod pkcs11_uri;

pub use pkcs11_uri::{PinSource, Pkcs11Uri};

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use secrecy::SecretString;

use crate::error::{Error, Result};
use crate::keys::Seed;

/// Where a secret lives.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySource {
    /// A key file.
    File(PathBuf),
    /// An entry in the OS keyring.
    Keyring {
        /// The keyring service (for example `cbfs`).
        service: String,
        /// The entry's name within the service.
        name: String,
    },
    /// A key file wrapped by an OpenBao/Vault transit key.
    OpenBao {
        /// The transit key's name.
        key: String,
        /// The file that holds the wrapped key.
        path: PathBuf,
    },
    /// A key file wrapped by an AWS KMS key.
    AwsKms {
        /// The KMS key: an id, an alias (`alias/NAME`) or an ARN.
        key: String,
        /// The file that holds the wrapped key.
        path: PathBuf,
    },
    /// A key file wrapped by an AES key in a PKCS#11 token.
    Pkcs11(Box<Pkcs11Uri>),
}

impl FromStr for KeySource {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let bad = |reason: &str| Error::BadSource {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let Some((kind, rest)) = spec.split_once(':') else {
            return Err(bad("it has no kind; for a key file write file:PATH"));
        };
        match kind {
            "file" => {
                if rest.is_empty() {
                    return Err(bad("the path is empty"));
                }
                Ok(KeySource::File(PathBuf::from(rest)))
            }
            "keyring" => {
                let (service, name) = rest
                    .split_once('/')
                    .ok_or_else(|| bad("write keyring:SERVICE/NAME"))?;
                let ok = |s: &str| {
                    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control())
                };
                if !ok(service) || !ok(name) {
                    return Err(bad(
                        "the service and the name must be non-empty, without spaces",
                    ));
                }
                Ok(KeySource::Keyring {
                    service: service.to_owned(),
                    name: name.to_owned(),
                })
            }
            "openbao" | "vault" => {
                let (key, path) = rest
                    .split_once(':')
                    .ok_or_else(|| bad("write openbao:KEYNAME:PATH"))?;
                let key_ok = !key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                if !key_ok {
                    return Err(bad(
                        "the transit key name must be letters, digits, '-', '_' or '.'",
                    ));
                }
                if path.is_empty() {
                    return Err(bad("the path of the wrapped key is empty"));
                }
                Ok(KeySource::OpenBao {
                    key: key.to_owned(),
                    path: PathBuf::from(path),
                })
            }
            "awskms" => {
                let (key, path) =
                    awskms_split(rest).ok_or_else(|| bad("write awskms:KEY_ID:PATH"))?;
                let key_ok = !key.is_empty()
                    && key.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/' | b':')
                    });
                if !key_ok {
                    return Err(bad("the KMS key must be a key id, alias/NAME or an ARN"));
                }
                if path.is_empty() {
                    return Err(bad("the path of the wrapped key is empty"));
                }
                Ok(KeySource::AwsKms {
                    key: key.to_owned(),
                    path: PathBuf::from(path),
                })
            }
            "pkcs11" => Pkcs11Uri::parse(rest)
                .map(|u| KeySource::Pkcs11(Box::new(u)))
                .map_err(|e| bad(&e)),
            _ => Err(bad("unknown kind")),
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "file:{}", p.display()),
            KeySource::Keyring { service, name } => write!(f, "keyring:{service}/{name}"),
            KeySource::OpenBao { key, path } => write!(f, "openbao:{key}:{}", path.display()),
            KeySource::AwsKms { key, path } => write!(f, "awskms:{key}:{}", path.display()),
            KeySource::Pkcs11(uri) => write!(f, "{uri}"),
        }
    }
}

/// How a protected key may be unlocked when it is loaded.
#[derive(Clone, Debug, Default)]
pub struct Unlock {
    /// An age identity file for x25519-wrapped key files.
    pub age_identity: Option<PathBuf>,
    /// A file holding the passphrase of passphrase-wrapped key files (0600).
    pub passphrase_file: Option<PathBuf>,
    /// Whether to ask for a passphrase on the terminal.
    pub allow_prompt: bool,
}

impl Unlock {
    /// From `CBFS_AGE_IDENTITY` and `CBFS_PASSPHRASE_FILE` (paths, never
    /// secrets), prompting on the terminal if stdin is one.
    pub fn from_env() -> Self {
        use std::io::IsTerminal;
        Unlock {
            age_identity: std::env::var_os("CBFS_AGE_IDENTITY").map(PathBuf::from),
            passphrase_file: std::env::var_os("CBFS_PASSPHRASE_FILE").map(PathBuf::from),
            allow_prompt: std::io::stdin().is_terminal(),
        }
    }
}

/// How a new key file is protected at rest.
#[derive(Default)]
pub enum Protection {
    /// The raw key, in a 0600 file.
    #[default]
    None,
    /// Wrapped with age under a passphrase (scrypt).
    Passphrase(SecretString),
    /// Wrapped with age for these x25519 recipients (`age1...`).
    Recipients(Vec<String>),
}

impl fmt::Debug for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protection::None => f.write_str("None"),
            Protection::Passphrase(_) => f.write_str("Passphrase([redacted])"),
            Protection::Recipients(r) => f.debug_tuple("Recipients").field(r).finish(),
        }
    }
}

/// What a rewrap did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewrapped {
    /// What wrapped the secret before (a key version, a key, a protection).
    pub from: String,
    /// What wraps it now.
    pub to: String,
    /// The key version it was wrapped with before, where the service has versions.
    pub from_version: Option<u32>,
    /// The key version it is wrapped with now.
    pub to_version: Option<u32>,
}

/// Where a rewrap moves a secret to.
#[derive(Default)]
pub struct RewrapTo {
    /// Another key of the same service (a transit key name, a KMS key, a
    /// token's key object); `None`: the same key (its newest version).
    pub key: Option<String>,
    /// For `file:` sources: the new protection (passphrase or recipients).
    pub protection: Option<Protection>,
}

impl KeySource {
    /// Loads the seed.
    pub fn load(&self, unlock: &Unlock) -> Result<Seed> {
        let seed = match self {
            KeySource::File(path) => file::load(path, unlock),
            KeySource::Keyring { service, name } => keyring_load(service, name),
            KeySource::OpenBao { key, path } => kms_load(key, path),
            KeySource::AwsKms { key, path } => awskms_load(key, path),
            KeySource::Pkcs11(uri) => pkcs11_load(uri),
        }?;
        tracing::debug!(source = %self, "loaded key");
        Ok(seed)
    }

    /// Stores a new seed. Refuses to overwrite an existing key.
    ///
    /// `protection` applies to `file:` sources; the keyring and the KMS
    /// protect the key themselves.
    pub fn store_new(&self, seed: &Seed, protection: &Protection) -> Result<()> {
        if !matches!(protection, Protection::None) && !matches!(self, KeySource::File(_)) {
            return Err(Error::BadSource {
                spec: self.to_string(),
                reason: "age protection applies to file: sources only".into(),
            });
        }
        match self {
            KeySource::File(path) => file::store_new(path, seed, protection),
            KeySource::Keyring { service, name } => keyring_store(service, name, seed),
            KeySource::OpenBao { key, path } => kms_store(key, path, seed),
            KeySource::AwsKms { key, path } => awskms_store(key, path, seed),
            KeySource::Pkcs11(uri) => pkcs11_store(uri, seed),
        }?;
        tracing::debug!(source = %self, "stored new key");
        Ok(())
    }

    /// Wraps the secret again, in place, without changing it: under the
    /// newest version of its transit key (OpenBao), the current material or
    /// another key (AWS KMS, `to.key`), another key object of the token
    /// (PKCS#11, `to.key`), or a new age protection (`file:`,
    /// `to.protection`). Returns what it did and the source that names the
    /// secret from now on (it changes when the key does).
    pub fn rewrap(&self, unlock: &Unlock, to: RewrapTo) -> Result<(Rewrapped, KeySource)> {
        let bad = |reason: &str| Error::BadSource {
            spec: self.to_string(),
            reason: reason.to_owned(),
        };
        if to.protection.is_some() && !matches!(self, KeySource::File(_)) {
            return Err(bad("a new age protection applies to file: sources only"));
        }
        let out = match self {
            KeySource::OpenBao { key, path } => {
                if to.key.is_some() {
                    return Err(bad(
                        "OpenBao rewraps under the newest version of the same transit key; to move to another key, use cbfs-keytool copy",
                    ));
                }
                (kms_rewrap(key, path)?, self.clone())
            }
            KeySource::AwsKms { key, path } => {
                let r = awskms_rewrap(key, path, to.key.as_deref())?;
                let next = KeySource::AwsKms {
                    key: to.key.unwrap_or_else(|| key.clone()),
                    path: path.clone(),
                };
                (r, next)
            }
            KeySource::Pkcs11(uri) => {
                let r = pkcs11_rewrap(uri, to.key.as_deref())?;
                let next = match &to.key {
                    Some(object) => KeySource::Pkcs11(Box::new(uri.with_object(object))),
                    None => self.clone(),
                };
                (r, next)
            }
            KeySource::File(path) => {
                let protection = to.protection.ok_or_else(|| {
                    bad("give the new protection (--protect passphrase, or --protect age --recipient age1...)")
                })?;
                if to.key.is_some() {
                    return Err(bad("a key file has no service key to move to"));
                }
                (file::rewrap(path, unlock, &protection)?, self.clone())
            }
            KeySource::Keyring { .. } => {
                return Err(bad(
                    "the keyring protects its keys itself; there is nothing to rewrap",
                ));
            }
        };
        tracing::debug!(source = %self, "rewrapped key");
        Ok(out)
    }

    /// A warning about how long the key lives there, if the user should hear one.
    ///
    /// For `keyring:` sources this depends on the store the process uses
    /// (and chooses it if nothing has yet): only kernel keyring keys are lost
    /// at a reboot; the Secret Service keeps its keys on disk.
    pub fn durability_note(&self) -> Option<&'static str> {
        match self {
            KeySource::Keyring { .. } if keyring_uses_keyutils() => Some(
                "keys in the Linux kernel keyring live in memory only: they do not survive a reboot, \
                 and the persistent keyring expires after 3 days unused. Keep a durable copy, \
                 for example: cbfs-keytool copy --from keyring:SERVICE/NAME --to file:PATH --protect passphrase",
            ),
            _ => None,
        }
    }
}

#[cfg(target_os = "linux")]
fn keyring_load(service: &str, name: &str) -> Result<Seed> {
    keyring::load(service, name)
}
#[cfg(target_os = "linux")]
fn keyring_store(service: &str, name: &str, seed: &Seed) -> Result<()> {
    keyring::store_new(service, name, seed)
}
#[cfg(target_os = "linux")]
fn keyring_uses_keyutils() -> bool {
    keyring::uses_keyutils()
}
#[cfg(not(target_os = "linux"))]
fn keyring_uses_keyutils() -> bool {
    false
}
#[cfg(not(target_os = "linux"))]
fn keyring_load(service: &str, name: &str) -> Result<Seed> {
    Err(Error::Keyring {
        location: format!("keyring:{service}/{name}"),
        reason: "this build supports the Linux kernel keyring only".into(),
    })
}
#[cfg(not(target_os = "linux"))]
fn keyring_store(service: &str, name: &str, _seed: &Seed) -> Result<()> {
    keyring_load(service, name).map(|_| ())
}

#[cfg(feature = "kms")]
fn kms_load(key: &str, path: &std::path::Path) -> Result<Seed> {
    openbao::load(key, path)
}
#[cfg(feature = "kms")]
fn kms_store(key: &str, path: &std::path::Path, seed: &Seed) -> Result<()> {
    openbao::store_new(key, path, seed)
}
#[cfg(feature = "kms")]
fn kms_rewrap(key: &str, path: &std::path::Path) -> Result<Rewrapped> {
    openbao::rewrap(key, path)
}
#[cfg(not(feature = "kms"))]
fn no_kms(key: &str, path: &std::path::Path) -> Error {
    Error::Kms {
        service: "OpenBao/Vault",
        op: "use",
        location: format!("openbao:{key}:{}", path.display()),
        reason: "this tool is built without network access; unwrap the key with cbfs-keytool copy --to file:PATH first".into(),
        transient: false,
    }
}
#[cfg(not(feature = "kms"))]
fn kms_load(key: &str, path: &std::path::Path) -> Result<Seed> {
    Err(no_kms(key, path))
}
#[cfg(not(feature = "kms"))]
fn kms_store(key: &str, path: &std::path::Path, _seed: &Seed) -> Result<()> {
    Err(no_kms(key, path))
}
#[cfg(not(feature = "kms"))]
fn kms_rewrap(key: &str, path: &std::path::Path) -> Result<Rewrapped> {
    Err(no_kms(key, path))
}

/// Splits `KEY_ID:PATH`, where KEY_ID may be an ARN (which has colons of
/// its own: `arn:PARTITION:kms:REGION:ACCOUNT:key/ID`).
fn awskms_split(rest: &str) -> Option<(&str, &str)> {
    if rest.starts_with("arn:") {
        let mut idx = 0;
        for _ in 0..6 {
            idx += rest[idx..].find(':')? + 1;
        }
        let (key, path) = rest.split_at(idx - 1);
        return Some((key, &path[1..]));
    }
    rest.split_once(':')
}
#[cfg(feature = "kms")]
fn awskms_load(key: &str, path: &std::path::Path) -> Result<Seed> {
    awskms::load(key, path)
}
#[cfg(feature = "kms")]
fn awskms_store(key: &str, path: &std::path::Path, seed: &Seed) -> Result<()> {
    awskms::store_new(key, path, seed)
}
#[cfg(feature = "kms")]
fn awskms_rewrap(key: &str, path: &std::path::Path, to: Option<&str>) -> Result<Rewrapped> {
    awskms::rewrap(key, path, to)
}
#[cfg(not(feature = "kms"))]
fn no_awskms(key: &str, path: &std::path::Path) -> Error {
    Error::Kms {
        service: "AWS KMS",
        op: "use",
        location: format!("awskms:{key}:{}", path.display()),
        reason: "this tool is built without network access; unwrap the key with cbfs-keytool copy --to file:PATH first".into(),
        transient: false,
    }
}
#[cfg(not(feature = "kms"))]
fn awskms_load(key: &str, path: &std::path::Path) -> Result<Seed> {
    Err(no_awskms(key, path))
}
#[cfg(not(feature = "kms"))]
fn awskms_store(key: &str, path: &std::path::Path, _seed: &Seed) -> Result<()> {
    Err(no_awskms(key, path))
}
#[cfg(not(feature = "kms"))]
fn awskms_rewrap(key: &str, path: &std::path::Path, _to: Option<&str>) -> Result<Rewrapped> {
    Err(no_awskms(key, path))
}

#[cfg(feature = "pkcs11")]
fn pkcs11_load(uri: &Pkcs11Uri) -> Result<Seed> {
    pkcs11::load(uri)
}
#[cfg(feature = "pkcs11")]
fn pkcs11_store(uri: &Pkcs11Uri, seed: &Seed) -> Result<()> {
    pkcs11::store_new(uri, seed)
}
#[cfg(feature = "pkcs11")]
fn pkcs11_rewrap(uri: &Pkcs11Uri, to: Option<&str>) -> Result<Rewrapped> {
    pkcs11::rewrap(uri, to)
}
#[cfg(not(feature = "pkcs11"))]
fn no_pkcs11(uri: &Pkcs11Uri) -> Error {
    Error::Kms {
        service: "PKCS#11",
        op: "use",
        location: uri.to_string(),
        reason: "this tool is built without PKCS#11 support; unwrap the key with cbfs-keytool copy --to file:PATH first".into(),
        transient: false,
    }
}
#[cfg(not(feature = "pkcs11"))]
fn pkcs11_load(uri: &Pkcs11Uri) -> Result<Seed> {
    Err(no_pkcs11(uri))
}
#[cfg(not(feature = "pkcs11"))]
fn pkcs11_store(uri: &Pkcs11Uri, _seed: &Seed) -> Result<()> {
    Err(no_pkcs11(uri))
}
#[cfg(not(feature = "pkcs11"))]
fn pkcs11_rewrap(uri: &Pkcs11Uri, _to: Option<&str>) -> Result<Rewrapped> {
    Err(no_pkcs11(uri))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        assert_eq!(
            "file:/k/admin.key".parse::<KeySource>().unwrap(),
            KeySource::File("/k/admin.key".into())
        );
        assert_eq!(
            "keyring:cbfs/fs1-admin".parse::<KeySource>().unwrap(),
            KeySource::Keyring {
                service: "cbfs".into(),
                name: "fs1-admin".into()
            }
        );
        assert_eq!(
            "openbao:cbfs-kek:/k/admin.wrapped"
                .parse::<KeySource>()
                .unwrap(),
            KeySource::OpenBao {
                key: "cbfs-kek".into(),
                path: "/k/admin.wrapped".into()
            }
        );
        assert_eq!(
            "awskms:arn:aws:kms:us-east-1:111122223333:key/1234abcd:/k/a.w"
                .parse::<KeySource>()
                .unwrap(),
            KeySource::AwsKms {
                key: "arn:aws:kms:us-east-1:111122223333:key/1234abcd".into(),
                path: "/k/a.w".into()
            }
        );
        for s in [
            "file:x",
            "keyring:a/b",
            "openbao:k:p",
            "awskms:alias/cbfs:k/a.w",
            "pkcs11:token=t;object=o?pin-source=file:/k/pin&x-wrapped=/k/a.w",
        ] {
            assert_eq!(s.parse::<KeySource>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn rejects_malformed_sources_with_a_hint() {
        for (spec, needle) in [
            ("/k/admin.key", "file:PATH"),
            ("file:", "empty"),
            ("keyring:noslash", "SERVICE/NAME"),
            ("keyring:/name", "non-empty"),
            ("openbao:onlykey", "KEYNAME:PATH"),
            ("openbao:bad key:p", "transit key name"),
            ("s3:x", "unknown kind"),
            ("awskms:onlykey", "KEY_ID:PATH"),
            ("awskms:bad key:p", "KMS key"),
            (
                "pkcs11:token=t;object=o?pin-value=1&x-wrapped=w",
                "pin-value is refused",
            ),
        ] {
            let err = spec.parse::<KeySource>().unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains(spec), "{spec}: {err}");
        }
    }

    #[test]
    fn protection_debug_hides_passphrase() {
        let p = Protection::Passphrase(SecretString::from("hunter2-very-secret"));
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
