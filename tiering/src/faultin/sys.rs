//! The system calls fault-in needs that no safe crate offers: fanotify
//! (with the pre-content constants this platform's headers and the libc
//! crate do not define yet), file leases, a shared memory journal, and
//! taking ownership of descriptors the kernel or a parent handed over.
//!
//! This is the only module of the crate with `unsafe` code. Every block
//! says why it is sound; everything it exports is safe to call.

#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// A process is about to read or write a range of a file (Linux 6.14):
/// `FAN_PRE_ACCESS`, not in the headers of this platform.
pub const FAN_PRE_ACCESS: u64 = 0x0010_0000;
/// The info record of a pre-content event: `{hdr, u32 pad, u64 offset,
/// u64 count}`.
pub const FAN_EVENT_INFO_TYPE_RANGE: u8 = 6;
/// The size of a metadata record (`struct fanotify_event_metadata`).
pub const EVENT_METADATA_LEN: usize = 24;

/// `FAN_DENY_ERRNO(e)`: deny, and make the access fail with `errno`
/// (pre-content groups only, Linux 6.14).
pub const fn fan_deny_errno(errno: i32) -> u32 {
    libc::FAN_DENY | (((errno as u32) & 0xff) << 24)
}

/// A fanotify group of the pre-content class.
#[derive(Debug)]
pub struct Group {
    fd: OwnedFd,
}

