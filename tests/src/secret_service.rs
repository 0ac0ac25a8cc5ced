//! A private D-Bus session bus, and a real Secret Service on it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::bins::require_tool;
use crate::process::ServerProcess;

/// Install hints for the programs this module runs.
mod hints {
    pub const DBUS: &str =
        "`apt-get install dbus` (Debian package `dbus-daemon`, with `dbus-send` from `dbus-bin`)";
    pub const GNOME_KEYRING: &str = "`apt-get install gnome-keyring`";
    pub const SECRET_TOOL: &str = "`apt-get install libsecret-tools`";
}

/// The Secret Service's well-known bus name.
pub const SECRET_SERVICE_NAME: &str = "org.freedesktop.secrets";

/// How long a daemon may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A `dbus-daemon` of its own: a session bus on a Unix socket in a temporary
/// directory, killed when dropped (also when the test panics, or dies).
///
/// The bus activates nothing unless asked to with
/// [`with_activatable`](SessionBus::with_activatable): the system's service
/// files (`/usr/share/dbus-1/services`) are not read, so only the daemons
/// the test starts own names on it.
pub struct SessionBus {
    address: String,
    dbus_send: PathBuf,
    // Field order matters: the daemon goes before its directory.
    server: ServerProcess,
    _dir: TempDir,
}

impl SessionBus {
    /// Starts a bus on which nothing is activatable.
    ///
    /// # Panics
    ///
    /// If `dbus-daemon` or `dbus-send` is missing, or the bus does not come up.
    pub fn start() -> SessionBus {
        SessionBus::start_with(&[])
    }

    /// Starts a bus on which D-Bus starts `program` when a client calls the
    /// (not yet owned) bus name `name`.
    pub fn with_activatable(name: &str, program: &Path) -> SessionBus {
        SessionBus::start_with(&[(name, program)])
    }

    fn start_with(activatable: &[(&str, &Path)]) -> SessionBus {
        let dbus_daemon = require_tool("dbus-daemon", hints::DBUS);
        let dbus_send = require_tool("dbus-send", hints::DBUS);
        let dir = tempfile::Builder::new()
            .prefix("cbfs-dbus-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a directory for the session bus: {e}"));
        let socket = dir.path().join("bus");
        let services = dir.path().join("services");
        fs::create_dir(&services).unwrap_or_else(|e| panic!("cannot create {services:?}: {e}"));
        for (name, program) in activatable {
            let file = services.join(format!("{name}.service"));
            let text = format!("[D-BUS Service]\nName={name}\nExec={}\n", program.display());
            fs::write(&file, text).unwrap_or_else(|e| panic!("cannot write {file:?}: {e}"));
        }
        let config = dir.path().join("bus.conf");
        fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <servicedir>{}</servicedir>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                socket.display(),
                services.display()
            ),
        )
        .unwrap_or_else(|e| panic!("cannot write {config:?}: {e}"));

        let mut cmd = Command::new(&dbus_daemon);
        cmd.arg("--nofork")
            .arg(format!("--config-file={}", config.display()))
            .current_dir(dir.path());
        let mut server = ServerProcess::spawn(
            "dbus-daemon",
            &cmd,
            &dir.path().join("dbus-daemon.log"),
            dir.path(),
        );
        let address = format!("unix:path={}", socket.display());
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = server.exit_status() {
                panic!(
                    "dbus-daemon exited during start-up ({status}):\n{}",
                    server.log_tail(30)
                );
            }
            if socket.exists() && ping(&dbus_send, &address).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "the session bus at {address} did not answer within {START_TIMEOUT:?}:\n{}",
                    server.log_tail(30)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        SessionBus {
            address,
            dbus_send,
            server,
            _dir: dir,
        }
    }

    /// The bus address, for `DBUS_SESSION_BUS_ADDRESS`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Whether some connection owns `name` on this bus now (without
    /// activating anything).
    pub fn has_owner(&self, name: &str) -> bool {
        let out = self.call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.NameHasOwner",
            &[&format!("string:{name}")],
        );
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("boolean true")
    }

    /// Calls a method with `dbus-send --print-reply` on this bus; `args` in
    /// `dbus-send`'s notation (`string:NAME`, `dict:string:string:K,V`).
    pub fn call(&self, dest: &str, path: &str, method: &str, args: &[&str]) -> Output {
        Command::new(&self.dbus_send)
            .arg(format!("--bus={}", self.address))
            .arg("--print-reply")
            .arg(format!("--dest={dest}"))
            .arg(path)
            .arg(method)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.dbus_send.display()))
    }

    /// Everything the bus daemon logged, for failure messages.
    pub fn log_tail(&self, max_lines: usize) -> String {
        self.server.log_tail(max_lines)
    }
}

