//! The audit log: every decision a node makes, append-only and hash-chained.
//!
//! `DATA/audit/audit.log` holds one JSON object per line. Each entry has a
//! sequence number `seq` (from 1), the time, `prev` (the hex SHA-256 of the
//! previous line's bytes, without its newline; the first entry's `prev` is
//! [`genesis`]), then what happened: the event, who, which scope and path,
//! how many capsules, `allow` or `deny`, the deciding policies and why.
//! Each line is written whole, in order, as the decision is made;
//! [`AuditLog::append`] also makes it durable (fsync) before the caller
//! answers. A service that audits many low-stakes decisions may write them
//! with [`AuditLog::write`] and make them durable in groups with
//! [`AuditLog::sync`] (one fsync for all written since the last).
//!
//! `DATA/audit/head` holds the `seq` and hash of the last durable entry,
//! replaced atomically at each sync, so that cutting entries off the end
//! shows too (unless the head is rewritten along with them: anchor the head
//! elsewhere, for example by shipping it off the machine, for that).
//! Entries after the head (written, not yet synced when the process
//! stopped) must chain to it; they are reported, and taken into the head
//! when the log is next opened.
//!
//! [`verify`] walks the chain and names the first entry that was edited,
//! deleted, inserted or moved.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const GENESIS_DOMAIN: &[u8] = b"cbfs-delegation audit log v1 genesis";
const LOG_NAME: &str = "audit.log";
const HEAD_NAME: &str = "head";

/// The `prev` of the first entry: hex SHA-256 of
/// `cbfs-delegation audit log v1 genesis`.
pub fn genesis() -> String {
    hex::encode(Sha256::digest(GENESIS_DOMAIN))
}

fn line_hash(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// What happened, as the node records it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// `reencrypt`, `grant`, `revoke`, `policy-reload`, `start` or `stop`.
    pub event: String,
    /// The user the request names (not yet authenticated when the refusal
    /// came before the signature check: see `reason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The path prefix asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How many capsules the request held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capsules: Option<u64>,
    /// `allow` or `deny`.
    pub decision: String,
    /// The refusal code (see `wire::ErrorBody`), for denials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The policies that decided, when Cedar did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// Why.
    pub reason: String,
}

