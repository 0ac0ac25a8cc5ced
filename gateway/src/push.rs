//! A pushed tar stream, unpacked into a staging folder entry by entry in
//! bounded memory, and refused whole at the first entry that is not safe:
//! a name that is absolute or climbs with `..`, a symbolic link that leads
//! out of the pushed tree, a hard link to nothing pushed before, a special
//! kind of entry, a stream that ends inside an entry (a header that lies
//! about its size), or more than the limit. Nothing is tiered out before
//! the whole stream unpacked: a refused stream commits nothing.

use std::collections::HashSet;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

/// Why a stream was refused.
#[derive(Debug)]
pub struct Refused(pub String);

/// Reads a stream of body chunks handed over by the async side, with a
/// bound on the total.
pub struct BodyReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    buf: Bytes,
    total: u64,
    limit: u64,
    on_bytes: Box<dyn Fn(u64) + Send>,
}

impl BodyReader {
    /// A reader of what `rx` brings, refusing more than `limit` bytes.
    pub fn new(
        rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
        limit: u64,
        on_bytes: Box<dyn Fn(u64) + Send>,
    ) -> Self {
        BodyReader {
            rx,
            buf: Bytes::new(),
            total: 0,
            limit,
            on_bytes,
        }
    }
}

impl Read for BodyReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.buf.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.total += chunk.len() as u64;
                    if self.total > self.limit {
                        return Err(io::Error::other(format!(
                            "the stream is longer than this gateway's limit of {} bytes",
                            self.limit
                        )));
                    }
                    (self.on_bytes)(chunk.len() as u64);
                    self.buf = chunk;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = self.buf.len().min(out.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf = self.buf.slice(n..);
        Ok(n)
    }
}

/// Feeds `body` into a channel for a [`BodyReader`], chunk by chunk; a
/// chunk that takes longer than `timeout` to come ends the stream with an
/// error (a slow client cannot hold the push forever).
pub async fn feed(
    body: axum::body::Body,
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    timeout: Duration,
) {
    use futures::StreamExt as _;
    let mut stream = body.into_data_stream();
    loop {
        let next = tokio::time::timeout(timeout, stream.next()).await;
        let item = match next {
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client sent nothing for {} s", timeout.as_secs()),
            )),
            Ok(None) => return,
            Ok(Some(Ok(chunk))) => Ok(chunk),
            Ok(Some(Err(e))) => Err(io::Error::other(format!("the stream broke: {e}"))),
        };
        let stop = item.is_err();
        if tx.send(item).await.is_err() || stop {
            return;
        }
    }
}

/// What was unpacked.
#[derive(Debug, Default)]
pub struct Unpacked {
    /// Entries unpacked.
    pub entries: u64,
    /// Content bytes.
    pub bytes: u64,
}

/// Unpacks a tar stream into `dest` (an empty folder), checking every
/// entry before it is written. On any error `dest` is left as it is for the
/// caller to remove: nothing of it is used.
pub fn unpack(input: impl Read, dest: &Path) -> Result<Unpacked, Refused> {
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_preserve_ownerships(nix_is_root());
    archive.set_overwrite(false);
    let mut files: HashSet<Vec<u8>> = HashSet::new();
    let mut symlinks: HashSet<Vec<u8>> = HashSet::new();
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut dirs: Vec<(PathBuf, SystemTime)> = Vec::new();
    let mut done = Unpacked::default();
    let entries = archive
        .entries()
        .map_err(|e| Refused(format!("not a tar stream: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| Refused(format!("a broken tar stream: {e}")))?;
        let raw = entry.path_bytes().into_owned();
        let name = normalize(&raw);
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if name.is_empty() && kind.is_dir() {
            continue; // the root itself ("./")
        }
        cbfs_restore::check_member_path(&name)
            .map_err(|why| Refused(format!("entry {shown:?}: {why}")))?;
        if !seen.insert(name.clone()) {
            return Err(Refused(format!(
                "entry {shown:?} appears twice in the stream"
            )));
        }
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous => {
                files.insert(name.clone());
            }
            T::Directory => {}
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Refused(format!("symbolic link {shown:?} has no target")))?
                    .into_owned();
                cbfs_restore::check_symlink_target(&name, &target, &symlinks).map_err(|why| {
                    Refused(format!(
                        "symbolic link {shown:?} -> {:?} would lead out of the pushed tree: {why}",
                        String::from_utf8_lossy(&target)
                    ))
                })?;
                symlinks.insert(name.clone());
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Refused(format!("hard link {shown:?} has no target")))?;
                let target = normalize(&target);
                if !files.contains(&target) {
                    return Err(Refused(format!(
                        "hard link {shown:?} names {:?}, which is not a file pushed before it",
                        String::from_utf8_lossy(&target)
                    )));
                }
            }
            T::Fifo | T::Char | T::Block => {}
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => continue,
            other => {
                return Err(Refused(format!(
                    "entry {shown:?} is of a kind that is not pushed ({other:?})"
                )));
            }
        }
        let size = entry.header().size().unwrap_or(0);
        let mtime = entry.header().mtime().ok();
        let unpacked = entry
            .unpack_in(dest)
            .map_err(|e| Refused(format!("entry {shown:?}: {}", cbfs_core::error_chain(&e))))?;
        if !unpacked {
            return Err(Refused(format!(
                "entry {shown:?} would be written outside the pushed tree"
            )));
        }
        if kind.is_dir()
            && let Some(t) = mtime
        {
            let at = dest.join(std::ffi::OsStr::new(&*String::from_utf8_lossy(&name)));
            dirs.push((
                path_of(dest, &name).unwrap_or(at),
                SystemTime::UNIX_EPOCH + Duration::from_secs(t),
            ));
        }
        done.entries += 1;
        if kind == T::Regular || kind == T::Continuous {
            done.bytes += size;
        }
    }
    // Folders got entries after their time was set: set it again, deepest first.
    dirs.sort_by(|a, b| b.0.cmp(&a.0));
    for (dir, t) in dirs {
        if let Ok(f) = std::fs::File::open(&dir) {
            let _ = f.set_times(std::fs::FileTimes::new().set_modified(t));
        }
    }
    Ok(done)
}

