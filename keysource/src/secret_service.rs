//! The Secret Service store of `keyring:` sources (GNOME Keyring, KWallet,
//! KeePassXC: the freedesktop Secret Service on the D-Bus session bus).
//! cbfs-core chooses the store; this opens it when chosen.

use std::time::Duration;

use cbfs_localkeys::describe_keyring_error as describe;
use zbus::blocking::{connection, fdo::DBusProxy};
use zbus::names::BusName;

/// The well-known bus name of the Secret Service.
const NAME: &str = "org.freedesktop.secrets";

/// How long the bus daemon may take to answer whether one runs.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a session with the Secret Service and makes it keyring-core's
/// default store. Unless `requested`, only a Secret Service that is
/// already running on the bus named by `DBUS_SESSION_BUS_ADDRESS` is
/// used; the error then says why not, for the log.
pub(crate) fn open(requested: bool) -> Result<(), String> {
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
