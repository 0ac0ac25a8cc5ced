//! `keyring:SERVICE/NAME` key sources, through `keyring-core`.
//!
//! Two stores on Linux, chosen once per process:
//!
//! - **Secret Service** (GNOME Keyring, KWallet, KeePassXC: the freedesktop
//!   Secret Service on the D-Bus session bus), when `DBUS_SESSION_BUS_ADDRESS`
//!   is set and a Secret Service is running there and opens a session. The
//!   daemon keeps the key on disk, in the user's default collection (the
//!   login keyring), encrypted under the login password. Only in programs
//!   given the remote backends (a [`RemoteSources`], from `cbfs-keysource`):
//!   this crate holds no D-Bus client.
//! - **Kernel keyutils** otherwise. The process joins a session keyring when
//!   it has none, and the store also links each key into the user's
//!   persistent keyring, so a key outlives the process that stored it,
//!   though not a reboot.
//!
//! `CBFS_KEYRING_STORE=keyutils` or `CBFS_KEYRING_STORE=secret-service`
//! overrides the choice; the chosen store must then work, or the operation
//! fails. cbfs never has D-Bus start a Secret Service on its own: a freshly
//! started daemon on a machine without a desktop holds a locked keyring and
//! would wait for an unlock prompt nobody can answer. With
//! `CBFS_KEYRING_STORE=secret-service` the bus may start one.

use std::collections::HashMap;
use std::sync::OnceLock;

use keyring_core::{Entry, Error as KrError};
use zeroize::Zeroizing;

use cbfs_core::source_backend::program_name;
use cbfs_core::{Error, RemoteSources, Result, Seed};

/// The variable that picks the keyring store: `keyutils` or `secret-service`.
pub(crate) const STORE_ENV: &str = "CBFS_KEYRING_STORE";

/// The keyring-core store that holds `keyring:` entries in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Store {
    /// The Linux kernel keyring (keyutils): in memory only.
    Keyutils,
    /// The freedesktop Secret Service on the D-Bus session bus: on disk.
    SecretService,
}

impl Store {
    /// The store's name, as `CBFS_KEYRING_STORE` spells it.
    fn name(self) -> &'static str {
        match self {
            Store::Keyutils => "keyutils",
            Store::SecretService => "secret-service",
        }
    }

    /// The store `CBFS_KEYRING_STORE` asks for: `None` when it is unset or
    /// empty, which means "choose".
    fn requested(value: Option<&std::ffi::OsStr>) -> std::result::Result<Option<Store>, String> {
        let Some(value) = value else { return Ok(None) };
        match value.to_str() {
            Some("") => Ok(None),
            Some("keyutils") => Ok(Some(Store::Keyutils)),
            Some("secret-service") => Ok(Some(Store::SecretService)),
            _ => Err(format!(
                "{STORE_ENV}={} names no keyring store: use keyutils or secret-service, \
                 or unset it to choose automatically",
                value.to_string_lossy()
            )),
        }
    }

    /// The hint after "no key found at keyring:SERVICE/NAME".
    fn not_found_hint(self) -> &'static str {
        match self {
            Store::Keyutils => {
                ": kernel keyring keys do not survive a reboot and expire after days unused; \
                 restore it from your durable copy with cbfs-keytool copy --from SOURCE --to keyring:SERVICE/NAME \
                 (this looked in the kernel keyring; CBFS_KEYRING_STORE=secret-service looks in the Secret Service)"
            }
            Store::SecretService => {
                " in the Secret Service: restore it from your durable copy with \
                 cbfs-keytool copy --from SOURCE --to keyring:SERVICE/NAME \
                 (if it was stored in the kernel keyring, set CBFS_KEYRING_STORE=keyutils)"
            }
        }
    }
}

fn location(service: &str, name: &str) -> String {
    format!("keyring:{service}/{name}")
}

