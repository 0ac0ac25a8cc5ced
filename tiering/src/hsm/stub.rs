//! A released file's stub on disk: its record (an extended attribute),
//! dropping and restoring its content, its times, and the write lease that
//! keeps every other process out while either happens.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cbfs_format::{RECALL_XATTR, STUB_XATTR, StubPhase, StubRecord, Timestamp};
use rustix::fs::{FallocateFlags, Timespec, Timestamps, XattrFlags};

use crate::faultin::sys;

/// What a file's stub attribute holds: nothing (a resident file), a record,
/// or bytes that are not a record (never read as a resident file: a stub
/// whose record is damaged).
#[derive(Debug)]
pub enum StubAttr {
    /// No stub record: a resident file.
    None,
    /// A stub.
    Stub(StubRecord),
    /// Bytes that are not a stub record.
    Damaged(String),
}

impl StubAttr {
    fn from_value(value: Option<Vec<u8>>) -> StubAttr {
        match value {
            None => StubAttr::None,
            Some(bytes) => match StubRecord::from_bytes(&bytes) {
                Ok(r) => StubAttr::Stub(r),
                Err(e) => StubAttr::Damaged(e.to_string()),
            },
        }
    }
}

/// Whether an attribute's lookup found it (its value is not wanted).
fn found(got: rustix::io::Result<usize>) -> io::Result<bool> {
    match got {
        Ok(_) | Err(rustix::io::Errno::RANGE) => Ok(true),
        Err(e) if absent(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn absent(e: &rustix::io::Errno) -> bool {
    *e == rustix::io::Errno::NODATA || *e == rustix::io::Errno::NOTSUP
}

/// The value of the attribute `name` as `get` reads it (a `getxattr` into
/// the buffer given), `None` if there is none.
fn value_of(
    name: &str,
    get: &dyn Fn(&str, &mut [u8]) -> rustix::io::Result<usize>,
) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 4096];
    loop {
        match get(name, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(e) if absent(&e) => return Ok(None),
            Err(rustix::io::Errno::RANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The stub record `get` reads; with `with_mark`, a record that says
/// released beside the recall mark ([`RECALL_XATTR`]) says recalling.
///
/// The record is read before the mark, and again if there is no mark: a
/// recall marks a stub before it fills it and removes the record before
/// the mark, so the same record on both sides of an absent mark was not
/// being filled in between (a recall that ended in between would have
/// removed it; one that began after began after the caller's `stat`).
fn read_with(
    get: &dyn Fn(&str, &mut [u8]) -> rustix::io::Result<usize>,
    with_mark: bool,
) -> io::Result<StubAttr> {
    let mut value = value_of(STUB_XATTR, get)?;
    for _ in 0..3 {
        let attr = StubAttr::from_value(value.clone());
        let StubAttr::Stub(mut r) = attr else {
            return Ok(attr);
        };
        if !with_mark || r.phase != StubPhase::Released {
            return Ok(StubAttr::Stub(r));
        }
        if found(get(RECALL_XATTR, &mut [0u8; 0][..]))? {
            r.phase = StubPhase::Recalling;
            return Ok(StubAttr::Stub(r));
        }
        let again = value_of(STUB_XATTR, get)?;
        if again == value {
            return Ok(StubAttr::Stub(r));
        }
        value = again;
    }
    // Changed on every look: a stub in the middle of a release or recall.
    Ok(match StubAttr::from_value(value) {
        StubAttr::Stub(mut r) => {
            if r.phase == StubPhase::Released {
                r.phase = StubPhase::Recalling;
            }
            StubAttr::Stub(r)
        }
        other => other,
    })
}

/// The stub record of an open file (reading an attribute raises no
/// fault-in event), with the phase [`StubPhase::Recalling`] if the stub is
/// marked as being recalled ([`RECALL_XATTR`]).
pub fn read(fd: BorrowedFd<'_>) -> io::Result<StubAttr> {
    read_with(&|name, buf| rustix::fs::fgetxattr(fd, name, buf), true)
}

/// The stub record of an open file as it is written, its phase not read
/// with the recall mark: for a caller to which the phase does not matter
/// (a recall, the fault-in handler, a check that a file is a stub).
pub fn read_record(fd: BorrowedFd<'_>) -> io::Result<StubAttr> {
    read_with(&|name, buf| rustix::fs::fgetxattr(fd, name, buf), false)
}

/// The stub record of the entry at `path`, not following a symbolic link
/// and without opening it (so without raising a fault-in event), as
/// [`read`] gives it.
pub fn read_at(path: &Path) -> io::Result<StubAttr> {
    read_with(&|name, buf| rustix::fs::lgetxattr(path, name, buf), true)
}

/// Whether the entry at `path` (not following a symbolic link) carries
/// the recall mark ([`RECALL_XATTR`]).
pub fn marked_at(path: &Path) -> io::Result<bool> {
    found(rustix::fs::lgetxattr(path, RECALL_XATTR, &mut [0u8; 0][..]))
}

/// [`read_at`], the record as it is written (as [`read_record`]).
pub fn read_record_at(path: &Path) -> io::Result<StubAttr> {
    read_with(&|name, buf| rustix::fs::lgetxattr(path, name, buf), false)
}

/// The stub record of the file a path-only descriptor (`O_PATH`) holds,
/// through its `/proc/self/fd` link (no open: no fault-in event), as it is
/// written (as [`read_record`]).
pub fn read_handle(handle: BorrowedFd<'_>) -> io::Result<StubAttr> {
    let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&handle));
    let link = Path::new(&link);
    read_with(&|name, buf| rustix::fs::getxattr(link, name, buf), false)
}

/// Writes the stub record and makes it durable.
pub fn write(file: &File, record: &StubRecord) -> io::Result<()> {
    set(file, record)?;
    rustix::fs::fsync(file)?;
    Ok(())
}

/// Writes the stub record; durable only after [`make_durable`] (a batch
/// makes many records durable at once). A record that says releasing or
/// released takes away a recall mark the file still has (after it: never
/// a moment with neither), so that no mark left by a recall cut short
/// outlives the record it was set beside.
pub fn set(file: &File, record: &StubRecord) -> io::Result<()> {
    let bytes = record
        .to_bytes()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    rustix::fs::fsetxattr(file, STUB_XATTR, &bytes, XattrFlags::empty())?;
    if record.phase != StubPhase::Recalling
        && found(rustix::fs::fgetxattr(file, RECALL_XATTR, &mut [0u8; 0][..]))?
    {
        unmark(file)?;
    }
    Ok(())
}

/// Marks the stub as being recalled ([`RECALL_XATTR`]): its record, left
/// as it is, now reads as [`StubPhase::Recalling`]. Durable only after
/// [`make_durable`].
pub fn mark_recalling(file: &File) -> io::Result<()> {
    rustix::fs::fsetxattr(file, RECALL_XATTR, &[], XattrFlags::empty())?;
    Ok(())
}

/// Takes the recall mark away, if the file has one.
fn unmark(file: &File) -> io::Result<()> {
    match rustix::fs::fremovexattr(file, RECALL_XATTR) {
        Ok(()) => Ok(()),
        Err(e) if absent(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes the stub record (the file is resident again) durably.
pub fn remove(file: &File) -> io::Result<()> {
    clear(file)?;
    rustix::fs::fsync(file)?;
    Ok(())
}

/// Removes the stub record, then the recall mark if there is one (a mark
/// left beside no record means nothing); durable only after
/// [`make_durable`].
pub fn clear(file: &File) -> io::Result<()> {
    match rustix::fs::fremovexattr(file, STUB_XATTR) {
        Ok(()) => {}
        Err(e) if absent(&e) => {}
        Err(e) => return Err(e.into()),
    }
    unmark(file)
}

/// Makes what was written to `files` (content, extended attributes, times)
/// durable: one file is synced by itself; for more, each file system they
/// are on is synced once (`syncfs`, which reports write-back errors), which
/// costs a batch of thousands of small files one flush instead of one each.
pub fn make_durable(files: &[&File]) -> io::Result<()> {
    let unknown: Vec<(Option<u64>, &File)> = files.iter().map(|f| (None, *f)).collect();
    make_durable_on(&unknown)
}

/// [`make_durable`], with the device each file is on where the caller
/// knows it (a `stat` of each file spared).
pub fn make_durable_on(files: &[(Option<u64>, &File)]) -> io::Result<()> {
    match files {
        [] => Ok(()),
        [(_, one)] => Ok(rustix::fs::fsync(one)?),
        many => {
            let mut devices = std::collections::HashSet::new();
            for &(dev, f) in many {
                let dev = match dev {
                    Some(dev) => dev,
                    None => rustix::fs::fstat(f)?.st_dev,
                };
                if devices.insert(dev) {
                    syncfs_shared(dev, f)?;
                }
            }
            Ok(())
        }
    }
}

/// Starts the write-back of what a recall writes while it goes on writing:
/// every [`Writeback::KICK`] bytes, a `syncfs` on a thread of its own. The
/// flush that makes the content durable before its stub records go (see
/// [`make_durable`]) then finds most of it on disk already, instead of all
/// of it still to write after the last byte. Nothing is promised by a
/// kick: only that flush counts. A kick's `syncfs` runs on a descriptor of
/// its own (the written file's folder, opened anew): `syncfs` reports a
/// write-back error once per open description, and on the written file's
/// own (or a `dup` of it) a kick could take the error that the flush must
/// report.
#[derive(Default)]
pub struct Writeback {
    /// Bytes written since the last kick.
    unkicked: u64,
    /// Write-backs kicked off.
    kicked: u64,
    kicker: Option<Kicker>,
}

/// The thread that flushes, and whether a flush is under way.
struct Kicker {
    kicks: std::sync::mpsc::SyncSender<()>,
    busy: Arc<AtomicBool>,
}

impl Writeback {
    /// Written bytes between two kicks.
    pub const KICK: u64 = 32 << 20;

    /// Counts `n` bytes just written to `file`; kicks off a write-back of
    /// its file system when enough have been written and none is under way.
    pub fn wrote(&mut self, file: &File, n: u64) {
        self.unkicked += n;
        if self.unkicked < Self::KICK {
            return;
        }
        if self.kicker.is_none() {
            // Where the kicks flush from: the first written file's folder.
            let Some(folder) = own_handle(file) else {
                self.unkicked = 0;
                return;
            };
            let (kicks, rx) = std::sync::mpsc::sync_channel::<()>(1);
            let busy = Arc::new(AtomicBool::new(false));
            let flag = busy.clone();
            let started = std::thread::Builder::new().spawn(move || {
                for () in rx {
                    // Its error is this descriptor's alone: the flush that
                    // counts meets it on its own.
                    let _ = rustix::fs::syncfs(&folder);
                    flag.store(false, Ordering::Release);
                }
            });
            if started.is_err() {
                self.unkicked = 0;
                return;
            }
            self.kicker = Some(Kicker { kicks, busy });
        }
        let kicker = self.kicker.as_ref().expect("just made");
        // A write-back under way: a later write kicks again.
        if kicker.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        if kicker.kicks.try_send(()).is_ok() {
            self.unkicked = 0;
            self.kicked += 1;
        } else {
            kicker.busy.store(false, Ordering::Release);
        }
    }
}

/// The folder of the file `file` is open as, opened anew (a descriptor of
/// its own, on the same file system). A folder's open raises no fault-in
/// event.
fn own_handle(file: &File) -> Option<File> {
    let link = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(file)
    ))
    .ok()?;
    File::open(link.parent()?).ok()
}

/// The `syncfs` calls of this process, per file system: begun, ended,
/// whether one is under way, and the last that failed.
#[derive(Default)]
struct FlushState {
    begun: u64,
    ended: u64,
    running: bool,
    failed: Option<(u64, io::ErrorKind, String)>,
}

struct Flushes {
    state: Mutex<HashMap<u64, FlushState>>,
    ended: Condvar,
}

/// `syncfs` of the file system `dev` that `file` is on, shared by the
/// threads of this process: what was written before this call is durable
/// once a flush that began after it has ended, whichever thread began it.
/// A caller that finds a flush under way waits for it, then begins the next
/// one, or finds that another waiter already has (one flush then serves
/// every pass that waited, instead of one each in a row). The error of a
/// flush under way at the call is this caller's too. One that ended
/// before the call is not: the caller's own descriptor, open since before
/// its writes, reports it when the caller begins the next flush itself,
/// but not when another caller's newer descriptor does.
fn syncfs_shared(dev: u64, file: &File) -> io::Result<()> {
    static FLUSHES: OnceLock<Flushes> = OnceLock::new();
    let flushes = FLUSHES.get_or_init(|| Flushes {
        state: Mutex::new(HashMap::new()),
        ended: Condvar::new(),
    });
    let mut all = flushes.state.lock().expect("flushes");
    // A flush under way may have begun before this caller's writes: the
    // next one counts. But its error counts too: it may have written this
    // caller's data back, and taken the error on its own descriptor.
    let s = all.entry(dev).or_default();
    let need = s.begun + 1;
    let fails_from = if s.running { s.begun } else { need };
    loop {
        let s = all.get_mut(&dev).expect("entered above");
        if s.ended >= need {
            return match &s.failed {
                Some((at, kind, what)) if *at >= fails_from => {
                    Err(io::Error::new(*kind, what.clone()))
                }
                _ => Ok(()),
            };
        }
        if !s.running {
            s.running = true;
            s.begun += 1;
            let mine = s.begun;
            drop(all);
            let result = rustix::fs::syncfs(file).map_err(io::Error::from);
            all = flushes.state.lock().expect("flushes");
            let s = all.get_mut(&dev).expect("entered above");
            s.running = false;
            s.ended = mine;
            if let Err(e) = &result {
                s.failed = Some((mine, e.kind(), e.to_string()));
            }
            flushes.ended.notify_all();
            return result;
        }
        all = flushes.ended.wait(all).expect("flushes");
    }
}

/// Frees the blocks of the file's first `size` bytes (its content, `size`
/// being its length), keeping its size. The hole ends on a block boundary
/// past the end (of the file's preferred I/O size, 4 KiB at least: a whole
/// number of blocks on ext4, xfs and btrfs): a hole that ends inside a
/// block frees the blocks before it and only zeroes the rest of that one,
/// which a release of a file whose length is not a whole number of blocks
/// would then keep allocated.
pub fn punch(file: &File, size: u64) -> io::Result<()> {
    if size == 0 {
        return Ok(());
    }
    let block = rustix::fs::fstat(file)
        .ok()
        .and_then(|st| u64::try_from(st.st_blksize).ok())
        .unwrap_or(0)
        .max(4096);
    rustix::fs::fallocate(
        file,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        0,
        size.div_ceil(block).saturating_mul(block),
    )?;
    Ok(())
}

/// Sets the file's modification time (the access time is left alone).
pub fn set_mtime(file: &File, mtime: Timestamp) -> io::Result<()> {
    rustix::fs::futimens(
        file,
        &Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            },
            last_modification: Timespec {
                tv_sec: mtime.secs,
                tv_nsec: i64::from(mtime.nanos),
            },
        },
    )?;
    Ok(())
}

/// A write lease held on an open file: no other process has the file
/// open, and one that opens it waits until the lease is dropped. Dropped
/// with this value.
pub struct Leased<'f> {
    fd: BorrowedFd<'f>,
}

impl Leased<'_> {
    /// Whether the lease is still whole: no other process asked to open
    /// the file since it was taken.
    pub fn intact(&self) -> bool {
        matches!(sys::lease(self.fd), Ok(sys::Lease::Write))
    }
}

