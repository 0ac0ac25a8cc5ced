//! The cbfs key sources that reach beyond the machine: `openbao:KEYNAME:PATH`
//! (an OpenBao/Vault transit key over HTTP), `awskms:KEY_ID:PATH` (AWS KMS
//! over HTTPS) and the Secret Service store of `keyring:SERVICE/NAME` (a
//! D-Bus client on the session bus).
//!
//! cbfs-core parses every key source and handles the local ones (`file:`,
//! the kernel keyring, `pkcs11:`); it reaches these only through the
//! [`RemoteSources`] an [`Unlock`] carries. A program that may use them
//! builds its `Unlock` with [`unlock_from_env`] (or sets
//! `unlock.remote = Some(backends())`); one that must not (cbfs-recover)
//! does not depend on this crate, and cbfs-core refuses those sources there
//! with an error that says how to do without.
//!
//! ```
//! let unlock = cbfs_keysource::unlock_from_env();
//! assert!(unlock.remote.is_some() && unlock.local.is_some());
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod awskms;
mod openbao;
#[cfg(target_os = "linux")]
mod secret_service;

use cbfs_core::{Error, KeySource, RemoteSources, Result, Rewrapped, Seed, Unlock};

/// The backends of `openbao:`, `awskms:` and the Secret Service.
#[derive(Debug)]
struct Backends;

static BACKENDS: Backends = Backends;

/// The remote key-source backends, for [`Unlock::remote`].
pub fn backends() -> &'static dyn RemoteSources {
    &BACKENDS
}

/// [`Unlock::from_env`] with every key source: the remote ones and the
/// kernel keyring and passphrase prompt of `cbfs-localkeys`. What every
/// program that may reach a key service or the session bus loads its keys
/// with.
pub fn unlock_from_env() -> Unlock {
    Unlock {
        remote: Some(backends()),
        ..cbfs_localkeys::unlock_from_env()
    }
}

/// The error for a source that is not one of these backends' (cbfs-core
/// handles it itself, so reaching here is a caller's mistake).
fn not_remote(source: &KeySource) -> Error {
    Error::BadSource {
        spec: source.to_string(),
        reason: "not an openbao: or awskms: source".into(),
    }
}

impl RemoteSources for Backends {
    fn load(&self, source: &KeySource) -> Result<Seed> {
        match source {
            KeySource::OpenBao { key, path } => openbao::load(key, path),
            KeySource::AwsKms { key, path } => awskms::load(key, path),
            other => Err(not_remote(other)),
        }
    }

    fn store_new(&self, source: &KeySource, seed: &Seed) -> Result<()> {
        match source {
            KeySource::OpenBao { key, path } => openbao::store_new(key, path, seed),
            KeySource::AwsKms { key, path } => awskms::store_new(key, path, seed),
            other => Err(not_remote(other)),
        }
    }

    fn rewrap(&self, source: &KeySource, to_key: Option<&str>) -> Result<Rewrapped> {
        match (source, to_key) {
            (KeySource::OpenBao { key, path }, None) => openbao::rewrap(key, path),
            (KeySource::AwsKms { key, path }, to) => awskms::rewrap(key, path, to),
            (other, _) => Err(Error::BadSource {
                spec: other.to_string(),
                reason: "only openbao: (to the same transit key) and awskms: sources are rewrapped by a key service".into(),
            }),
        }
    }

    fn open_secret_service(&self, requested: bool) -> std::result::Result<(), String> {
        secret_service::open(requested)
    }
}

/// Elsewhere than on Linux there is no Secret Service store.
#[cfg(not(target_os = "linux"))]
mod secret_service {
    pub(crate) fn open(_requested: bool) -> Result<(), String> {
        Err("the Secret Service store is built on Linux only".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sources cbfs-core handles itself are refused here, naming the source.
    #[test]
    fn refuses_local_sources() {
        for spec in ["file:/k/a.key", "keyring:cbfs/a"] {
            let source: KeySource = spec.parse().unwrap();
            let err = backends().load(&source).unwrap_err().to_string();
            assert!(err.contains(spec), "{err}");
        }
        let bao: KeySource = "openbao:kek:/k/a.w".parse().unwrap();
        let err = backends().rewrap(&bao, Some("other")).unwrap_err();
        assert!(err.to_string().contains("openbao:kek:/k/a.w"), "{err}");
    }

    #[test]
    fn unlock_from_env_carries_the_backends() {
        let unlock = unlock_from_env();
        assert!(unlock.remote.is_some() && unlock.local.is_some());
        assert!(Unlock::from_env().remote.is_none());
    }
}