impl Event {
    /// An event of kind `event` with the given decision and reason.
    pub fn new(event: &str, allowed: bool, reason: impl Into<String>) -> Self {
        Event {
            event: event.to_owned(),
            decision: if allowed { "allow" } else { "deny" }.to_owned(),
            reason: reason.into(),
            ..Event::default()
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Entry {
    seq: u64,
    time: String,
    prev: String,
    #[serde(flatten)]
    event: Event,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Head {
    seq: u64,
    hash: String,
}

/// An open audit log, ready to append.
pub struct AuditLog {
    dir: PathBuf,
    file: File,
    seq: u64,
    prev: String,
    /// The last entry the head records (durable).
    synced: u64,
}

/// What [`verify`] found in a sound log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// How many entries.
    pub entries: u64,
    /// The hash of the last line (the chain's head), or [`genesis`].
    pub head: String,
    /// Whether a head file was there to compare with.
    pub head_file: bool,
    /// Entries after the head: written but not yet synced when the writer
    /// stopped. They chain to the head; nothing proves none was cut off
    /// after them.
    pub after_head: u64,
}

fn audit_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Audit {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The audit folder of a node's data folder.
pub fn audit_dir(data: &Path) -> PathBuf {
    data.join("audit")
}

impl AuditLog {
    /// Opens (or creates) the log in `dir` after checking the whole chain:
    /// a node does not append to a log that is already broken.
    pub fn open(dir: &Path) -> Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io("cannot create audit folder", dir, e))?;
        let verified = verify(dir).map_err(|e| match e {
            Error::Audit { path, reason } => Error::Audit {
                path,
                reason: format!(
                    "{reason}; the node will not append to a broken log: keep it as evidence, move it aside, and start again"
                ),
            },
            other => other,
        })?;
        let path = dir.join(LOG_NAME);
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("cannot open audit log", &path, e))?;
        let mut log = AuditLog {
            dir: dir.to_path_buf(),
            file,
            seq: verified.entries,
            prev: verified.head,
            synced: verified.entries - verified.after_head,
        };
        if verified.after_head > 0 {
            tracing::warn!(
                log = %path.display(),
                entries = verified.after_head,
                "the audit log holds entries written after its head (the last stop came before they were synced); they chain, and are taken in"
            );
            log.sync()?;
        }
        Ok(log)
    }

    /// Appends one entry and makes it (and every entry written before it)
    /// durable: line, fsync, then head.
    pub fn append(&mut self, event: &Event) -> Result<()> {
        self.write(event)?;
        self.sync()
    }

    /// Writes one entry, in order, without waiting for it to be durable:
    /// the next [`sync`](Self::sync) (or [`append`](Self::append)) makes it so.
    pub fn write(&mut self, event: &Event) -> Result<()> {
        let entry = Entry {
            seq: self.seq + 1,
            time: now(),
            prev: self.prev.clone(),
            event: event.clone(),
        };
        let line = serde_json::to_string(&entry).expect("audit entries serialize");
        let path = self.dir.join(LOG_NAME);
        let mut bytes = line.clone().into_bytes();
        bytes.push(b'\n');
        self.file
            .write_all(&bytes)
            .map_err(|e| Error::io("cannot append to audit log", &path, e))?;
        self.seq += 1;
        self.prev = line_hash(line.as_bytes());
        Ok(())
    }

    /// Makes every entry written so far durable, with one fsync and one
    /// head; nothing to do when none was written since the last.
    pub fn sync(&mut self) -> Result<()> {
        if self.synced == self.seq {
            return Ok(());
        }
        let path = self.dir.join(LOG_NAME);
        self.file
            .sync_data()
            .map_err(|e| Error::io("cannot append to audit log", &path, e))?;
        write_head(
            &self.dir,
            &Head {
                seq: self.seq,
                hash: self.prev.clone(),
            },
        )?;
        self.synced = self.seq;
        Ok(())
    }

    /// Whether entries were written that are not durable yet.
    pub fn unsynced(&self) -> bool {
        self.synced != self.seq
    }

    /// How many entries the log holds.
    pub fn len(&self) -> u64 {
        self.seq
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.seq == 0
    }
}

/// An [`AuditLog`] shared by a server's threads, with group commit: each
/// [`append`](Self::append) returns once its entry is durable, but one
/// fsync makes durable every entry written while the one before it ran.
/// Under load a server answers after one flush for a group of decisions
/// instead of one flush each, in series.
pub struct SharedAuditLog {
    log: std::sync::Mutex<AuditLog>,
    /// Held by the one thread that is flushing; the others wait for it, and
    /// then find their entries flushed (or flush what is left).
    flushing: std::sync::Mutex<()>,
    /// How many entries are known durable.
    durable: std::sync::atomic::AtomicU64,
}

impl SharedAuditLog {
    /// Opens the log in `dir` (see [`AuditLog::open`]).
    pub fn open(dir: &Path) -> Result<Self> {
        let log = AuditLog::open(dir)?;
        // `open` takes entries after the head into it: all are durable.
        let durable = std::sync::atomic::AtomicU64::new(log.len());
        Ok(SharedAuditLog {
            log: std::sync::Mutex::new(log),
            flushing: std::sync::Mutex::new(()),
            durable,
        })
    }

    fn log(&self) -> std::sync::MutexGuard<'_, AuditLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one entry and returns once it (and every entry before it)
    /// is durable.
    pub fn append(&self, event: &Event) -> Result<()> {
        self.append_seq(event).map(|_| ())
    }

    /// [`append`](Self::append), giving the entry's sequence number.
    fn append_seq(&self, event: &Event) -> Result<u64> {
        let seq = {
            let mut log = self.log();
            log.write(event)?;
            log.len()
        };
        self.sync_to(seq)?;
        Ok(seq)
    }

    /// Writes one entry, in order, without waiting for it to be durable
    /// (see [`AuditLog::write`]).
    pub fn write(&self, event: &Event) -> Result<()> {
        self.log().write(event)
    }

    /// Makes every entry written so far durable.
    pub fn sync(&self) -> Result<()> {
        let seq = self.log().len();
        self.sync_to(seq)
    }

    fn sync_to(&self, seq: u64) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.durable.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let _flushing = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        // Flushed by the thread this one waited for.
        if self.durable.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let mut log = self.log();
        log.sync()?;
        self.durable.store(log.len(), Ordering::Release);
        Ok(())
    }

    /// How many entries the log holds.
    pub fn len(&self) -> u64 {
        self.log().len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn now() -> String {
    cbfs_core::now()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 formatting of a UTC time succeeds")
}

fn write_head(dir: &Path, head: &Head) -> Result<()> {
    let tmp = dir.join("head.tmp");
    let path = dir.join(HEAD_NAME);
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(head).expect("heads serialize"))?;
        f.sync_data()?;
        fs::rename(&tmp, &path)
    };
    write().map_err(|e| Error::io("cannot write audit head", &path, e))
}