impl Group {
    /// A new pre-content group: permission events, events with file
    /// descriptors opened read-write, no limit on queued events or marks.
    pub fn new() -> io::Result<Group> {
        let flags = libc::FAN_CLASS_PRE_CONTENT
            | libc::FAN_CLOEXEC
            | libc::FAN_UNLIMITED_QUEUE
            | libc::FAN_UNLIMITED_MARKS;
        let event_flags = (libc::O_RDWR | libc::O_LARGEFILE | libc::O_CLOEXEC) as libc::c_uint;
        // SAFETY: fanotify_init takes two integers and returns a new
        // descriptor or -1; no memory is shared with the kernel.
        let fd = unsafe { libc::fanotify_init(flags, event_flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by fanotify_init: it is open and
        // nothing else owns it.
        Ok(Group {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The group whose descriptor a parent handed down, checked to be a
    /// fanotify group.
    pub fn from_owned(fd: OwnedFd) -> io::Result<Group> {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
        if !info.contains("fanotify flags:") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the descriptor handed down is not a fanotify group",
            ));
        }
        Ok(Group { fd })
    }

    fn mark(&self, flags: libc::c_uint, mask: u64, path: &Path) -> io::Result<()> {
        let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with NUL"))?;
        // SAFETY: `c` is a NUL-terminated string that outlives the call;
        // the other arguments are plain integers.
        let r = unsafe {
            libc::fanotify_mark(self.fd.as_raw_fd(), flags, mask, libc::AT_FDCWD, c.as_ptr())
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Watches the mount that holds `path`: opens (`FAN_OPEN_PERM`) and
    /// reads and writes (`FAN_PRE_ACCESS`) of every file on it wait for
    /// this group's answer.
    pub fn mark_mount(&self, path: &Path) -> io::Result<()> {
        self.mark(
            libc::FAN_MARK_ADD | libc::FAN_MARK_MOUNT,
            libc::FAN_OPEN_PERM | FAN_PRE_ACCESS,
            path,
        )
    }

    /// Stops events of the inode `path` names, until it is modified (the
    /// mark does not survive a modification, so a release, which punches
    /// the file's content out, brings the events back) or evicted.
    pub fn ignore_inode(&self, path: &Path) -> io::Result<()> {
        self.mark(
            libc::FAN_MARK_ADD | libc::FAN_MARK_IGNORE | libc::FAN_MARK_EVICTABLE,
            libc::FAN_OPEN_PERM | FAN_PRE_ACCESS,
            path,
        )
    }

    /// Reads queued events into `buf`; blocks until there is one.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match rustix::io::read(&self.fd, &mut *buf) {
                Ok(n) => return Ok(n),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Answers the permission event whose descriptor number is `fd`:
    /// allow, or deny with `errno` (the access fails with it).
    pub fn respond(&self, fd: RawFd, deny: Option<i32>) -> io::Result<()> {
        let response = match deny {
            None => libc::FAN_ALLOW,
            Some(errno) => fan_deny_errno(errno),
        };
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&fd.to_ne_bytes());
        bytes[4..].copy_from_slice(&response.to_ne_bytes());
        rustix::io::write(&self.fd, &bytes)?;
        Ok(())
    }

    /// A copy of the group's descriptor without close-on-exec, for a child
    /// process to inherit.
    pub fn inheritable(&self) -> io::Result<OwnedFd> {
        inheritable(self.fd.as_fd())
    }
}

impl AsFd for Group {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A copy of `fd` (at 3 or above) without close-on-exec.
pub fn inheritable(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let dup = rustix::io::fcntl_dupfd_cloexec(fd, 3)?;
    rustix::io::fcntl_setfd(&dup, rustix::io::FdFlags::empty())?;
    Ok(dup)
}

/// Takes ownership of a descriptor number a parent process handed down
/// (named in the environment), after checking it is open; marks it
/// close-on-exec.
pub fn inherited_fd(raw: RawFd) -> io::Result<OwnedFd> {
    if raw < 3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {raw} cannot be a handed-down group"),
        ));
    }
    // SAFETY: fcntl(F_GETFD) only asks whether the number is open.
    if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the number is open (checked above) and this process owns it:
    // the parent opened it for this process, and this is the one place that
    // takes it (the environment variable naming it is removed by the caller).
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
    Ok(fd)
}

/// Takes ownership of the descriptor of a fanotify event: the kernel
/// installed it in this process when the event was read.
///
/// # Safety
///
/// `raw` must be the `fd` field of an event this process just read from a
/// fanotify group (not `FAN_NOFD`), and nothing else may own it.
pub unsafe fn event_fd(raw: RawFd) -> OwnedFd {
    // SAFETY: the caller guarantees the kernel installed `raw` for this
    // process and that this is its only owner.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// What lease a file has, as `F_GETLEASE` tells its holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// None (or it was broken).
    None,
    /// A read lease.
    Read,
    /// A write lease: no other process has the file open.
    Write,
}

fn fcntl_int(fd: BorrowedFd<'_>, cmd: libc::c_int, arg: libc::c_int) -> io::Result<libc::c_int> {
    // SAFETY: F_SETLEASE and F_GETLEASE take an integer argument and share
    // no memory with the kernel; `fd` is open for the duration (borrowed).
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, arg) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// Takes a write lease on an open file: refused (`EAGAIN`) while any
/// other descriptor of the file is open; once held, another process that
/// opens the file waits until the lease is dropped (or the kernel's
/// `lease-break-time` passes). The process must ignore `SIGIO`
/// ([`ignore_lease_signals`]).
pub fn take_write_lease(fd: BorrowedFd<'_>) -> io::Result<()> {
    fcntl_int(fd, libc::F_SETLEASE, libc::F_WRLCK).map(|_| ())
}

/// Drops a lease this process holds.
pub fn drop_lease(fd: BorrowedFd<'_>) -> io::Result<()> {
    fcntl_int(fd, libc::F_SETLEASE, libc::F_UNLCK).map(|_| ())
}

/// The lease this process holds on `fd`: [`Lease::Write`] while it is
/// intact, something else once another process asked to open the file.
pub fn lease(fd: BorrowedFd<'_>) -> io::Result<Lease> {
    Ok(match fcntl_int(fd, libc::F_GETLEASE, 0)? {
        x if x == libc::F_WRLCK => Lease::Write,
        x if x == libc::F_RDLCK => Lease::Read,
        _ => Lease::None,
    })
}

/// The byte a *claim* locks: far past the end of any real file, so that no
/// application's own record locks meet it.
pub const CLAIM_OFFSET: i64 = 0x7fff_ffff_ffff_0000;

fn claim_lock(ty: libc::c_short) -> libc::flock {
    // SAFETY: `flock` is a plain C struct of integers: all zeros is valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ty;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = CLAIM_OFFSET;
    fl.l_len = 1;
    fl
}

fn fcntl_lock(fd: BorrowedFd<'_>, cmd: libc::c_int, fl: &mut libc::flock) -> io::Result<()> {
    loop {
        // SAFETY: `fl` is a valid, exclusively borrowed flock for the
        // duration of the call; `fd` is open (borrowed).
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, fl as *mut libc::flock) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Takes this process's *claim* on a file open for writing: a POSIX
/// write lock on [`CLAIM_OFFSET`], which `/proc/locks` shows with the
/// holder's pid. `Ok(false)`: another process (or a handler) holds it.
/// Released by [`release_claim`], or when this process closes any
/// descriptor of the file.
pub fn take_claim(fd: BorrowedFd<'_>) -> io::Result<bool> {
    match fcntl_lock(
        fd,
        libc::F_SETLK,
        &mut claim_lock(libc::F_WRLCK as libc::c_short),
    ) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Drops this process's claim.
pub fn release_claim(fd: BorrowedFd<'_>) -> io::Result<()> {
    fcntl_lock(
        fd,
        libc::F_SETLK,
        &mut claim_lock(libc::F_UNLCK as libc::c_short),
    )
}

/// Waits up to `patience` until no process claims the file, then holds
/// the claim byte with an open-file-description lock (a handler's: closing
/// other descriptors of the file does not drop it). `Ok(false)`: still
/// claimed. Dropped by [`release_ofd_claim`] or when `fd` closes.
pub fn wait_ofd_claim(fd: BorrowedFd<'_>, patience: std::time::Duration) -> io::Result<bool> {
    let until = std::time::Instant::now() + patience;
    loop {
        let mut fl = claim_lock(libc::F_WRLCK as libc::c_short);
        fl.l_pid = 0;
        match fcntl_lock(fd, libc::F_OFD_SETLK, &mut fl) {
            Ok(()) => return Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => {
                if std::time::Instant::now() >= until {
                    return Ok(false);
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Drops a handler's claim.
pub fn release_ofd_claim(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut fl = claim_lock(libc::F_UNLCK as libc::c_short);
    fl.l_pid = 0;
    fcntl_lock(fd, libc::F_OFD_SETLK, &mut fl)
}

/// Asks the kernel to send this process `SIGTERM` when its parent (the
/// guard) dies; `false` if the parent is already gone (or is not `parent`).
pub fn term_with_parent(parent: i32) -> bool {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number; no memory is shared.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGTERM as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    // SAFETY: getppid has no arguments and cannot fail.
    unsafe { libc::getppid() == parent }
}

/// Ignores `SIGIO`, which the kernel sends a lease holder when another
/// process opens its file (its default action ends the process). The
/// holder asks [`lease`] instead.
pub fn ignore_lease_signals() {
    // SAFETY: setting SIGIO's disposition to SIG_IGN installs no handler
    // code; it is a process-wide setting with no memory shared.
    unsafe {
        libc::signal(libc::SIGIO, libc::SIG_IGN);
    }
}

/// The shared journal's layout: a header, the landing buffer events are
/// read into, and a table of the event descriptors a handler still owes
/// an answer.
const HEADER: usize = 64;
const MAGIC: &[u8; 8] = b"CBFSFANJ";
/// Bytes events are read into at a time.
pub const LANDING: usize = 16 << 10;
/// Events a handler may hold unanswered at once.
pub const SLOTS: usize = 4096;
const JOURNAL_LEN: usize = HEADER + LANDING + SLOTS * 4;

/// Memory shared by the guard and the handler: what the handler read
/// from the group and has not answered yet, so that if the handler dies,
/// the guard can answer for it (deny with `EIO`) instead of leaving the
/// readers to the kernel, which would let them read a stub's zeros.
///
/// The handler reads events straight into the landing buffer (the kernel
/// writes them there during `read`), then moves each event's descriptor
/// into a slot, then clears the landing buffer; a slot is freed once the
/// event is answered. Whatever the moment the handler dies, every event
/// it read and did not answer is in the landing buffer or in a slot.
pub struct SharedJournal {
    fd: OwnedFd,
    base: NonNull<u8>,
    reading: Mutex<()>,
}

// SAFETY: the mapping is shared memory that lives as long as the journal;
// the landing buffer is written only under `reading`, and the slots only
// through atomics.
unsafe impl Send for SharedJournal {}
// SAFETY: as above.
unsafe impl Sync for SharedJournal {}

impl std::fmt::Debug for SharedJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedJournal")
            .field("fd", &self.fd)
            .finish()
    }
}

impl SharedJournal {
    /// A new, empty journal (an anonymous memory file).
    pub fn create() -> io::Result<SharedJournal> {
        let fd =
            rustix::fs::memfd_create("cbfs-fault-in-journal", rustix::fs::MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&fd, JOURNAL_LEN as u64)?;
        let mut j = Self::map(fd)?;
        j.header_mut().copy_from_slice(MAGIC);
        Ok(j)
    }

    /// The journal a parent handed down.
    pub fn from_owned(fd: OwnedFd) -> io::Result<SharedJournal> {
        let st = rustix::fs::fstat(&fd)?;
        if st.st_size as usize != JOURNAL_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the descriptor handed down is not a fault-in journal",
            ));
        }
        let j = Self::map(fd)?;
        if j.header() != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the descriptor handed down is not a fault-in journal",
            ));
        }
        Ok(j)
    }

