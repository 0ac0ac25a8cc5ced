//! The cbfs key sources on this machine that need more than plain files:
//! the kernel keyring of `keyring:SERVICE/NAME` (and the choice between it
//! and the Secret Service, which `cbfs-keysource` opens), and the terminal
//! prompt for the passphrase of an age-wrapped key file.
//!
//! cbfs-core parses every key source and reaches these only through the
//! [`LocalSources`] an [`Unlock`] carries. A program builds its `Unlock` with
//! [`unlock_from_env`] (or `cbfs_keysource::unlock_from_env`, which adds the
//! network and D-Bus sources); cbfs-gc, which holds no key, does not depend
//! on this crate.
//!
//! ```
//! let unlock = cbfs_localkeys::unlock_from_env();
//! assert!(unlock.local.is_some() && unlock.remote.is_none());
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(target_os = "linux")]
mod keyring;

use cbfs_core::{LocalSources, RemoteSources, Result, Seed, Unlock};
use secrecy::SecretString;

#[cfg(target_os = "linux")]
pub use keyring::describe as describe_keyring_error;

/// The kernel keyring and the passphrase prompt.
#[derive(Debug)]
struct Backends;

static BACKENDS: Backends = Backends;

/// The local key-source backends, for [`Unlock::local`].
pub fn backends() -> &'static dyn LocalSources {
    &BACKENDS
}

/// [`Unlock::from_env`] with the kernel keyring and the passphrase prompt:
/// what a program that does not reach key services (cbfs-recover) loads its
/// keys with.
pub fn unlock_from_env() -> Unlock {
    Unlock {
        local: Some(backends()),
        ..Unlock::from_env()
    }
}

impl LocalSources for Backends {
    fn keyring_load(
        &self,
        service: &str,
        name: &str,
        remote: Option<&dyn RemoteSources>,
    ) -> Result<Seed> {
        keyring::load(service, name, remote)
    }

    fn keyring_store_new(
        &self,
        service: &str,
        name: &str,
        seed: &Seed,
        remote: Option<&dyn RemoteSources>,
    ) -> Result<()> {
        keyring::store_new(service, name, seed, remote)
    }

    fn keyring_uses_keyutils(&self, remote: Option<&dyn RemoteSources>) -> bool {
        keyring::uses_keyutils(remote)
    }

    fn prompt_passphrase(&self, prompt: &str) -> std::io::Result<SecretString> {
        rpassword::prompt_password(prompt).map(SecretString::from)
    }
}

/// Elsewhere than on Linux there is no kernel keyring.
#[cfg(not(target_os = "linux"))]
mod keyring {
    use cbfs_core::{Error, RemoteSources, Result, Seed};

    fn linux_only(service: &str, name: &str) -> Error {
        Error::Keyring {
            location: format!("keyring:{service}/{name}"),
            reason: "this build supports the Linux kernel keyring only".into(),
        }
    }

    pub(crate) fn load(service: &str, name: &str, _: Option<&dyn RemoteSources>) -> Result<Seed> {
        Err(linux_only(service, name))
    }

    pub(crate) fn store_new(
        service: &str,
        name: &str,
        _: &Seed,
        _: Option<&dyn RemoteSources>,
    ) -> Result<()> {
        Err(linux_only(service, name))
    }

    pub(crate) fn uses_keyutils(_: Option<&dyn RemoteSources>) -> bool {
        false
    }
}