/// Checks the chain of the log in `dir` (an audit folder, or a node's data
/// folder holding `audit/`). Fails naming the first broken entry.
pub fn verify(dir: &Path) -> Result<Verified> {
    let dir = if dir.join(LOG_NAME).exists() || !audit_dir(dir).exists() {
        dir.to_path_buf()
    } else {
        audit_dir(dir)
    };
    let path = dir.join(LOG_NAME);
    let mut prev = genesis();
    let mut entries = 0u64;
    // The head names the last durable entry: its hash, once read.
    let head = read_head(&dir)?;
    let mut at_head: Option<String> = (head.as_ref().map(|h| h.seq) == Some(0)).then(genesis);
    match File::open(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("cannot read audit log", &path, e)),
        Ok(file) => {
            let mut reader = BufReader::new(file);
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = reader
                    .read_until(b'\n', &mut line)
                    .map_err(|e| Error::io("cannot read audit log", &path, e))?;
                if n == 0 {
                    break;
                }
                let at = entries + 1;
                if line.last() != Some(&b'\n') {
                    return Err(audit_error(
                        &path,
                        format!(
                            "line {at} is cut short (no newline): the last write was interrupted or the file was truncated"
                        ),
                    ));
                }
                line.pop();
                let entry: Entry = serde_json::from_slice(&line).map_err(|e| {
                    audit_error(
                        &path,
                        format!("line {at} is not an audit entry ({e}): it was edited"),
                    )
                })?;
                if entry.seq != at {
                    return Err(audit_error(
                        &path,
                        format!(
                            "line {at} has seq {}, expected {at}: entries were deleted, inserted or reordered before it",
                            entry.seq
                        ),
                    ));
                }
                if entry.prev != prev {
                    let what = if at == 1 {
                        "entry 1 does not start from the genesis value: the beginning of the log was cut off or replaced".to_owned()
                    } else {
                        format!(
                            "entry {at} does not chain to the entry before it: entry {} was edited, or entries around it were deleted or reordered",
                            at - 1
                        )
                    };
                    return Err(audit_error(&path, what));
                }
                prev = line_hash(&line);
                entries = at;
                if head.as_ref().map(|h| h.seq) == Some(at) {
                    at_head = Some(prev.clone());
                }
            }
        }
    }
    let Some(head) = head else {
        return Ok(Verified {
            entries,
            head: prev,
            head_file: false,
            after_head: 0,
        });
    };
    if head.seq > entries {
        return Err(audit_error(
            &path,
            format!(
                "the head records {} entries but the log holds {entries}: entries were cut off the end",
                head.seq
            ),
        ));
    }
    if at_head.as_deref() != Some(head.hash.as_str()) {
        return Err(audit_error(
            &path,
            format!("entry {} does not match the head: it was edited", head.seq),
        ));
    }
    Ok(Verified {
        entries,
        head: prev,
        head_file: true,
        after_head: entries - head.seq,
    })
}