fn path_of(dest: &Path, rel: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    Some(dest.join(std::ffi::OsStr::from_bytes(rel)))
}

/// A tar name as a plain relative path: `./` and trailing `/` taken off.
fn normalize(raw: &[u8]) -> Vec<u8> {
    let mut p = raw;
    while let Some(rest) = p.strip_prefix(b"./") {
        p = rest;
    }
    while let Some(rest) = p.strip_suffix(b"/") {
        p = rest;
    }
    if p == b"." {
        return Vec::new();
    }
    p.to_vec()
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn add(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &[u8], data: &[u8]) {
        let mut h = header(kind, data.len() as u64);
        // Names written raw, as an attacker would.
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &[u8], target: &[u8]) {
        let mut h = header(kind, 0);
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.as_gnu_mut().unwrap().linkname[..target.len()].copy_from_slice(target);
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }

    #[test]
    fn a_good_stream_unpacks_and_bad_ones_are_refused() {
        let good = tar_of(|b| {
            add(b, tar::EntryType::Directory, b"./docs/", b"");
            add(b, tar::EntryType::Regular, b"./docs/a.txt", b"hello");
            link(b, tar::EntryType::Symlink, b"./docs/l", b"a.txt");
            link(b, tar::EntryType::Link, b"./h", b"docs/a.txt");
        });
        let dir = tempfile::tempdir().unwrap();
        let got = unpack(&good[..], dir.path()).unwrap();
        assert_eq!(got.entries, 4);
        assert_eq!(std::fs::read(dir.path().join("h")).unwrap(), b"hello");

        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "climbs",
                tar_of(|b| add(b, tar::EntryType::Regular, b"../evil", b"x")),
            ),
            (
                "absolute",
                tar_of(|b| add(b, tar::EntryType::Regular, b"/etc/evil", b"x")),
            ),
            (
                "link out",
                tar_of(|b| link(b, tar::EntryType::Symlink, b"l", b"../../etc/passwd")),
            ),
            (
                "absolute link",
                tar_of(|b| link(b, tar::EntryType::Symlink, b"l", b"/etc/passwd")),
            ),
            (
                "hard link to nothing",
                tar_of(|b| link(b, tar::EntryType::Link, b"h", b"etc/passwd")),
            ),
            (
                "through a link",
                tar_of(|b| {
                    link(b, tar::EntryType::Symlink, b"d", b".");
                    link(b, tar::EntryType::Symlink, b"d/e", b"../..");
                }),
            ),
        ];
        for (what, stream) in cases {
            let dir = tempfile::tempdir().unwrap();
            assert!(unpack(&stream[..], dir.path()).is_err(), "{what}");
        }
        // A header that says more than the stream holds.
        let mut lying = tar_of(|b| add(b, tar::EntryType::Regular, b"big", &[7u8; 4096]));
        lying.truncate(512 + 1000);
        let dir = tempfile::tempdir().unwrap();
        assert!(unpack(&lying[..], dir.path()).is_err(), "truncated");
    }
}