/// Describes a keyring error without ever printing the data some variants carry.
pub fn describe(e: &KrError) -> String {
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

/// Describes a keyring error, with what to do next where the store tells.
fn describe_in(store: Store, e: &KrError) -> String {
    let what = describe(e);
    match (store, e) {
        (Store::SecretService, KrError::NoStorageAccess(_)) => format!(
            "{what}; unlock your keyring (the Secret Service's default collection), \
             or set {STORE_ENV}=keyutils to use the kernel keyring"
        ),
        (Store::SecretService, KrError::Ambiguous(_)) => format!(
            "{what} in the Secret Service; remove the extra items \
             (secret-tool search service SERVICE username NAME)"
        ),
        _ => what,
    }
}

/// Chooses and opens the store once per process, and makes it keyring-core's
/// default. The Secret Service is a choice only with `remote` backends; the
/// first call decides for the whole process.
fn init(remote: Option<&dyn RemoteSources>) -> Result<Store> {
    static INIT: OnceLock<std::result::Result<Store, String>> = OnceLock::new();
    INIT.get_or_init(|| {
        let requested = Store::requested(std::env::var_os(STORE_ENV).as_deref())?;
        let (store, why) = match requested {
            Some(Store::Keyutils) => {
                open_keyutils()?;
                (Store::Keyutils, format!("{STORE_ENV}=keyutils"))
            }
            Some(Store::SecretService) => {
                open_secret_service(remote, true)?;
                (Store::SecretService, format!("{STORE_ENV}=secret-service"))
            }
            None => match open_secret_service(remote, false) {
                Ok(()) => (
                    Store::SecretService,
                    "a Secret Service runs on the session bus".to_owned(),
                ),
                Err(why_not) => {
                    open_keyutils()?;
                    (Store::Keyutils, why_not)
                }
            },
        };
        tracing::debug!(store = store.name(), why = %why, "keyring store");
        Ok(store)
    })
    .clone()
    .map_err(|reason| Error::Keyring {
        location: "keyring".into(),
        reason,
    })
}

fn open_keyutils() -> std::result::Result<(), String> {
    use linux_keyutils::{KeyRing, KeyRingIdentifier};
    // Join (or create) a session keyring, so keys do not land in a
    // keyring that vanishes with this process.
    KeyRing::from_special_id(KeyRingIdentifier::Session, true)
        .map_err(|e| format!("cannot join a session keyring: {e}"))?;
    let store = linux_keyutils_keyring_store::Store::new()
        .map_err(|e| format!("cannot open the kernel keyring: {}", describe(&e)))?;
    keyring_core::set_default_store(store);
    Ok(())
}

/// Opens the Secret Service through the remote backends; without them, says
/// why not.
fn open_secret_service(
    remote: Option<&dyn RemoteSources>,
    requested: bool,
) -> std::result::Result<(), String> {
    match remote {
        Some(remote) => remote.open_secret_service(requested),
        None if requested => Err(format!(
            "{STORE_ENV}=secret-service: {} does not reach the session bus and has no \
             Secret Service store; use {STORE_ENV}=keyutils, or copy the key into a file first: \
             cbfs-keytool copy --from keyring:SERVICE/NAME --to file:PATH --protect passphrase",
            program_name()
        )),
        None => Err(format!("{} does not reach the session bus", program_name())),
    }
}

/// Whether `keyring:` entries of this process live in the kernel keyring, and
/// so do not survive a reboot. Chooses the store if nothing has yet.
pub(crate) fn uses_keyutils(remote: Option<&dyn RemoteSources>) -> bool {
    // A store that cannot be opened held nothing; warn as for keyutils.
    !matches!(init(remote), Ok(Store::SecretService))
}

fn entry(service: &str, name: &str, remote: Option<&dyn RemoteSources>) -> Result<(Store, Entry)> {
    let store = init(remote)?;
    let built = match store {
        Store::Keyutils => Entry::new(service, name),
        // The label is what keyring managers (Seahorse, KWallet) show.
        Store::SecretService => {
            let label = format!("cbfs {}", location(service, name));
            Entry::new_with_modifiers(service, name, &HashMap::from([("label", label.as_str())]))
        }
    };
    built.map(|e| (store, e)).map_err(|e| Error::Keyring {
        location: location(service, name),
        reason: describe_in(store, &e),
    })
}

pub(crate) fn load(service: &str, name: &str, remote: Option<&dyn RemoteSources>) -> Result<Seed> {
    let (store, entry) = entry(service, name, remote)?;
    match entry.get_secret() {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            Seed::from_slice(&bytes, &location(service, name))
        }
        Err(KrError::NoEntry) => Err(Error::NotFound {
            location: location(service, name),
            hint: store.not_found_hint(),
        }),
        Err(e) => Err(Error::Keyring {
            location: location(service, name),
            reason: describe_in(store, &e),
        }),
    }
}

pub(crate) fn store_new(
    service: &str,
    name: &str,
    seed: &Seed,
    remote: Option<&dyn RemoteSources>,
) -> Result<()> {
    let (store, entry) = entry(service, name, remote)?;
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
                reason: describe_in(store, &e),
            });
        }
    }
    entry
        .set_secret(seed.expose_secret_bytes())
        .map_err(|e| Error::Keyring {
            location: location(service, name),
            reason: describe_in(store, &e),
        })
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    #[test]
    fn store_variable_names_a_store_or_leaves_the_choice() {
        assert_eq!(Store::requested(None), Ok(None));
        assert_eq!(Store::requested(Some(OsStr::new(""))), Ok(None));
        assert_eq!(
            Store::requested(Some(OsStr::new("keyutils"))),
            Ok(Some(Store::Keyutils))
        );
        assert_eq!(
            Store::requested(Some(OsStr::new("secret-service"))),
            Ok(Some(Store::SecretService))
        );
        for bad in ["kwallet", "Keyutils", "secret_service", " keyutils"] {
            let err = Store::requested(Some(OsStr::new(bad))).unwrap_err();
            assert!(
                err.contains(STORE_ENV)
                    && err.contains(bad)
                    && err.contains("keyutils or secret-service"),
                "{bad}: {err}"
            );
        }
        for store in [Store::Keyutils, Store::SecretService] {
            assert_eq!(
                Store::requested(Some(OsStr::new(store.name()))),
                Ok(Some(store))
            );
        }
    }

    #[test]
    fn not_found_hints_name_the_store_and_the_way_back() {
        let keyutils = Store::Keyutils.not_found_hint();
        assert!(keyutils.contains("reboot") && keyutils.contains("cbfs-keytool copy --from"));
        assert!(keyutils.contains("CBFS_KEYRING_STORE=secret-service"));
        let ss = Store::SecretService.not_found_hint();
        assert!(!ss.contains("reboot"), "{ss}");
        assert!(
            ss.contains("cbfs-keytool copy --from") && ss.contains("CBFS_KEYRING_STORE=keyutils")
        );
    }

    #[test]
    fn locked_secret_service_says_what_to_do() {
        let e = KrError::NoStorageAccess("locked".into());
        let text = describe_in(Store::SecretService, &e);
        assert!(
            text.contains("unlock") && text.contains("CBFS_KEYRING_STORE=keyutils"),
            "{text}"
        );
        assert_eq!(describe_in(Store::Keyutils, &e), describe(&e));
    }
}