impl Drop for Leased<'_> {
    fn drop(&mut self) {
        let _ = sys::drop_lease(self.fd);
    }
}

/// Takes a write lease on `file`, waiting up to `patience` while other
/// descriptors of it close (a fault-in handler answering this process's
/// own open holds one for a moment). `None`: the file stays in use.
pub fn lease(file: &File, patience: Duration) -> io::Result<Option<Leased<'_>>> {
    sys::ignore_lease_signals();
    let started = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        match sys::take_write_lease(file.as_fd()) {
            Ok(()) => return Ok(Some(Leased { fd: file.as_fd() })),
            Err(e)
                if e.raw_os_error() == Some(libc::EAGAIN)
                    || e.raw_os_error() == Some(libc::EBUSY) =>
            {
                if started.elapsed() >= patience {
                    return Ok(None);
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A process's claim on a stub (see [`claim`]), dropped with this value.
pub struct Claim<'f> {
    fd: BorrowedFd<'f>,
}

impl Claim<'_> {
    /// Keeps the claim beyond this value: it goes when this process closes
    /// any descriptor of the file.
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let _ = sys::release_claim(self.fd);
    }
}

/// Claims a file open for writing for a release or a recall: a record
/// lock on a byte no application uses, which a fault-in handler sees (with
/// this process's pid) in `/proc/locks`. The handler lets this process's
/// own reads and writes of the file through untouched, and makes every
/// other process's access wait until the claim is dropped, then fills the
/// file if it is still a stub. `None`: another process holds a claim.
///
/// Keep every descriptor of the file open while the claim is held (a
/// record lock goes when this process closes any of them).
pub fn claim(file: &File) -> io::Result<Option<Claim<'_>>> {
    Ok(sys::take_claim(file.as_fd())?.then(|| Claim { fd: file.as_fd() }))
}