fn read_head(dir: &Path) -> Result<Option<Head>> {
    let head_path = dir.join(HEAD_NAME);
    match fs::read(&head_path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot read audit head", &head_path, e)),
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| audit_error(&head_path, format!("not an audit head: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(n: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path()).unwrap();
        for i in 0..n {
            let mut e = Event::new("reencrypt", i % 2 == 0, format!("reason {i}"));
            e.user = Some("alice".into());
            e.capsules = Some(i as u64);
            log.append(&e).unwrap();
        }
        dir
    }

    fn lines(dir: &Path) -> Vec<String> {
        fs::read_to_string(dir.join(LOG_NAME))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn rewrite(dir: &Path, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        fs::write(dir.join(LOG_NAME), text).unwrap();
    }

    #[test]
    fn a_sound_log_verifies_and_reopens() {
        let dir = log_with(5);
        let v = verify(dir.path()).unwrap();
        assert_eq!(v.entries, 5);
        assert!(v.head_file);
        let mut log = AuditLog::open(dir.path()).unwrap();
        assert_eq!(log.len(), 5);
        log.append(&Event::new("stop", true, "bye")).unwrap();
        assert_eq!(verify(dir.path()).unwrap().entries, 6);
        let first: serde_json::Value = serde_json::from_str(&lines(dir.path())[0]).unwrap();
        assert_eq!(first["prev"], genesis());
        assert_eq!(first["decision"], "allow");
        assert_eq!(
            verify(tempfile::tempdir().unwrap().path()).unwrap().entries,
            0
        );
    }

    #[test]
    fn entries_written_after_the_last_sync_chain_and_are_taken_in() {
        let dir = log_with(3);
        let mut log = AuditLog::open(dir.path()).unwrap();
        log.write(&Event::new("read", true, "lazy 1")).unwrap();
        log.write(&Event::new("read", true, "lazy 2")).unwrap();
        assert!(log.unsynced());
        // Stopped here (killed): the head still says 3.
        drop(log);
        let v = verify(dir.path()).unwrap();
        assert_eq!((v.entries, v.after_head), (5, 2));
        // Opening takes them in: the head moves to 5.
        let mut log = AuditLog::open(dir.path()).unwrap();
        assert!(!log.unsynced());
        assert_eq!(verify(dir.path()).unwrap().after_head, 0);
        log.write(&Event::new("read", true, "lazy 3")).unwrap();
        log.sync().unwrap();
        assert_eq!(verify(dir.path()).unwrap().entries, 6);
        // An edit of an entry the head covers is still found, and so is an
        // edit after the head (it no longer chains).
        let orig = lines(dir.path());
        let mut edited = orig.clone();
        edited[5] = edited[5].replace("lazy 3", "lazy X");
        rewrite(dir.path(), &edited);
        assert!(
            verify(dir.path())
                .unwrap_err()
                .to_string()
                .contains("does not match the head")
        );
    }

    #[test]
    fn a_shared_log_returns_each_entry_durable_and_chains_them_all() {
        let dir = log_with(2);
        let log = SharedAuditLog::open(dir.path()).unwrap();
        std::thread::scope(|s| {
            for t in 0..8 {
                let (log, dir) = (&log, dir.path());
                s.spawn(move || {
                    for i in 0..40 {
                        let seq = log
                            .append_seq(&Event::new("reencrypt", true, format!("{t}/{i}")))
                            .unwrap();
                        // Durable when it returns: the head covers it.
                        let head = read_head(dir).unwrap().unwrap();
                        assert!(head.seq >= seq, "head {} before entry {seq}", head.seq);
                        if i % 10 == 0 {
                            log.write(&Event::new("read", true, "lazy")).unwrap();
                        }
                    }
                });
            }
        });
        log.sync().unwrap();
        assert_eq!(log.len(), 2 + 8 * 44);
        let v = verify(dir.path()).unwrap();
        assert_eq!((v.entries, v.after_head), (2 + 8 * 44, 0));
    }

    #[test]
    fn edits_deletions_and_reorders_are_found() {
        let dir = log_with(5);
        let orig = lines(dir.path());

        let mut edited = orig.clone();
        assert!(edited[1].contains("\"deny\""));
        edited[1] = edited[1].replace("\"deny\"", "\"allow\"");
        rewrite(dir.path(), &edited);
        let err = verify(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("entry 3 does not chain") && err.contains("entry 2 was edited"),
            "{err}"
        );

        let mut deleted = orig.clone();
        deleted.remove(1);
        rewrite(dir.path(), &deleted);
        let err = verify(dir.path()).unwrap_err().to_string();
        assert!(err.contains("line 2 has seq 3"), "{err}");

        let mut swapped = orig.clone();
        swapped.swap(3, 4);
        rewrite(dir.path(), &swapped);
        assert!(
            verify(dir.path())
                .unwrap_err()
                .to_string()
                .contains("line 4 has seq 5")
        );

        rewrite(dir.path(), &orig[..4]);
        let err = verify(dir.path()).unwrap_err().to_string();
        assert!(err.contains("cut off the end"), "{err}");

        let mut last = orig.clone();
        last[4] = last[4].replace("reason 4", "reason X");
        rewrite(dir.path(), &last);
        assert!(
            verify(dir.path())
                .unwrap_err()
                .to_string()
                .contains("does not match the head")
        );

        let mut first = orig.clone();
        first[0] = first[0].replace("reason 0", "reason X");
        rewrite(dir.path(), &first);
        let err = verify(dir.path()).unwrap_err().to_string();
        assert!(err.contains("entry 2 does not chain"), "{err}");

        fs::write(
            dir.path().join(LOG_NAME),
            format!("{}\n{}", orig[0], orig[1]),
        )
        .unwrap();
        assert!(
            verify(dir.path())
                .unwrap_err()
                .to_string()
                .contains("cut short")
        );
        let err = AuditLog::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("will not append"), "{err}");
    }
}
