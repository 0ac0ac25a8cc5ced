//! Key sources: where a secret seed lives, written the same way by every tool.
//!
//! - `file:PATH`: the file holds the 32-byte key and nothing else, or an age
//!   file wrapping it (passphrase or x25519 recipients). Created 0600; a file
//!   that group or others can read is refused, as ssh does.
//! - `keyring:SERVICE/NAME`: the OS keyring through `keyring-core`: the
//!   freedesktop Secret Service where a session bus has one running (in the
//!   programs given [`RemoteSources`]), else the Linux kernel keyutils, whose
//!   keys do not survive a reboot. `CBFS_KEYRING_STORE=keyutils|secret-service`
//!   picks one. Through [`LocalSources`].
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
//!
//! This crate parses every kind and gives the same errors for them in every
//! program; it reads and writes `file:` and `pkcs11:` sources itself. The
//! rest reach beyond plain files, and their backends live in crates of
//! their own, handed in through the [`Unlock`] every operation takes, so
//! that a program that must not reach them does not link them, even in a
//! workspace build where cargo merges the features every member asks for:
//!
//! - `cbfs-localkeys` ([`Unlock::local`], a [`LocalSources`]): the kernel
//!   keyring of `keyring:` and the terminal passphrase prompt. cbfs-recover
//!   has it; cbfs-gc, which holds no key, does not.
//! - `cbfs-keysource` ([`Unlock::remote`], a [`RemoteSources`]): `openbao:`,
//!   `awskms:` and the Secret Service store of `keyring:`, which need a
//!   network client or a D-Bus connection. cbfs-recover does not have it
//!   and refuses those sources with an error that says how to do without.

mod file;
#[cfg(feature = "pkcs11")]
mod pkcs11;
mod pkcs11_uri;

pub use pkcs11_uri::{PinSource, Pkcs11Uri};

/// What the key-source backends (`cbfs-localkeys`, `cbfs-keysource`) share
/// with this crate: the private (0600) files that hold wrapped keys, and the
/// program's name for errors that say what it does not do.
pub mod backend {
    pub use super::file::{read_private, replace_private, write_new_private};
    pub use super::program_name;
}

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

/// The backends of the key sources that reach a key service over the network
/// (`openbao:`, `awskms:`) or the D-Bus session bus (the Secret Service store
/// of `keyring:`). The `cbfs-keysource` crate implements it; programs that may
/// reach those services hand it in through [`Unlock::remote`].
pub trait RemoteSources: fmt::Debug + Send + Sync {
    /// Loads the seed of an `openbao:` or `awskms:` source.
    fn load(&self, source: &KeySource) -> Result<Seed>;
    /// Stores a new seed in an `openbao:` or `awskms:` source, refusing to
    /// overwrite one.
    fn store_new(&self, source: &KeySource, seed: &Seed) -> Result<()>;
    /// Wraps the secret of an `openbao:` or `awskms:` source again, under
    /// `to_key` where given (AWS KMS only).
    fn rewrap(&self, source: &KeySource, to_key: Option<&str>) -> Result<Rewrapped>;
    /// Opens the Secret Service and makes it keyring-core's default store.
    /// Unless `requested`, only one already running on the session bus;
    /// the error says why not.
    fn open_secret_service(&self, requested: bool) -> std::result::Result<(), String>;
}

/// The backends of the key sources on this machine that need more than
/// plain files: the kernel keyring of `keyring:` sources (and the choice
/// between it and the Secret Service) and the terminal passphrase prompt.
/// The `cbfs-localkeys` crate implements it; programs hand it in through
/// [`Unlock::local`].
pub trait LocalSources: fmt::Debug + Send + Sync {
    /// Loads the seed of `keyring:SERVICE/NAME`, in the Secret Service
    /// (through `remote`) or the kernel keyring.
    fn keyring_load(
        &self,
        service: &str,
        name: &str,
        remote: Option<&dyn RemoteSources>,
    ) -> Result<Seed>;
    /// Stores a new seed at `keyring:SERVICE/NAME`, refusing to overwrite one.
    fn keyring_store_new(
        &self,
        service: &str,
        name: &str,
        seed: &Seed,
        remote: Option<&dyn RemoteSources>,
    ) -> Result<()>;
    /// Whether `keyring:` entries of this process live in the kernel keyring
    /// (and so do not survive a reboot). Chooses the store if nothing has yet.
    fn keyring_uses_keyutils(&self, remote: Option<&dyn RemoteSources>) -> bool;
    /// Asks for a passphrase on the terminal, with `prompt`.
    fn prompt_passphrase(&self, prompt: &str) -> std::io::Result<SecretString>;
}

