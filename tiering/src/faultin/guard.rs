//! The guard: the small parent process that owns the fanotify group for
//! the life of a fault-in service, so that a stub never reads as zeros
//! because its handler died.
//!
//! The kernel answers "allow" for every pending event of a group whose
//! last descriptor closes, and a reader then reads the stub's holes as
//! zeros. So the group is made here, in a process that does nothing else,
//! and handed down (with a shared journal) to the handler, which this
//! process runs as its child: the program itself again, with the same
//! arguments. If the handler dies, the group lives on here: the guard
//! denies with `EIO` every event the handler read and did not answer (the
//! journal has them), then answers new events itself (a stub: `EIO`;
//! anything else, and the I/O of the process that claims a stub: allowed) until it has
//! started the handler again. `SIGTERM`, `SIGINT` and `SIGHUP` are passed
//! on to the handler; when it ends by itself (exit 0), so does the guard.
//! If the guard dies, the handler is sent `SIGTERM` and stops.
//!
//! What stays out of reach: if the guard itself is killed while the
//! handler is dead too, the group closes and a stub reads as zeros, as it
//! does for a process that opened a stub before any group watched it. Run
//! the service under a supervisor that restarts it, before the file
//! system is in use.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use crate::hsm::stub::{self, StubAttr};

use super::sys::{self, Group, SharedJournal};

/// The environment variable that hands the group and the journal down to
/// the handler: `GROUP_FD,JOURNAL_FD,GUARD_PID`.
pub const HANDOVER_ENV: &str = "CBFS_FAULT_IN_FDS";

/// What a guard handed down to its handler.
pub struct Handover {
    /// The fanotify group.
    pub group: Arc<Group>,
    /// The journal shared with the guard.
    pub journal: Arc<SharedJournal>,
    /// Whether a guard answers for this process if it dies (`false`: a
    /// group of this process's own, for tests and one-shot use).
    pub guarded: bool,
}

impl Handover {
    /// A group and journal of this process's own, with no guard: if this
    /// process dies while a reader waits, the reader reads zeros.
    pub fn unguarded() -> std::io::Result<Handover> {
        Ok(Handover {
            group: Arc::new(Group::new()?),
            journal: Arc::new(SharedJournal::create()?),
            guarded: false,
        })
    }

    /// Watches the file system mount that holds `tree`.
    pub fn watch(&self, tree: &Path) -> std::io::Result<()> {
        self.group.mark_mount(tree)
    }
}

/// The group and journal a guard handed down to this process, if it was
/// started by one.
pub fn handed_down() -> std::io::Result<Option<Handover>> {
    let Ok(value) = std::env::var(HANDOVER_ENV) else {
        return Ok(None);
    };
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{HANDOVER_ENV}={value:?} does not name two descriptors and a pid"),
        )
    };
    let parts: Vec<&str> = value.split(',').collect();
    let [g, j, guard] = parts[..] else {
        return Err(bad());
    };
    let g: i32 = g.parse().map_err(|_| bad())?;
    let j: i32 = j.parse().map_err(|_| bad())?;
    let guard: i32 = guard.parse().map_err(|_| bad())?;
    // The handler stops (finishing its recalls) when its guard dies.
    if !sys::term_with_parent(guard) {
        return Err(std::io::Error::other(
            "the guard that started this handler is gone",
        ));
    }
    let group = Group::from_owned(sys::inherited_fd(g)?)?;
    let journal = SharedJournal::from_owned(sys::inherited_fd(j)?)?;
    Ok(Some(Handover {
        group: Arc::new(group),
        journal: Arc::new(journal),
        guarded: true,
    }))
}

/// The signal to pass on to the handler, set by the signal thread.
static PENDING: AtomicI32 = AtomicI32::new(0);

/// How the guard runs its handler.
pub struct GuardOptions {
    /// The program and its arguments (normally this process's own).
    pub program: std::path::PathBuf,
    /// Its arguments.
    pub args: Vec<std::ffi::OsString>,
    /// The first pause before the handler is started again; it doubles
    /// for each handler that dies within a minute, up to `max_backoff`.
    pub backoff: Duration,
    /// The longest pause.
    pub max_backoff: Duration,
}

impl GuardOptions {
    /// This program again, with the same arguments.
    pub fn this_program() -> std::io::Result<GuardOptions> {
        Ok(GuardOptions {
            program: std::env::current_exe()?,
            args: std::env::args_os().skip(1).collect(),
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        })
    }
}