/// Whether process `pid` holds a claim on the inode `(dev, ino)`. From
/// `/proc/locks`, whose lines read `N: POSIX ADVISORY WRITE PID
/// MAJ:MIN:INO START END` (device numbers in hex; a waiter's line has `->`
/// after the number).
pub fn claim_holder(pid: i32, dev: u64, ino: u64) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/locks") else {
        return false;
    };
    let want_dev = format!(
        "{:02x}:{:02x}:{ino}",
        libc::major(dev as libc::dev_t),
        libc::minor(dev as libc::dev_t)
    );
    let start = sys::CLAIM_OFFSET.to_string();
    text.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.get(1) == Some(&"POSIX")
            && words.get(3) == Some(&"WRITE")
            && words.get(4).and_then(|p| p.parse::<i32>().ok()) == Some(pid)
            && words.get(5) == Some(&want_dev.as_str())
            && words.get(6) == Some(&start.as_str())
    })
}

/// A handler's claim on a stub it fills, taken once no release or recall
/// claims it; dropped with this value.
pub struct HandlerClaim<'f> {
    fd: BorrowedFd<'f>,
}

impl Drop for HandlerClaim<'_> {
    fn drop(&mut self) {
        let _ = sys::release_ofd_claim(self.fd);
    }
}

/// How long a handler waits for another process's claim on a stub (a
/// release or recall takes well under a second per file): a claim held
/// longer is a process that blocks others, and the waiting readers get
/// `EIO`.
pub const CLAIM_PATIENCE: Duration = Duration::from_secs(60);