/// How a protected key may be unlocked when it is loaded.
#[derive(Clone, Debug, Default)]
pub struct Unlock {
    /// An age identity file for x25519-wrapped key files.
    pub age_identity: Option<PathBuf>,
    /// A file holding the passphrase of passphrase-wrapped key files (0600).
    pub passphrase_file: Option<PathBuf>,
    /// Whether to ask for a passphrase on the terminal (with [`Self::local`]).
    pub allow_prompt: bool,
    /// The backends of `keyring:` sources and the passphrase prompt
    /// (`cbfs-localkeys`). `None`: `keyring:` sources are refused and no
    /// passphrase is asked for.
    pub local: Option<&'static dyn LocalSources>,
    /// The backends of `openbao:`, `awskms:` and the Secret Service
    /// (`cbfs-keysource`). `None`: those sources are refused with an error
    /// that says how to do without, and `keyring:` is the kernel keyring.
    pub remote: Option<&'static dyn RemoteSources>,
}

impl Unlock {
    /// From `CBFS_AGE_IDENTITY` and `CBFS_PASSPHRASE_FILE` (paths, never
    /// secrets), prompting on the terminal if stdin is one. Without the
    /// backends: `cbfs_localkeys::unlock_from_env` and
    /// `cbfs_keysource::unlock_from_env` add them.
    pub fn from_env() -> Self {
        use std::io::IsTerminal;
        Unlock {
            age_identity: std::env::var_os("CBFS_AGE_IDENTITY").map(PathBuf::from),
            passphrase_file: std::env::var_os("CBFS_PASSPHRASE_FILE").map(PathBuf::from),
            allow_prompt: std::io::stdin().is_terminal(),
            local: None,
            remote: None,
        }
    }

    /// The keyring backend, or the error for a program without one.
    fn local_for(&self, source: &KeySource) -> Result<&'static dyn LocalSources> {
        self.local.ok_or_else(|| Error::Keyring {
            location: source.to_string(),
            reason: format!(
                "{} is built without keyring access; copy the key into a file first: \
                 cbfs-keytool copy --from {source} --to file:PATH --protect passphrase",
                program_name()
            ),
        })
    }

    /// The remote backends for `source`, or the error for a program that
    /// does not reach key services.
    fn remote_for(&self, source: &KeySource) -> Result<&'static dyn RemoteSources> {
        self.remote.ok_or_else(|| {
            let service = match source {
                KeySource::AwsKms { .. } => "AWS KMS",
                _ => "OpenBao/Vault",
            };
            Error::Kms {
                service,
                op: "use",
                location: source.to_string(),
                reason: format!(
                    "{} does not reach key services; unwrap the secret into a file first, \
                     where the key service is reachable: cbfs-keytool copy --from {source} --to file:PATH \
                     --protect passphrase, then give file:PATH",
                    program_name()
                ),
                transient: false,
            }
        })
    }
}