/// Becomes the guard: makes the group and the journal, runs the handler
/// under them until it ends by itself (or after a signal), answering for
/// it whenever it is dead. Returns the handler's last exit code.
pub fn run_guard(opts: &GuardOptions) -> std::io::Result<i32> {
    let group = Group::new()?;
    let journal = SharedJournal::create()?;
    start_signal_thread()?;
    let mut pause = opts.backoff;
    loop {
        let started = Instant::now();
        let mut child = spawn(opts, &group, &journal)?;
        tracing::info!(pid = child.id(), "fault-in handler started");
        let status = wait(&mut child)?;
        let orphans = journal.orphans();
        for fd in &orphans {
            // ENOENT: the handler had answered it after all.
            let _ = group.respond(*fd, Some(libc::EIO));
        }
        journal.reset();
        let stopping = PENDING.load(Ordering::SeqCst) != 0;
        if status.success() || stopping {
            // A last look at what is queued: no stub is left to the
            // kernel's "allow" when the group closes.
            serve_until(&group, Instant::now() + Duration::from_millis(100))?;
            tracing::info!("fault-in handler ended ({status}); the guard stops");
            return Ok(status.code().unwrap_or(1));
        }
        tracing::error!(
            "fault-in handler died ({status}); {} waiting reader(s) got EIO; stubs are denied (EIO) until it is back",
            orphans.len()
        );
        if started.elapsed() > Duration::from_secs(60) {
            pause = opts.backoff;
        }
        serve_until(&group, Instant::now() + pause)?;
        pause = (pause * 2).min(opts.max_backoff);
    }
}

fn spawn(opts: &GuardOptions, group: &Group, journal: &SharedJournal) -> std::io::Result<Child> {
    let g: OwnedFd = group.inheritable()?;
    let j: OwnedFd = journal.inheritable()?;
    let child = Command::new(&opts.program)
        .args(&opts.args)
        .env(
            HANDOVER_ENV,
            format!("{},{},{}", g.as_raw_fd(), j.as_raw_fd(), std::process::id()),
        )
        .spawn();
    // The child has its copies; the guard keeps the originals.
    drop(g);
    drop(j);
    child
}

/// Waits for the handler to end, passing signals on to it.
fn wait(child: &mut Child) -> std::io::Result<ExitStatus> {
    let pid = rustix::process::Pid::from_raw(child.id() as i32);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        let sig = PENDING.swap(0, Ordering::SeqCst);
        if sig != 0 {
            let signal = match sig {
                libc::SIGHUP => Some(rustix::process::Signal::HUP),
                libc::SIGINT => Some(rustix::process::Signal::INT),
                libc::SIGTERM => Some(rustix::process::Signal::TERM),
                _ => None,
            };
            if let (Some(pid), Some(signal)) = (pid, signal) {
                let _ = rustix::process::kill_process(pid, signal);
            }
            if sig != libc::SIGHUP {
                // Remembered: the guard stops once the handler has.
                PENDING.store(-sig, Ordering::SeqCst);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_signal_thread() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("guard-signals".into())
        .spawn(move || {
            rt.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::hangup()),
                ) else {
                    let _ = ready_tx.send(false);
                    return;
                };
                let _ = ready_tx.send(true);
                loop {
                    let sig = tokio::select! {
                        _ = term.recv() => libc::SIGTERM,
                        _ = int.recv() => libc::SIGINT,
                        _ = hup.recv() => libc::SIGHUP,
                    };
                    if PENDING.load(Ordering::SeqCst) >= 0 {
                        PENDING.store(sig, Ordering::SeqCst);
                    }
                }
            });
        })?;
    match ready_rx.recv() {
        Ok(true) => Ok(()),
        _ => Err(std::io::Error::other("cannot watch signals")),
    }
}

/// Answers the group's events itself until `deadline`: a stub is denied
/// with `EIO` (never left to read as zeros), unless the process asking
/// claims it (a release or recall at work); anything else is
/// allowed.
fn serve_until(group: &Group, deadline: Instant) -> std::io::Result<()> {
    let mut buf = vec![0u8; sys::LANDING];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        let timeout = rustix::fs::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let borrowed = group.as_fd();
        let mut fds = [PollFd::new(&borrowed, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let n = group.read(&mut buf)?;
        for e in sys::events(&buf[..n]) {
            if e.fd < 0 {
                continue;
            }
            // SAFETY: `e.fd` is the descriptor of an event just read by
            // this process; nothing else owns it.
            #[allow(unsafe_code)]
            let fd = unsafe { sys::event_fd(e.fd) };
            let deny = match stub::read_record(fd.as_fd()) {
                Ok(StubAttr::None) => false,
                Ok(StubAttr::Stub(_)) => {
                    let holder = std::fs::File::from(fd.try_clone()?)
                        .metadata()
                        .map(|m| {
                            use std::os::unix::fs::MetadataExt;
                            stub::claim_holder(e.pid, m.dev(), m.ino())
                        })
                        .unwrap_or(false);
                    !holder
                }
                _ => true,
            };
            let _ = group.respond(e.fd, deny.then_some(libc::EIO));
            drop(fd);
        }
    }
}
