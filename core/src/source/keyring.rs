//! `keyring:SERVICE/NAME` key sources, through `keyring-core`.
//!
//! Two stores on Linux, chosen once per process:
//!
//! - **Secret Service** (GNOME Keyring, KWallet, KeePassXC: the freedesktop
//!   Secret Service on the D-Bus session bus), when `DBUS_SESSION_BUS_ADDRESS`
//!   is set and a Secret Service is running there and opens a session. The
//!   daemon keeps the key on disk, in the user's default collection (the
//!   login keyring), encrypted under the login password. Needs the
//!   `secret-service` feature.
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

use crate::error::{Error, Result};
use crate::keys::Seed;

/// The variable that picks the keyring store: `keyutils` or `secret-service`.
pub(super) const STORE_ENV: &str = "CBFS_KEYRING_STORE";

/// The keyring-core store that holds `keyring:` entries in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Store {
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
/// default.
fn init() -> Result<Store> {
    static INIT: OnceLock<std::result::Result<Store, String>> = OnceLock::new();
    INIT.get_or_init(|| {
        let requested = Store::requested(std::env::var_os(STORE_ENV).as_deref())?;
        let (store, why) = match requested {
            Some(Store::Keyutils) => {
                open_keyutils()?;
                (Store::Keyutils, format!("{STORE_ENV}=keyutils"))
            }
            Some(Store::SecretService) => {
                secret_service::open(true)?;
                (Store::SecretService, format!("{STORE_ENV}=secret-service"))
            }
            None => match secret_service::open(false) {
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

#[cfg(feature = "secret-service")]
mod secret_service {
    use std::time::Duration;

    use zbus::blocking::{connection, fdo::DBusProxy};
    use zbus::names::BusName;

    use super::describe;

    /// The well-known bus name of the Secret Service.
    const NAME: &str = "org.freedesktop.secrets";

    /// How long the bus daemon may take to answer whether one runs.
    const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

    /// Opens a session with the Secret Service and makes it keyring-core's
    /// default store. Unless `requested`, only a Secret Service that is
    /// already running on the bus named by `DBUS_SESSION_BUS_ADDRESS` is
    /// used; the error then says why not, for the log.
    pub(super) fn open(requested: bool) -> std::result::Result<(), String> {
        if !requested {
            if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none_or(|a| a.is_empty()) {
                return Err("no session bus (DBUS_SESSION_BUS_ADDRESS is not set)".into());
            }
            match running() {
                Ok(true) => {}
                Ok(false) => return Err("no Secret Service runs on the session bus".into()),
                Err(e) => return Err(format!("the session bus cannot be reached: {e}")),
            }
        }
        let store = zbus_secret_service_keyring_store::Store::new()
            .map_err(|e| format!("the Secret Service cannot be opened: {}", describe(&e)))?;
        keyring_core::set_default_store(store);
        Ok(())
    }

    /// Whether the Secret Service's name has an owner on the session bus,
    /// without having D-Bus start one.
    fn running() -> zbus::Result<bool> {
        let bus = connection::Builder::session()?
            .method_timeout(PROBE_TIMEOUT)
            .build()?;
        Ok(DBusProxy::new(&bus)?.name_has_owner(BusName::try_from(NAME)?)?)
    }
}

#[cfg(not(feature = "secret-service"))]
mod secret_service {
    /// This build has no Secret Service store.
    pub(super) fn open(requested: bool) -> std::result::Result<(), String> {
        if requested {
            Err(format!(
                "{}=secret-service: this build of cbfs has no Secret Service support \
                 (cbfs-core's `secret-service` feature); use {}=keyutils",
                super::STORE_ENV,
                super::STORE_ENV
            ))
        } else {
            Err("built without Secret Service support".into())
        }
    }
}

/// Whether `keyring:` entries of this process live in the kernel keyring, and
/// so do not survive a reboot. Chooses the store if nothing has yet.
pub(super) fn uses_keyutils() -> bool {
    // A store that cannot be opened held nothing; warn as for keyutils.
    !matches!(init(), Ok(Store::SecretService))
}

fn entry(service: &str, name: &str) -> Result<(Store, Entry)> {
    let store = init()?;
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

pub(super) fn load(service: &str, name: &str) -> Result<Seed> {
    let (store, entry) = entry(service, name)?;
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

pub(super) fn store_new(service: &str, name: &str, seed: &Seed) -> Result<()> {
    let (store, entry) = entry(service, name)?;
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