    fn map(fd: OwnedFd) -> io::Result<SharedJournal> {
        // SAFETY: a fresh shared mapping of the whole memory file, which
        // is exactly JOURNAL_LEN long; the pointer is checked below and
        // unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                JOURNAL_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(SharedJournal {
            fd,
            base,
            reading: Mutex::new(()),
        })
    }

    fn header(&self) -> &[u8] {
        // SAFETY: the first 8 bytes of the mapping; written only by
        // `header_mut`, through the sole owner, before it is shared.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), MAGIC.len()) }
    }

    fn header_mut(&mut self) -> &mut [u8] {
        // SAFETY: the first 8 bytes of the mapping; `&mut self` is the
        // only access, in `create`, before the journal is shared.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), MAGIC.len()) }
    }

    fn slot(&self, i: usize) -> &AtomicU32 {
        assert!(i < SLOTS, "slot {i} out of range");
        // SAFETY: the slot table starts after the header and the landing
        // buffer, 4-byte aligned (the mapping is page aligned and HEADER +
        // LANDING is a multiple of 4), and slot `i` lies inside the mapping.
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(HEADER + LANDING + i * 4)
                .cast::<AtomicU32>()
        }
    }

    /// Reads events from `group` into the landing buffer (cleared first)
    /// and gives a copy of what was read. The landing buffer keeps them
    /// until [`clear_landing`](Self::clear_landing).
    pub fn read_events(&self, group: &Group) -> io::Result<Vec<u8>> {
        let _only = self.reading.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the landing buffer lies inside the mapping; only this
        // function (under `reading`) and `clear_landing` (same lock) write
        // it, and `orphans` reads it only after the handler died.
        let landing =
            unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(HEADER), LANDING) };
        landing.fill(0);
        let n = group.read(landing)?;
        Ok(landing[..n].to_vec())
    }

    /// Forgets the landing buffer once its events are in slots.
    pub fn clear_landing(&self) {
        let _only = self.reading.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: as in `read_events`.
        let landing =
            unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(HEADER), LANDING) };
        landing.fill(0);
    }

    /// Records that event descriptor `fd` awaits an answer, in slot `i`.
    pub fn hold(&self, i: usize, fd: RawFd) {
        self.slot(i).store(fd as u32 + 1, Ordering::SeqCst);
    }

    /// Frees slot `i`: its event was answered.
    pub fn answered(&self, i: usize) {
        self.slot(i).store(0, Ordering::SeqCst);
    }

    /// The descriptor numbers of events a dead handler read and did not
    /// answer: in the landing buffer and in the slots. Each once.
    pub fn orphans(&self) -> Vec<RawFd> {
        let _only = self.reading.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: as in `read_events`; the handler that wrote it is dead.
        let landing =
            unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(HEADER), LANDING) };
        let mut out: Vec<RawFd> = events(landing)
            .into_iter()
            .filter(|e| e.fd >= 0)
            .map(|e| e.fd)
            .collect();
        for i in 0..SLOTS {
            let v = self.slot(i).load(Ordering::SeqCst);
            if v != 0 {
                out.push((v - 1) as RawFd);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Clears everything (after the orphans were answered).
    pub fn reset(&self) {
        self.clear_landing();
        for i in 0..SLOTS {
            self.answered(i);
        }
    }

    /// A copy of the journal's descriptor without close-on-exec, for a
    /// child process to inherit.
    pub fn inheritable(&self) -> io::Result<OwnedFd> {
        inheritable(self.fd.as_fd())
    }
}

impl Drop for SharedJournal {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; nothing
        // borrowed from it outlives `self`.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), JOURNAL_LEN);
        }
    }
}