/// This program's name, for errors that say what it does not do.
pub fn program_name() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(std::path::Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "this program".into())
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
            KeySource::Keyring { service, name } => {
                unlock
                    .local_for(self)?
                    .keyring_load(service, name, unlock.remote)
            }
            KeySource::OpenBao { .. } | KeySource::AwsKms { .. } => {
                unlock.remote_for(self)?.load(self)
            }
            KeySource::Pkcs11(uri) => pkcs11_load(uri),
        }?;
        tracing::debug!(source = %self, "loaded key");
        Ok(seed)
    }

    /// Stores a new seed. Refuses to overwrite an existing key.
    ///
    /// `protection` applies to `file:` sources; the keyring and the KMS
    /// protect the key themselves. `unlock` gives the backends of
    /// `keyring:`, `openbao:` and `awskms:`, if the program has them.
    pub fn store_new(&self, seed: &Seed, protection: &Protection, unlock: &Unlock) -> Result<()> {
        if !matches!(protection, Protection::None) && !matches!(self, KeySource::File(_)) {
            return Err(Error::BadSource {
                spec: self.to_string(),
                reason: "age protection applies to file: sources only".into(),
            });
        }
        match self {
            KeySource::File(path) => file::store_new(path, seed, protection),
            KeySource::Keyring { service, name } => {
                unlock
                    .local_for(self)?
                    .keyring_store_new(service, name, seed, unlock.remote)
            }
            KeySource::OpenBao { .. } | KeySource::AwsKms { .. } => {
                unlock.remote_for(self)?.store_new(self, seed)
            }
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
            KeySource::OpenBao { .. } => {
                if to.key.is_some() {
                    return Err(bad(
                        "OpenBao rewraps under the newest version of the same transit key; to move to another key, use cbfs-keytool copy",
                    ));
                }
                (unlock.remote_for(self)?.rewrap(self, None)?, self.clone())
            }
            KeySource::AwsKms { key, path } => {
                let r = unlock.remote_for(self)?.rewrap(self, to.key.as_deref())?;
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
    /// (and chooses it, with `unlock`'s backends, if nothing has yet): only
    /// kernel keyring keys are lost at a reboot; the Secret Service keeps its
    /// keys on disk.
    pub fn durability_note(&self, unlock: &Unlock) -> Option<&'static str> {
        match self {
            KeySource::Keyring { .. }
                if unlock
                    .local
                    .is_some_and(|l| l.keyring_uses_keyutils(unlock.remote)) =>
            {
                Some(
                    "keys in the Linux kernel keyring live in memory only: they do not survive a reboot, \
                     and the persistent keyring expires after 3 days unused. Keep a durable copy, \
                     for example: cbfs-keytool copy --from keyring:SERVICE/NAME --to file:PATH --protect passphrase",
                )
            }
            _ => None,
        }
    }
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
    fn splits_ids_aliases_and_arns() {
        let split_spec = awskms_split;
        assert_eq!(split_spec("abcd-1234:k/a.w"), Some(("abcd-1234", "k/a.w")));
        assert_eq!(split_spec("alias/cbfs:/k/a"), Some(("alias/cbfs", "/k/a")));
        assert_eq!(
            split_spec("arn:aws:kms:eu-west-1:123456789012:key/ab-cd:/k/admin.wrapped"),
            Some((
                "arn:aws:kms:eu-west-1:123456789012:key/ab-cd",
                "/k/admin.wrapped"
            ))
        );
        assert_eq!(split_spec("arn:aws:kms:eu-west-1"), None);
        assert_eq!(split_spec("nopath"), None);
    }

    /// Without the remote backends (cbfs-recover), `openbao:` and `awskms:`
    /// sources are refused, before any file or network is touched, with an
    /// error that names the source and the way to do without.
    #[test]
    fn remote_sources_without_backends_fail_closed_with_a_way_out() {
        let unlock = Unlock::default();
        for spec in [
            "openbao:kek:/nonexistent/a.w",
            "awskms:alias/cbfs:/nonexistent/a.w",
        ] {
            let source: KeySource = spec.parse().unwrap();
            let seed = Seed::from_slice(&[7; crate::SEED_LEN], "test").unwrap();
            let errors = [
                source.load(&unlock).unwrap_err(),
                source
                    .store_new(&seed, &Protection::None, &unlock)
                    .unwrap_err(),
                source.rewrap(&unlock, RewrapTo::default()).unwrap_err(),
            ];
            for err in errors {
                assert!(
                    matches!(
                        err,
                        Error::Kms {
                            transient: false,
                            ..
                        }
                    ),
                    "{spec}: {err:?}"
                );
                let text = err.to_string();
                assert!(
                    text.contains(spec)
                        && text.contains("does not reach key services")
                        && text
                            .contains(&format!("cbfs-keytool copy --from {spec} --to file:PATH")),
                    "{spec}: {text}"
                );
            }
        }
    }

    #[test]
    fn protection_debug_hides_passphrase() {
        let p = Protection::Passphrase(SecretString::from("hunter2-very-secret"));
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