impl std::fmt::Debug for SessionBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionBus")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

fn ping(dbus_send: &Path, address: &str) -> Result<(), String> {
    let out = Command::new(dbus_send)
        .arg(format!("--bus={address}"))
        .args([
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.GetId",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A real Secret Service: `gnome-keyring-daemon --components=secrets` on a
/// [`SessionBus`] of its own, with a fresh login keyring, unlocked, as the
/// default collection. Its `HOME`, `XDG_*` directories and keyring files live
/// in a temporary directory. The daemon and the bus are killed when this is
/// dropped, also when the test panics, or dies.
///
/// Cross-check what cbfs stored with [`search`](SecretService::search),
/// [`label`](SecretService::label) and [`lookup`](SecretService::lookup):
/// `dbus-send` and `secret-tool` (libsecret), other Secret Service clients
/// than the one cbfs uses.
pub struct SecretService {
    secret_tool: PathBuf,
    // Field order matters: the daemon goes before the bus and its home.
    daemon: ServerProcess,
    home: TempDir,
    bus: SessionBus,
}

/// Starts the keyring daemon with its password on stdin: `--unlock` creates
/// and unlocks the login keyring with it (an empty password creates none).
/// `exec` keeps the daemon the supervised process, so that it is the one
/// killed.
const START_KEYRING: &str = r#"
exec "$0" --foreground --unlock --components=secrets <<EOF
cbfs-test-login-password
EOF
"#;

impl SecretService {
    /// Starts a bus and the keyring daemon on it, and waits (up to 30 s) until
    /// the Secret Service's default collection is there.
    ///
    /// # Panics
    ///
    /// If `dbus-daemon`, `dbus-send`, `gnome-keyring-daemon` or `secret-tool`
    /// is missing, or the service does not come up; the message then carries
    /// the end of the daemon's log.
    pub fn start() -> SecretService {
        let gnome_keyring = require_tool("gnome-keyring-daemon", hints::GNOME_KEYRING);
        let secret_tool = require_tool("secret-tool", hints::SECRET_TOOL);
        let sh = require_tool("sh", crate::bins::hints::SH);
        let bus = SessionBus::start();
        let home = tempfile::Builder::new()
            .prefix("cbfs-keyring-home-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a home for the keyring daemon: {e}"));
        let mut cmd = Command::new(sh);
        cmd.arg("-c").arg(START_KEYRING).arg(&gnome_keyring);
        for (key, value) in SecretService::home_envs(home.path()) {
            cmd.env(key, value);
        }
        cmd.env("DBUS_SESSION_BUS_ADDRESS", bus.address())
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("GNOME_KEYRING_CONTROL")
            .current_dir(home.path());
        let mut daemon = ServerProcess::spawn(
            "gnome-keyring-daemon",
            &cmd,
            &home.path().join("gnome-keyring.log"),
            home.path(),
        );
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = daemon.exit_status() {
                panic!(
                    "gnome-keyring-daemon exited during start-up ({status}):\n{}",
                    daemon.log_tail(30)
                );
            }
            // The default collection, once the login keyring is created.
            let alias = bus.call(
                SECRET_SERVICE_NAME,
                "/org/freedesktop/secrets",
                "org.freedesktop.Secret.Service.ReadAlias",
                &["string:default"],
            );
            if alias.status.success()
                && String::from_utf8_lossy(&alias.stdout).contains("/collection/login")
            {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "the Secret Service on {} has no default collection after {START_TIMEOUT:?} \
                     (ReadAlias said: {}{}):\n{}",
                    bus.address(),
                    String::from_utf8_lossy(&alias.stdout).trim(),
                    String::from_utf8_lossy(&alias.stderr).trim(),
                    daemon.log_tail(30)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        SecretService {
            secret_tool,
            daemon,
            home,
            bus,
        }
    }

    fn home_envs(home: &Path) -> Vec<(&'static str, PathBuf)> {
        let runtime = home.join("run");
        if !runtime.exists() {
            fs::create_dir(&runtime).unwrap_or_else(|e| panic!("cannot create {runtime:?}: {e}"));
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700))
                .unwrap_or_else(|e| panic!("cannot chmod {runtime:?}: {e}"));
        }
        vec![
            ("HOME", home.to_path_buf()),
            ("XDG_RUNTIME_DIR", runtime),
            ("XDG_DATA_HOME", home.join("data")),
            ("XDG_CONFIG_HOME", home.join("config")),
            ("XDG_CACHE_HOME", home.join("cache")),
        ]
    }

    /// The bus the service runs on.
    pub fn bus(&self) -> &SessionBus {
        &self.bus
    }

    /// `DBUS_SESSION_BUS_ADDRESS` for the clients of this service.
    pub fn envs(&self) -> Vec<(String, String)> {
        vec![(
            "DBUS_SESSION_BUS_ADDRESS".to_string(),
            self.bus.address().to_string(),
        )]
    }

    /// A `secret-tool` command talking to this service.
    pub fn secret_tool(&self) -> Command {
        let mut cmd = Command::new(&self.secret_tool);
        cmd.env("DBUS_SESSION_BUS_ADDRESS", self.bus.address())
            .stdin(Stdio::null());
        for (key, value) in SecretService::home_envs(self.home.path()) {
            cmd.env(key, value);
        }
        cmd
    }

    /// The object paths of the items whose attributes include these, locked
    /// or not (the service's `SearchItems`, through `dbus-send`: nothing is
    /// unlocked and no secret is read).
    pub fn search(&self, attributes: &[(&str, &str)]) -> Vec<String> {
        let pairs: Vec<String> = attributes
            .iter()
            .flat_map(|(key, value)| [key.to_string(), value.to_string()])
            .collect();
        let out = self.bus.call(
            SECRET_SERVICE_NAME,
            "/org/freedesktop/secrets",
            "org.freedesktop.Secret.Service.SearchItems",
            &[&format!("dict:string:string:{}", pairs.join(","))],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "SearchItems failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(20)
        );
        stdout
            .lines()
            .filter_map(|line| line.trim().strip_prefix("object path \""))
            .filter_map(|rest| rest.strip_suffix('"'))
            .map(str::to_owned)
            .collect()
    }

    /// The label of the item at `path`, as a keyring manager shows it.
    pub fn label(&self, path: &str) -> String {
        let out = self.bus.call(
            SECRET_SERVICE_NAME,
            path,
            "org.freedesktop.DBus.Properties.Get",
            &["string:org.freedesktop.Secret.Item", "string:Label"],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .split_once("string \"")
            .and_then(|(_, rest)| rest.trim_end().strip_suffix('"'))
            .unwrap_or_else(|| {
                panic!(
                    "no label for {path}: {stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .to_owned()
    }

    /// The secret of the item with these attributes, as `secret-tool lookup`
    /// finds it; `None` if there is none. Run outside
    /// [`run`](crate::run), so the secret does not land in
    /// [`captured_output`](crate::captured_output).
    pub fn lookup(&self, attributes: &[(&str, &str)]) -> Option<Vec<u8>> {
        let mut cmd = self.secret_tool();
        cmd.arg("lookup");
        for (key, value) in attributes {
            cmd.arg(key).arg(value);
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run secret-tool: {e}"));
        out.status.success().then_some(out.stdout)
    }

    /// Everything the keyring daemon logged, for failure messages.
    pub fn log_tail(&self, max_lines: usize) -> String {
        self.daemon.log_tail(max_lines)
    }
}

impl std::fmt::Debug for SecretService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretService")
            .field("bus", &self.bus)
            .finish_non_exhaustive()
    }
}
