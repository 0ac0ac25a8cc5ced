//! Long-running server processes that cannot outlive the test.
//!
//! A server is started under a small `sh` supervisor whose stdin is a pipe
//! from the test process. The supervisor runs the server in the background
//! and a watcher that blocks reading that pipe. When the pipe closes, because
//! [`ServerProcess`] is dropped (also while a test panics) or because the test
//! process died outright, the watcher kills the server with SIGKILL. When the
//! server exits on its own, the supervisor exits with its status, so a
//! server that dies during start-up is noticed at once.
//!
//! A server whose scratch directory is its own ([`ServerProcess::spawn_owning`])
//! has the supervisor remove that directory once the watcher killed the
//! server (the lifeline closed): a
//! server kept in a `static` for a whole test process (never dropped) then
//! leaves nothing in the temporary directory when the process exits.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::bins::{hints, require_tool};

const SUPERVISOR: &str = r#"
pidfile=$1; remove=$2; shift 2
exec 3<&0
"$@" </dev/null 3<&- &
server=$!
echo "$server" > "$pidfile"
( read _ <&3; kill -9 "$server" 2>/dev/null ) &
watcher=$!
exec 3<&-
wait "$server"
status=$?
kill "$watcher" 2>/dev/null
if [ -n "$remove" ] && [ "$status" -eq 137 ]; then rm -rf -- "$remove"; fi
exit "$status"
"#;

/// A server running under the supervisor; killed and reaped on drop.
pub struct ServerProcess {
    name: String,
    supervisor: Child,
    lifeline: Option<ChildStdin>,
    log: PathBuf,
    pidfile: PathBuf,
}

impl ServerProcess {
    /// Starts `cmd` under the supervisor. Its stdout and stderr go to `log`.
    /// `cmd`'s program, arguments, environment changes and working directory
    /// are carried over; its stdio settings are not.
    pub fn spawn(name: &str, cmd: &Command, log: &Path, scratch: &Path) -> ServerProcess {
        Self::start(name, cmd, log, scratch, false)
    }

    /// [`spawn`](Self::spawn) for a server whose `scratch` directory is its
    /// own: the directory is removed when the server is stopped, or when the
    /// test process ends without dropping it.
    pub fn spawn_owning(name: &str, cmd: &Command, log: &Path, scratch: &Path) -> ServerProcess {
        Self::start(name, cmd, log, scratch, true)
    }

