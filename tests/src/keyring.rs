//! A fresh, named kernel session keyring per test.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::bins::{hints, require_tool};

/// Run by the holder, which `keyctl session <name>` has just put in a new
/// keyring of that name. Other processes of this user may join a named
/// keyring only if it grants them Search, so add that (possessor: all; user:
/// view, read, search). Then print the keyring's id and wait for stdin to
/// close: the test's end, or its death.
const HOLDER: &str = r#"
keyctl=$1
"$keyctl" setperm @s 0x3f0b0000 || exit 1
"$keyctl" id @s || exit 1
exec cat >/dev/null
"#;

/// Joins the named keyring, checks it is the holder's, and runs the program.
/// `keyctl new_session` puts the keyring on its parent, this shell, which
/// then passes it on through `exec`. (`keyctl session <name> <program>` would
/// do the same, but it prints "Joined session keyring" on the program's
/// stderr.)
const WRAPPER: &str = r#"
keyctl=$1; name=$2; want=$3; shift 3
"$keyctl" new_session "$name" >/dev/null || {
    echo "cbfs-tests: cannot join the session keyring $name" >&2; exit 125; }
got=$("$keyctl" id @s)
[ "$got" = "$want" ] || {
    echo "cbfs-tests: joined keyring $got, not $want: the holder of $name has gone" >&2
    exit 125; }
exec "$@"
"#;

/// Run inside the keyring at the end of a test. Keys whose description
/// holds the session's name are invalidated, wherever else they are linked,
/// including in a persistent keyring linked into the session (as
/// `linux-keyutils-keyring-store` does). Everything else is only unlinked
/// from the session keyring, so that a key this test merely found (a
/// developer's own key in the persistent keyring, say) is left alone.
const CLEANUP: &str = r#"
keyctl=$1; name=$2
invalidate_ours() {
    for k in $("$keyctl" rlist "$1" 2>/dev/null); do
        d=$("$keyctl" rdescribe "$k" 2>/dev/null) || continue
        case "$d" in
            keyring\;*\;_persistent.*) invalidate_ours "$k" ;;
            keyring\;*) ;;
            *"$name"*) "$keyctl" invalidate "$k" 2>/dev/null ;;
        esac
    done
}
invalidate_ours @s
"$keyctl" clear @s
"#;

/// A fresh **named session keyring** for one test, shared by every process
/// the test runs through [`wrap`](KeyringSession::wrap).
///
/// A holder process, `keyctl session cbfs-test-<random> ...`, creates the
/// keyring, grants the user Search on it (without that, joining a named
/// keyring by name silently creates a new one) and keeps it alive until the
/// session is dropped or the test process dies. Wrapped processes join it by
/// name. A process that is not wrapped does not see it: its own session
/// keyring search does not reach keys stored here. The test process itself
/// stays in its own session keyring; code under test that uses the keyring
/// must run in a wrapped child process.
///
/// # The persistent keyring is shared
///
/// cbfs stores secrets with `linux-keyutils-keyring-store`, which also links
/// each key into the per-user *persistent* keyring (`keyctl get_persistent
/// @s`) and links that keyring into the session keyring. The persistent
/// keyring is one per user, shared by every session: a key stored there by
/// one test is found by a search in another test's session, and so is a real
/// key of the developer running the tests. So **put [`name`](KeyringSession::name)
/// in every keyring entry a test creates** (as the service or user). On drop,
/// keys whose description contains the name are invalidated, in the session
/// and in the persistent keyring; other keys are only unlinked from the
/// session keyring.
///
/// Keyutils keys do not survive a reboot, and the persistent keyring expires
/// after `/proc/sys/kernel/keys/persistent_keyring_expiry` seconds unused
/// (3 days by default).
pub struct KeyringSession {
    name: String,
    id: String,
    keyctl: PathBuf,
    sh: PathBuf,
    holder: Child,
    lifeline: Option<ChildStdin>,
}

impl KeyringSession {
    /// Creates the keyring `cbfs-test-<random>` and starts its holder.
    ///
    /// # Panics
    ///
    /// If `keyctl` is missing or the kernel keyring is not usable.
    pub fn new() -> KeyringSession {
        let keyctl = require_tool("keyctl", hints::KEYCTL);
        let sh = require_tool("sh", hints::SH);
        let name = format!("cbfs-test-{}", crate::random_hex(8));
        let mut holder = Command::new(&keyctl)
            .arg("session")
            .arg(&name)
            .arg(&sh)
            .arg("-c")
            .arg(HOLDER)
            .arg("cbfs-keyring-holder")
            .arg(&keyctl)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", keyctl.display()));
        let lifeline = holder.stdin.take();
        let mut id = String::new();
        if let Some(stdout) = holder.stdout.take() {
            let _ = BufReader::new(stdout).read_line(&mut id);
        }
        let id = id.trim().to_string();
        if id.parse::<i64>().is_err() {
            drop(lifeline);
            let _ = holder.kill();
            let _ = holder.wait();
            let mut stderr = String::new();
            if let Some(mut pipe) = holder.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            panic!(
                "cannot create the session keyring {name} with `keyctl session`; \
                 is the kernel keyring available here (keyutils)?\n{}",
                stderr.trim()
            );
        }
        KeyringSession {
            name,
            id,
            keyctl,
            sh,
            holder,
            lifeline,
        }
    }

    /// The keyring's name, `cbfs-test-<random hex>`. Unique per session; put
    /// it in the description of every key a test stores.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The keyring's serial number, as `keyctl` prints it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A command that runs `cmd` with this keyring as its session keyring.
    ///
    /// The program, arguments, environment changes (`env`, `env_remove`)
    /// and working directory of `cmd` carry over; `env_clear` and stdio
    /// settings cannot be read back from a `Command` and do not. stdin of the
    /// returned command is `/dev/null`; set stdio on it as needed. If the
    /// keyring cannot be joined, the command exits with status 125 and says
    /// why on stderr.
    pub fn wrap(&self, cmd: Command) -> Command {
        let mut wrapped = Command::new(&self.sh);
        wrapped
            .arg("-c")
            .arg(WRAPPER)
            .arg("cbfs-keyring-session")
            .arg(&self.keyctl)
            .arg(&self.name)
            .arg(&self.id)
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .stdin(Stdio::null());
        crate::copy_env_and_dir(&cmd, &mut wrapped);
        wrapped
    }
}

impl Default for KeyringSession {
    fn default() -> Self {
        KeyringSession::new()
    }
}

impl Drop for KeyringSession {
    fn drop(&mut self) {
        let mut cleanup = Command::new(&self.sh);
        cleanup
            .arg("-c")
            .arg(CLEANUP)
            .arg("cbfs-keyring-cleanup")
            .arg(&self.keyctl)
            .arg(&self.name);
        let _ = self
            .wrap(cleanup)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Closing stdin ends the holder, and with it the keyring.
        drop(self.lifeline.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.holder.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

impl std::fmt::Debug for KeyringSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyringSession")
            .field("name", &self.name)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
