//! Running a program to completion, checking its exit status, and keeping
//! what it printed for the secret-leak checks.

use std::cell::RefCell;
use std::env;
use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Environment variable: how many seconds one command run by [`run`] and
/// friends may take before it is killed (default 120).
pub const COMMAND_TIMEOUT_ENV: &str = "CBFS_TEST_COMMAND_TIMEOUT";

const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

thread_local! {
    static CAPTURED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Everything the commands run on this thread by [`run`], [`run_ok`],
/// [`run_fail`] and their `_with_stdin` forms have shown: each command line,
/// its stdout and its stderr, in order.
///
/// Pass it to [`assert_no_secret`](crate::assert_no_secret) to prove that no
/// command printed a secret or took one as an argument. libtest runs each test
/// on a thread of its own, so this holds one test's commands; commands run on
/// threads the test spawns are recorded on those threads.
pub fn captured_output() -> Vec<u8> {
    CAPTURED.with(|c| c.borrow().clone())
}

/// Forgets what [`captured_output`] has gathered on this thread so far.
pub fn clear_captured_output() {
    CAPTURED.with(|c| c.borrow_mut().clear());
}

/// Runs `cmd` to completion and returns its output, whatever its exit status.
///
/// stdout and stderr are captured, and stdin is `/dev/null` (whatever `cmd`
/// says; use the `_with_stdin` forms to give input), so a prompt fails instead
/// of hanging. The command is killed, and the test fails, if it runs longer
/// than `CBFS_TEST_COMMAND_TIMEOUT` seconds (default 120).
pub fn run(cmd: &mut Command) -> Output {
    execute(cmd, None)
}

/// [`run_ok`] for a command known to be long (a gigabyte to move): it may
/// take `at_least`, or `CBFS_TEST_COMMAND_TIMEOUT` if that is longer.
pub fn run_ok_within(cmd: &mut Command, at_least: Duration) -> Output {
    let output = execute_within(cmd, None, command_timeout().max(at_least));
    expect_status(cmd, &output, true);
    output
}

/// Runs `cmd` and fails the test, printing its stdout and stderr, unless it
/// exits with status 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let output = execute(cmd, None);
    expect_status(cmd, &output, true);
    output
}

/// Runs `cmd` and fails the test, printing its stdout and stderr, unless it
/// exits with a non-zero status. A command killed by a signal does not count
/// as a clean failure: that is a crash, and fails the test too.
pub fn run_fail(cmd: &mut Command) -> Output {
    let output = execute(cmd, None);
    expect_status(cmd, &output, false);
    output
}

/// [`run_ok`], feeding `input` to the command's stdin (then closing it).
pub fn run_ok_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    let output = execute(cmd, Some(input));
    expect_status(cmd, &output, true);
    output
}

/// [`run_fail`], feeding `input` to the command's stdin (then closing it).
pub fn run_fail_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    let output = execute(cmd, Some(input));
    expect_status(cmd, &output, false);
    output
}

/// The command line of `cmd`, for messages: program and arguments, lossily
/// converted to UTF-8. Environment variables are left out on purpose: tests
/// hand tokens to child processes that way.
pub fn command_line(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

fn command_timeout() -> Duration {
    env::var(COMMAND_TIMEOUT_ENV)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_COMMAND_TIMEOUT)
}

fn execute(cmd: &mut Command, input: Option<&[u8]>) -> Output {
    execute_within(cmd, input, command_timeout())
}