    fn start(name: &str, cmd: &Command, log: &Path, scratch: &Path, owns: bool) -> ServerProcess {
        let sh = require_tool("sh", hints::SH);
        let pidfile = scratch.join(format!("{name}.pid"));
        let log_file = File::create(log)
            .unwrap_or_else(|e| panic!("cannot create log file {}: {e}", log.display()));
        let log_err = log_file
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot duplicate log file handle: {e}"));

        let mut sup = Command::new(sh);
        sup.arg("-c")
            .arg(SUPERVISOR)
            .arg(format!("cbfs-supervise-{name}"))
            .arg(&pidfile)
            .arg(if owns {
                scratch.as_os_str()
            } else {
                "".as_ref()
            })
            .arg(cmd.get_program())
            .args(cmd.get_args());
        crate::copy_env_and_dir(cmd, &mut sup);
        sup.stdin(Stdio::piped())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err));
        let mut supervisor = sup
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let lifeline = supervisor.stdin.take();
        ServerProcess {
            name: name.to_string(),
            supervisor,
            lifeline,
            log: log.to_path_buf(),
            pidfile,
        }
    }

    /// `Some(status)` once the server has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.supervisor
            .try_wait()
            .unwrap_or_else(|e| panic!("cannot check on {}: {e}", self.name))
    }

    /// The process id of the server itself, once the supervisor has started it.
    pub fn pid(&self) -> Option<u32> {
        fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Sends `signal` (`TERM`, `HUP`, ...) to the server itself, waiting up
    /// to 10 s for the supervisor to have started it.
    pub fn signal(&self, signal: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let pid = loop {
            if let Some(pid) = self.pid() {
                break pid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no pid file for {}",
                self.name
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
        assert!(status.success(), "kill -{signal} {} failed", self.name);
    }

    /// The address a server started with `--listen 127.0.0.1:0` listens
    /// on, as it says on its first line of output (`listening on
    /// SCHEME://ADDRESS`, as `cbfs-delegation serve` and `cbfs-gateway
    /// serve` print it): `SCHEME://ADDRESS`. Waits up to `within` for that
    /// line; fails, showing the log, if the server exits first or never
    /// says it. The port is the kernel's choice, so no other process can
    /// take it between choosing and binding (as with a port chosen by
    /// binding and closing a socket first).
    pub fn listening_url(&mut self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let log = String::from_utf8_lossy(&self.log_contents()).into_owned();
            if let Some(url) = log
                .lines()
                .find_map(|l| l.trim().strip_prefix("listening on "))
            {
                return url.trim().to_owned();
            }
            if let Some(status) = self.exit_status() {
                panic!(
                    "{} exited with {status} before it listened:\n{log}",
                    self.name
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not say where it listens within {within:?}:\n{log}",
                self.name
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the server has logged so far.
    pub fn log_contents(&self) -> Vec<u8> {
        fs::read(&self.log).unwrap_or_default()
    }

    /// The last `max_lines` lines of the server's log, for failure messages.
    pub fn log_tail(&self, max_lines: usize) -> String {
        log_tail(&self.log, max_lines)
    }

    /// Kills the server and waits until it and its supervisor have gone.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.supervisor.try_wait() {
            return;
        }
        // Closing the lifeline makes the watcher kill the server; the
        // supervisor then reaps it and exits.
        drop(self.lifeline.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.supervisor.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        // The supervisor is stuck: kill both directly.
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.supervisor.kill();
        let _ = self.supervisor.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `max_lines` lines of the file at `path` (reading at most its last
/// 64 KiB), or a note saying why there are none.
pub(crate) fn log_tail(path: &Path, max_lines: usize) -> String {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) => return format!("(cannot read {}: {e})", path.display()),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return format!("(cannot read {})", path.display());
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(max_lines)..];
    if tail.is_empty() {
        format!("({} is empty)", path.display())
    } else {
        tail.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: u32) -> bool {
        // A zombie still has a /proc entry; look at its state.
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    fn wait_for_pid(server: &ServerProcess) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = server.pid() {
                return pid;
            }
            assert!(Instant::now() < deadline, "supervisor wrote no pid file");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn the_listening_url_is_read_from_the_servers_output() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("echo starting >&2; echo 'listening on http://127.0.0.1:4242'; sleep 300");
        let mut server = ServerProcess::spawn("talker", &cmd, &dir.path().join("log"), dir.path());
        assert_eq!(
            server.listening_url(Duration::from_secs(30)),
            "http://127.0.0.1:4242"
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("echo cannot bind >&2; exit 3");
        let mut server =
            ServerProcess::spawn("quitter", &cmd, &dir.path().join("log2"), dir.path());
        let said = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            server.listening_url(Duration::from_secs(30))
        }))
        .unwrap_err();
        let said = said.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            said.contains("before it listened") && said.contains("cannot bind"),
            "{said}"
        );
    }

    #[test]
    fn drop_kills_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("300");
        let server = ServerProcess::spawn("sleeper", &cmd, &dir.path().join("log"), dir.path());
        let pid = wait_for_pid(&server);
        assert!(alive(pid));
        drop(server);
        assert!(!alive(pid), "server {pid} survived its ServerProcess");
    }

    #[test]
    fn an_owned_scratch_directory_goes_with_the_server() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("scratch");
        std::fs::create_dir(&dir).unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("300");
        let server = ServerProcess::spawn_owning("sleeper", &cmd, &dir.join("log"), &dir);
        let pid = wait_for_pid(&server);
        drop(server);
        assert!(!alive(pid));
        let deadline = Instant::now() + Duration::from_secs(10);
        while dir.exists() {
            assert!(Instant::now() < deadline, "the scratch directory stayed");
            thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn early_exit_is_seen_and_logged() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo starting; echo 'bind: address in use' >&2; exit 7",
        ]);
        let mut server = ServerProcess::spawn("failing", &cmd, &dir.path().join("log"), dir.path());
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = server.exit_status() {
                break status;
            }
            assert!(Instant::now() < deadline, "supervisor did not exit");
            thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.code(), Some(7));
        assert_eq!(server.log_tail(1), "bind: address in use");
        assert!(server.log_tail(10).starts_with("starting\n"));
    }
}