/// One event as read from a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// What happened (`FAN_OPEN_PERM`, `FAN_PRE_ACCESS`).
    pub mask: u64,
    /// The descriptor of the file, installed in the reading process.
    pub fd: RawFd,
    /// The process that asked (its thread group).
    pub pid: i32,
    /// For `FAN_PRE_ACCESS`: the range about to be read or written.
    pub range: Option<(u64, u64)>,
}

/// Parses the events of one `read` (strictly: a record that does not fit,
/// or of another metadata version, ends the parse).
pub fn events(buf: &[u8]) -> Vec<RawEvent> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let u32_at = |b: &[u8], i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |b: &[u8], i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    while buf.len() - at >= EVENT_METADATA_LEN {
        let rec = &buf[at..];
        let len = u32_at(rec, 0) as usize;
        let vers = rec[4];
        let meta_len = u16::from_ne_bytes([rec[6], rec[7]]) as usize;
        if len < EVENT_METADATA_LEN
            || len > rec.len()
            || vers != libc::FANOTIFY_METADATA_VERSION
            || meta_len < EVENT_METADATA_LEN
            || meta_len > len
        {
            break;
        }
        let mask = u64_at(rec, 8);
        let fd = u32_at(rec, 16) as i32;
        let pid = u32_at(rec, 20) as i32;
        let mut range = None;
        let mut info = meta_len;
        while len - info >= 4 {
            let kind = rec[info];
            let ilen = u16::from_ne_bytes([rec[info + 2], rec[info + 3]]) as usize;
            if ilen < 4 || ilen > len - info {
                break;
            }
            if kind == FAN_EVENT_INFO_TYPE_RANGE && ilen >= 24 {
                range = Some((u64_at(rec, info + 8), u64_at(rec, info + 16)));
            }
            info += ilen;
        }
        out.push(RawEvent {
            mask,
            fd,
            pid,
            range,
        });
        at += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(fd: i32, mask: u64, range: Option<(u64, u64)>) -> Vec<u8> {
        let len = if range.is_some() { 48 } else { 24 };
        let mut b = Vec::new();
        b.extend_from_slice(&(len as u32).to_ne_bytes());
        b.push(libc::FANOTIFY_METADATA_VERSION);
        b.push(0);
        b.extend_from_slice(&24u16.to_ne_bytes());
        b.extend_from_slice(&mask.to_ne_bytes());
        b.extend_from_slice(&fd.to_ne_bytes());
        b.extend_from_slice(&77i32.to_ne_bytes());
        if let Some((off, count)) = range {
            b.push(FAN_EVENT_INFO_TYPE_RANGE);
            b.push(0);
            b.extend_from_slice(&24u16.to_ne_bytes());
            b.extend_from_slice(&0u32.to_ne_bytes());
            b.extend_from_slice(&off.to_ne_bytes());
            b.extend_from_slice(&count.to_ne_bytes());
        }
        b
    }

    #[test]
    fn parses_events_and_their_ranges_and_stops_at_damage() {
        let mut buf = event(5, libc::FAN_OPEN_PERM, None);
        buf.extend(event(6, FAN_PRE_ACCESS, Some((4096, 8192))));
        let got = events(&buf);
        assert_eq!(
            got,
            [
                RawEvent {
                    mask: libc::FAN_OPEN_PERM,
                    fd: 5,
                    pid: 77,
                    range: None
                },
                RawEvent {
                    mask: FAN_PRE_ACCESS,
                    fd: 6,
                    pid: 77,
                    range: Some((4096, 8192))
                }
            ]
        );
        // Zeroed memory, a cut record, another version: nothing more.
        assert!(events(&[0u8; 64]).is_empty());
        assert_eq!(events(&buf[..40]).len(), 1);
        let mut other = event(5, libc::FAN_OPEN_PERM, None);
        other[4] = 2;
        assert!(events(&other).is_empty());
    }

    #[test]
    fn the_journal_keeps_what_was_not_answered() {
        let j = SharedJournal::create().unwrap();
        assert!(j.orphans().is_empty());
        j.hold(0, 7);
        j.hold(9, 12);
        j.answered(0);
        assert_eq!(j.orphans(), [12]);
        // A second mapping of the same memory (as a child process has) sees it.
        let copy = SharedJournal::from_owned(j.inheritable().unwrap()).unwrap();
        assert_eq!(copy.orphans(), [12]);
        copy.reset();
        assert!(j.orphans().is_empty());
        assert_eq!(fan_deny_errno(libc::EIO), libc::FAN_DENY | (5 << 24));
    }
}