fn execute_within(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    let line = command_line(cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{line}`: {e}"));

    let writer = match (input, child.stdin.take()) {
        (Some(input), Some(mut stdin)) => {
            let input = input.to_vec();
            // A program may exit without reading all of its input; a broken
            // pipe here is its business, not the test's.
            Some(thread::spawn(move || {
                let _ = stdin.write_all(&input);
            }))
        }
        _ => None,
    };
    let stdout = Collector::start(child.stdout.take());
    let stderr = Collector::start(child.stderr.take());

    let status = wait_with_timeout(&mut child, timeout);
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        // Readers may still block if the program left children holding the
        // pipes; report what has arrived so far and leave them be.
        let out = stdout.partial();
        let err = stderr.partial();
        record(&line, &out, &err);
        panic!(
            "`{line}` did not finish within {timeout:?} and was killed \
             (raise {COMMAND_TIMEOUT_ENV} for slow machines)\n{}",
            show_streams(&out, &err)
        );
    };
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    let output = Output {
        status,
        stdout: stdout.finish(),
        stderr: stderr.finish(),
    };
    record(&line, &output.stdout, &output.stderr);
    output
}

pub(crate) fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => panic!("cannot wait for child process {}: {e}", child.id()),
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

fn record(line: &str, stdout: &[u8], stderr: &[u8]) {
    CAPTURED.with(|c| {
        let mut c = c.borrow_mut();
        c.extend_from_slice(b"$ ");
        c.extend_from_slice(line.as_bytes());
        c.push(b'\n');
        c.extend_from_slice(stdout);
        c.extend_from_slice(stderr);
    });
}

fn expect_status(cmd: &Command, output: &Output, want_success: bool) {
    let status = output.status;
    let as_expected = if want_success {
        status.success()
    } else {
        // Exit code present and non-zero: the program failed on its own terms.
        matches!(status.code(), Some(code) if code != 0)
    };
    if !as_expected {
        panic!(
            "`{}` {}, but {} was expected\n{}",
            command_line(cmd),
            status_text(status),
            if want_success {
                "success"
            } else {
                "a clean failure (non-zero exit code)"
            },
            show_streams(&output.stdout, &output.stderr)
        );
    }
}

fn status_text(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => "succeeded".to_string(),
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    }
}

/// stdout and stderr laid out for a failure message.
pub(crate) fn show_streams(stdout: &[u8], stderr: &[u8]) -> String {
    format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}\n--- end ---",
        String::from_utf8_lossy(stdout).trim_end(),
        String::from_utf8_lossy(stderr).trim_end()
    )
}

/// Reads a pipe on a thread of its own, keeping what has arrived where the
/// test can see it even if the pipe never closes.
struct Collector {
    buffer: Arc<Mutex<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
}

impl Collector {
    fn start(pipe: Option<impl Read + Send + 'static>) -> Collector {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let thread = pipe.map(|mut pipe| {
            let buffer = Arc::clone(&buffer);
            thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                loop {
                    match pipe.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => lock(&buffer).extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            })
        });
        Collector { buffer, thread }
    }

    fn partial(&self) -> Vec<u8> {
        lock(&self.buffer).clone()
    }

    fn finish(mut self) -> Vec<u8> {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        std::mem::take(&mut *lock(&self.buffer))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]).stdin(Stdio::null());
        cmd
    }

    #[test]
    fn run_ok_returns_output_and_records_it() {
        clear_captured_output();
        let out = run_ok(&mut sh("echo out; echo err >&2"));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        let captured = String::from_utf8(captured_output()).unwrap();
        assert!(captured.contains("$ sh -c echo out; echo err >&2\n"));
        assert!(captured.contains("out\nerr\n"));
    }

    #[test]
    fn run_fail_accepts_non_zero_exit() {
        let out = run_fail(&mut sh("echo nope >&2; exit 3"));
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    #[should_panic(expected = "exited with code 3, but success was expected")]
    fn run_ok_rejects_failure_and_shows_stderr() {
        run_ok(&mut sh("echo nope >&2; exit 3"));
    }

    #[test]
    #[should_panic(expected = "but a clean failure (non-zero exit code) was expected")]
    fn run_fail_rejects_success() {
        run_fail(&mut sh("true"));
    }

    #[test]
    #[should_panic(expected = "was killed by signal 9")]
    fn run_fail_rejects_a_crash() {
        run_fail(&mut sh("kill -9 $$"));
    }

    #[test]
    fn stdin_is_fed_and_closed() {
        let out = run_ok_with_stdin(&mut sh("cat; echo done"), b"input\n");
        assert_eq!(out.stdout, b"input\ndone\n");
    }
}