/// Waits until no process claims the file, then claims it for a handler;
/// fails (`WouldBlock`) if another process still claims it after
/// [`CLAIM_PATIENCE`].
pub fn wait_claim(file: &File) -> io::Result<HandlerClaim<'_>> {
    if !sys::wait_ofd_claim(file.as_fd(), CLAIM_PATIENCE)? {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "another process has claimed it for more than {} s",
                CLAIM_PATIENCE.as_secs()
            ),
        ));
    }
    Ok(HandlerClaim { fd: file.as_fd() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_claim_is_seen_in_proc_locks_and_a_handler_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"data").unwrap();
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap()
        };
        let file = open();
        let m = file.metadata().unwrap();
        let me = std::process::id() as i32;
        let claimed = claim(&file).unwrap().expect("free");
        assert!(claim_holder(me, m.dev(), m.ino()));
        assert!(!claim_holder(me + 1, m.dev(), m.ino()));
        // A handler (another open file description) waits for it.
        let other = open();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let c = wait_claim(&other).unwrap();
            tx.send(()).unwrap();
            drop(c);
        });
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(claimed);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        waiter.join().unwrap();
        assert!(!claim_holder(me, m.dev(), m.ino()));
    }

    #[test]
    fn a_write_back_is_kicked_off_every_so_many_bytes_and_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        let mut wb = Writeback::default();
        wb.wrote(&file, Writeback::KICK - 1);
        assert_eq!((wb.kicked, wb.kicker.is_none()), (0, true), "not yet");
        wb.wrote(&file, 1);
        assert_eq!((wb.kicked, wb.unkicked), (1, 0));
        // While that flush runs, no other is kicked; once it has ended,
        // the next write kicks again.
        let busy = wb.kicker.as_ref().unwrap().busy.clone();
        let idle = || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while busy.load(Ordering::Acquire) {
                assert!(Instant::now() < deadline, "the flush never ended");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        idle();
        wb.wrote(&file, Writeback::KICK);
        assert_eq!(wb.kicked, 2);
        idle();
        // As if a flush were under way.
        busy.store(true, Ordering::Release);
        wb.wrote(&file, 2 * Writeback::KICK);
        assert_eq!(
            (wb.kicked, wb.unkicked),
            (2, 2 * Writeback::KICK),
            "one at a time"
        );
    }

    #[test]
    fn a_lease_is_broken_by_another_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"data").unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        // Some file systems (overlays) refuse leases; the ones tiered do not.
        let Ok(Some(leased)) = lease(&file, Duration::from_millis(100)) else {
            eprintln!("no leases on {}", dir.path().display());
            return;
        };
        assert!(leased.intact());
        // Another descriptor cannot be opened without breaking it: with
        // O_NONBLOCK the open fails at once and the lease shows the break.
        let other = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path);
        assert!(other.is_err());
        assert!(!leased.intact());
        drop(leased);
    }

    use std::os::unix::fs::OpenOptionsExt;
}
