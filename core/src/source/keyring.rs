//! `keyring:SERVICE/NAME` key sources, through `keyring-core`.
//!
//! On Linux the store is the kernel's keyutils. The process joins a session
//! keyring when it has none, and the store also links each key into the
//! user's persistent keyring, so a key outlives the process that stored it,
//! though not a reboot.

use std::sync::OnceLock;

use keyring_core::{Entry, Error as KrError};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::keys::Seed;

fn location(service: &str, name: &str) -> String {
    format!("keyring:{service}/{name}")
}

/// Describes a keyring error without ever printing the data some variants carry.
fn describe(e: &KrError) -> String {
    match e {
        KrError::NoEntry => "no such entry".into(),
        KrError::NoStorageAccess(inner) => format!("the keyring cannot be reached: {inner}"),
        KrError::PlatformFailure(inner) => format!("the keyring failed: {inner}"),
        KrError::BadEncoding(_) | KrError::BadDataFormat(..) => {
            "the stored value is not in the expected format".into()
        }
        KrError::TooLong(what, max) => format!("{what} is longer than {max}"),
        KrError::Invalid(what, why) => format!("invalid {what}: {why}"),
        KrError::Ambiguous(_) => "several entries match".into(),
        _ => "the keyring refused the operation".into(),
    }
}

fn init() -> Result<()> {
    static INIT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        use linux_keyutils::{KeyRing, KeyRingIdentifier};
        // Join (or create) a session keyring, so keys do not land in a
        // keyring that vanishes with this process.
        KeyRing::from_special_id(KeyRingIdentifier::Session, true)
            .map_err(|e| format!("cannot join a session keyring: {e}"))?;
        let store = linux_keyutils_keyring_store::Store::new()
            .map_err(|e| format!("cannot open the kernel keyring: {}", describe(&e)))?;
        keyring_core::set_default_store(store);
        Ok(())
    })
    .clone()
    .map_err(|reason| Error::Keyring {
        location: "keyring".into(),
        reason,
    })
}

fn entry(service: &str, name: &str) -> Result<Entry> {
    init()?;
    Entry::new(service, name).map_err(|e| Error::Keyring {
        location: location(service, name),
        reason: describe(&e),
    })
}

pub(super) fn load(service: &str, name: &str) -> Result<Seed> {
    let entry = entry(service, name)?;
    match entry.get_secret() {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            Seed::from_slice(&bytes, &location(service, name))
        }
        Err(KrError::NoEntry) => Err(Error::NotFound {
            location: location(service, name),
            hint: ": kernel keyring keys do not survive a reboot and expire after days unused; \
                   restore it from your durable copy with cbfs-keytool copy --from SOURCE --to keyring:SERVICE/NAME",
        }),
        Err(e) => Err(Error::Keyring {
            location: location(service, name),
            reason: describe(&e),
        }),
    }
}

pub(super) fn store_new(service: &str, name: &str, seed: &Seed) -> Result<()> {
    let entry = entry(service, name)?;
    match entry.get_secret() {
        Ok(existing) => {
            drop(Zeroizing::new(existing));
            return Err(Error::AlreadyExists {
                location: location(service, name),
            });
        }
        Err(KrError::NoEntry) => {}
        Err(e) => {
            return Err(Error::Keyring {
                location: location(service, name),
                reason: describe(&e),
            });
        }
    }
    entry
        .set_secret(seed.expose_secret_bytes())
        .map_err(|e| Error::Keyring {
            location: location(service, name),
            reason: describe(&e),
        })
}
