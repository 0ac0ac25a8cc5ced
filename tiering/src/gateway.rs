//! A store read through `cbfs-gateway` (`https://GATEWAY/v1/fs/NAME`),
//! read-only, every request signed with the user's own key; and the push of
//! a tree to a gateway. The gateway serves ciphertext only: the user's key,
//! through the delegation nodes, is still what unlocks.

use std::ops::Range;
use std::time::Duration;

use cbfs_client::GatewayAuth;
use cbfs_core::Clock;
use cbfs_restore::Error as RestoreError;
use serde::Deserialize;

use crate::error::{Error, Result};

/// A user's name from `--user` (a `NAME.pub` file, checked against the
/// secret, or the bare name).
pub fn user_name(arg: &str, secret: &cbfs_core::UserSecret) -> Result<cbfs_core::UserName> {
    crate::restore::user_name(arg, secret)
}

/// `https://GATEWAY` and a file system's name, as a gateway store spec.
pub fn gateway_store(gateway: &str, fs: &str) -> String {
    format!("{}/v1/fs/{fs}", gateway.trim_end_matches('/'))
}

/// One file system of a gateway, for a signed caller.
#[derive(Clone, Debug)]
pub struct GatewayClient {
    base: String,
    auth: GatewayAuth,
    http: reqwest::Client,
    clock: std::sync::Arc<dyn Clock>,
}

impl GatewayClient {
    /// The file system at `base` (`https://GATEWAY/v1/fs/NAME`), as `auth`.
    /// TLS roots are the system's and those of `CBFS_CA_FILE`.
    pub fn new(base: &str, auth: GatewayAuth, timeout: Option<Duration>) -> Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        if !is_gateway_store(&base) {
            return Err(Error::Usage(format!(
                "`{base}` is not a gateway file system: give https://GATEWAY/v1/fs/NAME"
            )));
        }
        let mut b = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        let http = cbfs_client::with_tls_env(b)
            .map_err(Error::Usage)?
            .build()
            .map_err(|e| Error::Usage(format!("cannot make an HTTP client: {e}")))?;
        Ok(GatewayClient {
            base,
            auth,
            http,
            clock: cbfs_core::system_clock(),
        })
    }

    /// Who signs.
    pub fn auth(&self) -> &GatewayAuth {
        &self.auth
    }

    /// The file system's URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The URLs of the gateway's relays to the file system's delegation
    /// nodes, `BASE/nodes/I`.
    pub async fn node_relays(&self) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Nodes {
            nodes: usize,
        }
        let (status, body) = self.send("GET", "/nodes", None, None).await?;
        let n: Nodes = self.json(status, &body, "/nodes")?;
        Ok((0..n.nodes)
            .map(|i| format!("{}/nodes/{i}", self.base))
            .collect())
    }

    /// Sends a signed request to `BASE` + `rest`; the status and the body.
    pub async fn send(
        &self,
        method: &str,
        rest: &str,
        body: Option<Vec<u8>>,
        range: Option<Range<u64>>,
    ) -> Result<(u16, bytes::Bytes)> {
        let url = format!("{}{rest}", self.base);
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut request = self.http.request(m, &url);
        if let Some(r) = &range {
            request = request.header("range", format!("bytes={}-{}", r.start, r.end - 1));
        }
        let signed_body = body.as_deref().unwrap_or(b"");
        request = self
            .auth
            .sign(request, method, &url, Some(signed_body), self.clock.unix())
            .map_err(Error::Usage)?;
        if let Some(b) = body {
            request = request.header("content-type", "application/json").body(b);
        }
        let response = request.send().await.map_err(|e| self.down(rest, &e))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| self.down(rest, &e))?;
        Ok((status, bytes))
    }

    /// A signed `HEAD` of `BASE` + `rest`: the status and the length.
    pub async fn head(&self, rest: &str) -> Result<(u16, Option<u64>)> {
        let url = format!("{}{rest}", self.base);
        let request = self
            .auth
            .sign(
                self.http.head(&url),
                "HEAD",
                &url,
                Some(b""),
                self.clock.unix(),
            )
            .map_err(Error::Usage)?;
        let response = request.send().await.map_err(|e| self.down(rest, &e))?;
        let size = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok((response.status().as_u16(), size))
    }

    fn down(&self, what: &str, e: &reqwest::Error) -> Error {
        Error::Restore {
            context: format!("gateway {}{what}", self.base),
            cause: Box::new(RestoreError::Unavailable {
                store: self.base.clone(),
                key: what.to_owned(),
                reason: e.to_string(),
            }),
        }
    }

    /// Decodes a JSON answer, or the gateway's refusal as an error.
    pub fn json<T: serde::de::DeserializeOwned>(
        &self,
        status: u16,
        body: &[u8],
        what: &str,
    ) -> Result<T> {
        if !(200..300).contains(&status) {
            return Err(Error::Usage(format!(
                "gateway {}{what}: {}",
                self.base,
                refusal(status, body)
            )));
        }
        serde_json::from_slice(body).map_err(|e| {
            Error::Usage(format!(
                "gateway {}{what}: not the answer expected ({e})",
                self.base
            ))
        })
    }
}

use cbfs_restore::gateway::percent;
pub use cbfs_restore::gateway::{is_gateway_store, refusal};

/// Bytes of a tar stream made on a blocking thread, handed to the HTTP body
/// in chunks through a bounded channel: memory stays bounded whatever the
/// tree's size.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    buf: Vec<u8>,
    /// Set when the body stopped taking chunks (the gateway stopped
    /// reading: it answered before the end of the stream).
    gone: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

const CHUNK: usize = 256 << 10;

impl ChannelWriter {
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            self.gone.store(true, std::sync::atomic::Ordering::SeqCst);
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the gateway stopped reading the push",
            )
        })
    }
}

/// Where [`write_tree`] writes its stream: a writer that can also take a
/// file's content read straight into a buffer of its own.
pub trait TreeOut: std::io::Write {
    /// Reads at most `want` bytes of `file` into the stream, and says how
    /// many (0 at its end). By default through `scratch`.
    fn read_in(
        &mut self,
        file: &mut std::fs::File,
        want: usize,
        scratch: &mut Vec<u8>,
    ) -> std::io::Result<usize> {
        use std::io::Read;
        scratch.resize(want.min(CONTENT_BUF), 0);
        let n = file.read(scratch)?;
        // A failure of the stream is not one of the file's reads, which
        // the caller would try again (the bytes read would be lost).
        self.write_all(&scratch[..n])
            .map_err(|e| std::io::Error::other(format!("the stream: {e}")))?;
        Ok(n)
    }
}

impl<T: TreeOut + ?Sized> TreeOut for &mut T {
    fn read_in(
        &mut self,
        file: &mut std::fs::File,
        want: usize,
        scratch: &mut Vec<u8>,
    ) -> std::io::Result<usize> {
        (**self).read_in(file, want, scratch)
    }
}

impl TreeOut for Vec<u8> {}

impl TreeOut for ChannelWriter {
    /// Into the chunk being filled: one copy of the content fewer.
    fn read_in(
        &mut self,
        file: &mut std::fs::File,
        want: usize,
        _: &mut Vec<u8>,
    ) -> std::io::Result<usize> {
        if self.buf.len() >= CHUNK {
            self.flush_chunk()?;
        }
        let room = (CHUNK - self.buf.len()).min(want);
        self.buf.reserve(room);
        let len = self.buf.len();
        let (read, _) = rustix::io::read(&*file, &mut self.buf.spare_capacity_mut()[..room])?;
        let n = read.len();
        // SAFETY: `read` initialised the first `n` bytes of the spare
        // capacity, right after the `len` bytes already there.
        #[allow(unsafe_code)]
        unsafe {
            self.buf.set_len(len + n)
        };
        if self.buf.len() >= CHUNK {
            self.flush_chunk()?;
        }
        Ok(n)
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush_chunk()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.flush_chunk()
    }
}

/// One pax record: `LEN KEY=VALUE\n`, its length counting itself.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let rest = format!(" {key}={value}\n");
    let mut len = rest.len() + 1;
    while len.to_string().len() + rest.len() != len {
        len += 1;
    }
    format!("{len}{rest}").into_bytes()
}

/// Writes the tree at `dir` as a pax tar stream: entries in name order,
/// never following a symbolic link, with their modes, owners (ids and
/// names), times to the nanosecond, device numbers and extended attributes,
/// hard links as links to the first name seen (each file with more than one
/// name marked with the pax record `CBFS.linked=1`, as the global header
/// `CBFS.links=marked` at the start promises). A file that changes size
/// while it is read, or an entry replaced between its listing and its
/// reading, ends the stream with an error (the gateway then commits
/// nothing). Sockets are not stored; they are left out.
///
/// Each folder is opened beneath `dir` with no symbolic link on the way and
/// checked to be the folder its parent's listing found; its entries are
/// stated and its files opened relative to its descriptor, and a file's
/// extended attributes are read through its own. No entry's path is
/// resolved again from `/` (three walks per file were a quarter of the
/// client's CPU on a tree of 20,000 small files).
pub fn write_tree(dir: &std::path::Path, out: impl TreeOut) -> std::io::Result<()> {
    use rustix::fs::AtFlags;
    use std::os::unix::ffi::OsStrExt;
    let mut b = tar::Builder::new(out);
    // The stream says that it marks each file with more than one name:
    // the gateway then keeps only those files' content on its spool (a
    // hard link may need it again), and takes the others in memory.
    let (key, value) = crate::out::LINKS_DECLARED;
    let mut global = tar::Header::new_ustar();
    let record = pax_record(key, value);
    global.set_entry_type(tar::EntryType::XGlobalHeader);
    global.set_path("pax_global_header")?;
    global.set_mode(0o644);
    global.set_size(record.len() as u64);
    global.set_cksum();
    b.append(&global, record.as_slice())?;
    let mut names = crate::scan::Names::default();
    let mut first_names: std::collections::HashMap<(u64, u64), std::path::PathBuf> =
        std::collections::HashMap::new();
    let context = |path: &std::path::Path, e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
    };
    let unchecked = |e: crate::source_tree::OpenError| match e {
        crate::source_tree::OpenError::Io(e) => e,
        changed => std::io::Error::other(changed.to_string()),
    };
    let tree = crate::source_tree::SourceTree::open(dir).map_err(|e| context(dir, e))?;
    // What a writer without a buffer of its own reads content through.
    let mut scratch = Vec::new();
    // Depth first, each folder's entries in name order; a folder with what
    // its parent's listing found of it.
    let mut stack: Vec<(std::path::PathBuf, Option<crate::scan::Stat>)> =
        vec![(std::path::PathBuf::new(), None)];
    while let Some((rel, seen)) = stack.pop() {
        let abs = dir.join(&rel);
        let folder = tree
            .open_dir(rel.as_os_str().as_bytes(), seen.as_ref())
            .map_err(|e| context(&abs, unchecked(e)))?;
        let mut children: Vec<std::ffi::CString> = Vec::new();
        let mut listing = rustix::fs::Dir::new(folder).map_err(|e| context(&abs, e.into()))?;
        while let Some(item) = listing.read() {
            let item = item.map_err(|e| context(&abs, e.into()))?;
            let name = item.file_name();
            if name != c"." && name != c".." {
                children.push(name.to_owned());
            }
        }
        children.sort_by(|a, c| a.as_bytes().cmp(c.as_bytes()));
        let folder = listing.fd().map_err(|e| context(&abs, e.into()))?;
        let mut dirs = Vec::new();
        for name in children {
            let rel = rel.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
            let abs = dir.join(&rel);
            let st = rustix::fs::statat(folder, &name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| context(&abs, e.into()))?;
            let kind = st.st_mode & libc::S_IFMT;
            if kind == libc::S_IFSOCK {
                tracing::warn!(path = %abs.display(), "a socket is not pushed");
                continue;
            }
            // A file is read through its own descriptor, opened here (its
            // attributes too); it must be the inode just stated.
            let file = if kind == libc::S_IFREG {
                let fd = open_file(folder, &name, &st).map_err(|e| context(&abs, e))?;
                Some(std::fs::File::from(fd))
            } else {
                None
            };
            let mut header = tar::Header::new_ustar();
            header.set_mode(st.st_mode & 0o7777);
            header.set_uid(u64::from(st.st_uid));
            header.set_gid(u64::from(st.st_gid));
            header.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
            header.set_size(0);
            header.set_entry_type(match kind {
                libc::S_IFREG => tar::EntryType::Regular,
                libc::S_IFDIR => tar::EntryType::Directory,
                libc::S_IFLNK => tar::EntryType::Symlink,
                libc::S_IFCHR => tar::EntryType::Char,
                libc::S_IFBLK => tar::EntryType::Block,
                _ => tar::EntryType::Fifo,
            });
            if kind == libc::S_IFCHR || kind == libc::S_IFBLK {
                header.set_device_major(libc::major(st.st_rdev))?;
                header.set_device_minor(libc::minor(st.st_rdev))?;
            }
            header
                .set_username(&names.user(st.st_uid))
                .and_then(|()| header.set_groupname(&names.group(st.st_gid)))
                .map_err(|e| context(&abs, e))?;
            let mtime = cbfs_format::Timestamp::new(st.st_mtime, st.st_mtime_nsec as u32);
            let mut pax: Vec<(String, Vec<u8>)> =
                vec![("mtime".into(), cbfs_format::pax_mtime(mtime).into_bytes())];
            let xattrs = match &file {
                Some(f) => crate::scan::read_fd_xattrs(f),
                // Through the folder checked above, never following a
                // link.
                None => crate::scan::read_xattrs(
                    &std::path::Path::new("/proc/self/fd")
                        .join(std::os::fd::AsRawFd::as_raw_fd(&folder).to_string())
                        .join(std::ffi::OsStr::from_bytes(name.to_bytes())),
                ),
            }
            .map_err(|e| context(&abs, e))?;
            for (attr, value) in xattrs {
                let mut key = "SCHILY.xattr.".to_owned();
                key.push_str(&String::from_utf8_lossy(&attr));
                if String::from_utf8(attr).is_ok() {
                    pax.push((key, value));
                }
            }
            let linked = kind == libc::S_IFREG && st.st_nlink > 1;
            if linked {
                let (key, value) = crate::out::LINKED;
                pax.push((key.into(), value.into()));
            }
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(|e| context(&abs, e))?;
            if kind == libc::S_IFDIR {
                b.append_data(&mut header, &rel, std::io::empty())
                    .map_err(|e| context(&abs, e))?;
                dirs.push((rel, Some(crate::scan::Stat::from_rustix(&st))));
            } else if kind == libc::S_IFLNK {
                let target = rustix::fs::readlinkat(folder, &name, Vec::new())
                    .map_err(|e| context(&abs, e.into()))?;
                b.append_link(
                    &mut header,
                    &rel,
                    std::ffi::OsStr::from_bytes(target.as_bytes()),
                )
                .map_err(|e| context(&abs, e))?;
            } else if let Some(first) = first_names.get(&(st.st_dev, st.st_ino))
                && linked
            {
                header.set_entry_type(tar::EntryType::Link);
                b.append_link(&mut header, &rel, first)
                    .map_err(|e| context(&abs, e))?;
            } else if let Some(file) = file {
                if linked {
                    first_names.insert((st.st_dev, st.st_ino), rel.clone());
                }
                let size = u64::try_from(st.st_size).unwrap_or(0);
                header.set_size(size);
                // The header alone (its content follows, read straight into
                // a large buffer rather than through an 8 KiB copy loop).
                b.append_data(&mut header, &rel, std::io::empty())
                    .map_err(|e| context(&abs, e))?;
                copy_exact(file, size, &mut scratch, b.get_mut()).map_err(|e| context(&abs, e))?;
            } else {
                // FIFOs and devices: their header says it all.
                b.append_data(&mut header, &rel, std::io::empty())
                    .map_err(|e| context(&abs, e))?;
            }
        }
        // Popped from the end: pushed in reverse to come out in order.
        stack.extend(dirs.into_iter().rev());
    }
    b.finish()?;
    b.into_inner()?.flush()
}

/// Opens the regular file `name` of `folder` for reading, and checks it is
/// the inode `st` describes.
///
/// It is opened without blocking: a FIFO swapped in since the listing is
/// not waited on (and fails the check). A lease on the file (a release
/// under way, a file server's) makes that open fail at once, after it has
/// started breaking the lease: the file is then opened as a path only,
/// checked, and opened again through its descriptor, waiting for the lease
/// to go. A file opened at once keeps `O_NONBLOCK` (local file systems
/// ignore it for a regular file's reads); `copy_exact` clears it if a read
/// would block all the same (a network or FUSE file system could honour
/// it).
fn open_file(
    folder: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::CStr,
    st: &rustix::fs::Stat,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let same = |fd: &std::os::fd::OwnedFd| -> std::io::Result<()> {
        let now = rustix::fs::fstat(fd)?;
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino)
            || now.st_mode & libc::S_IFMT != libc::S_IFREG
        {
            return Err(std::io::Error::other(
                "another entry took its place between its listing and its reading",
            ));
        }
        Ok(())
    };
    let how = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(folder, name, how | OFlags::NONBLOCK, Mode::empty()) {
        Ok(fd) => {
            // Left without blocking: a regular file's reads ignore the
            // flag on local file systems (`copy_exact` clears it where a
            // read would block all the same).
            same(&fd)?;
            fd
        }
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let handle = rustix::fs::openat(
                folder,
                name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            same(&handle)?;
            let via = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&handle));
            let fd = rustix::fs::open(via.as_str(), how - OFlags::NOFOLLOW, Mode::empty())?;
            same(&fd)?;
            fd
        }
        Err(e) => return Err(e.into()),
    };
    Ok(fd)
}

/// The buffer a file's content is read into on its way to the stream.
const CONTENT_BUF: usize = 256 << 10;

/// Copies exactly `size` bytes of `file` to `out`, then the zeros that pad
/// them to a tar block: a file that shrinks or grows while it is read is an
/// error, not a broken stream.
fn copy_exact(
    mut file: std::fs::File,
    size: u64,
    scratch: &mut Vec<u8>,
    out: &mut impl TreeOut,
) -> std::io::Result<()> {
    // The file was opened without blocking (a lease holder is waited for
    // at the open, not here); a read that would block all the same (a
    // file system that honours the flag on regular files) turns blocking
    // and is tried again.
    let mut blocking = false;
    let mut read = |file: &mut std::fs::File,
                    want: usize,
                    into: &mut dyn FnMut(&mut std::fs::File, usize) -> std::io::Result<usize>|
     -> std::io::Result<usize> {
        loop {
            match into(file, want) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && !blocking => {
                    let flags = rustix::fs::fcntl_getfl(&*file)?;
                    rustix::fs::fcntl_setfl(&*file, flags - rustix::fs::OFlags::NONBLOCK)?;
                    blocking = true;
                }
                done => return done,
            }
        }
    };
    let mut left = size;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(CONTENT_BUF);
        let n = read(&mut file, want, &mut |f, want| {
            out.read_in(f, want, scratch)
        })?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file shrank while it was read",
            ));
        }
        left -= n as u64;
    }
    let mut probe = [0u8; 1];
    let grew = read(&mut file, 1, &mut |f, _| std::io::Read::read(f, &mut probe))?;
    if grew != 0 {
        return Err(std::io::Error::other("the file grew while it was read"));
    }
    let pad = (512 - size % 512) % 512;
    out.write_all(&[0u8; 512][..pad as usize])
}

/// What a push sends: a directory (made into a tar stream here: entries
/// with their modes, owners and times, symbolic links as links) or a tar
/// stream read from elsewhere (standard input).
pub enum PushInput {
    /// A directory.
    Dir(std::path::PathBuf),
    /// A ready tar stream.
    Tar(Box<dyn std::io::Read + Send>),
}

/// Pushes `input` to the gateway's file system under `prefix` (`/PATH`):
/// the gateway unpacks it, refusing the whole stream at the first unsafe
/// entry, and tiers it out as one snapshot (unchanged files keep their
/// stored members). Answers the job record once the job has ended.
pub async fn push(
    client: &GatewayClient,
    prefix: &str,
    input: PushInput,
) -> Result<serde_json::Value> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
    let gone = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer_gone = gone.clone();
    let producer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut w = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
            gone: producer_gone,
        };
        let made = match input {
            PushInput::Dir(dir) => write_tree(&dir, &mut w),
            PushInput::Tar(mut r) => std::io::copy(&mut r, &mut w).map(|_| ()),
        };
        let made = made.and_then(|()| std::io::Write::flush(&mut w));
        if let Err(e) = &made {
            // The body ends with an error: the gateway sees a broken stream
            // and commits nothing.
            let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
        }
        made
    });
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let url = format!("{}/push?prefix={}", client.base, percent(prefix));
    let request = client
        .auth
        .sign(
            client.http.put(&url),
            "PUT",
            &url,
            None,
            client.clock.unix(),
        )
        .map_err(Error::Usage)?
        .header("content-type", "application/x-tar")
        .body(reqwest::Body::wrap_stream(stream));
    let sent = request.send().await;
    let made = producer
        .await
        .map_err(|e| Error::Usage(format!("the push stream failed: {e}")))?;
    // A stream that could not be made here (a file unreadable, or changed
    // while it was read) ended the request: that is the cause, whatever
    // the connection says. A stream cut short because the gateway stopped
    // reading is not: the gateway's answer says why, below.
    if let Err(e) = &made
        && !gone.load(std::sync::atomic::Ordering::SeqCst)
    {
        return Err(Error::Usage(format!(
            "the push stream could not be made: {e}"
        )));
    }
    let response = sent.map_err(|e| client.down("/push", &e))?;
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map_err(|e| client.down("/push", &e))?;
    if let Err(e) = made
        && status == 200
    {
        return Err(Error::Usage(format!(
            "the push stream could not be made: {e}"
        )));
    }
    if status == 200 {
        return client.json(status, &body, "/push");
    }
    // A job that ran and failed is a record too: show it.
    if let Ok(record) = serde_json::from_slice::<serde_json::Value>(&body)
        && record.get("state").is_some()
    {
        return Err(Error::Usage(format!(
            "gateway {}/push: the job ended {}: {}",
            client.base,
            record["state"].as_str().unwrap_or("?"),
            record["error"].as_str().unwrap_or("no reason given")
        )));
    }
    Err(Error::Usage(format!(
        "gateway {}/push: {}",
        client.base,
        refusal(status, &body)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream a push sends (content read straight into its chunks) is
    /// byte for byte the one written through `Write` alone, whatever
    /// falls on a chunk's edge.
    #[test]
    fn a_tree_streamed_in_chunks_is_the_tree_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        let sizes = [
            0,
            1,
            511,
            CHUNK - 700,
            CHUNK,
            CHUNK + 1,
            3 * CHUNK - 5,
            CONTENT_BUF + 4096,
        ];
        for (i, size) in sizes.iter().enumerate() {
            let content: Vec<u8> = (0..*size).map(|b| (b * 31 + i) as u8).collect();
            let at = if i % 2 == 0 { "" } else { "sub/" };
            std::fs::write(root.join(format!("{at}f{i}")), content).unwrap();
        }
        let mut whole = Vec::new();
        write_tree(&root, &mut whole).unwrap();

        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(1024);
        let mut w = ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
            gone: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        let writer = std::thread::spawn(move || {
            write_tree(&root, &mut w)?;
            std::io::Write::flush(&mut w)
        });
        let mut chunked = Vec::new();
        let mut sizes_sent = Vec::new();
        while let Some(chunk) = rx.blocking_recv() {
            let chunk = chunk.unwrap();
            sizes_sent.push(chunk.len());
            chunked.extend_from_slice(&chunk);
        }
        writer.join().unwrap().unwrap();
        assert!(chunked == whole, "the chunked stream differs");
        assert!(
            sizes_sent[..sizes_sent.len() - 1]
                .iter()
                .all(|&n| n >= CHUNK),
            "every chunk but the last is full: {sizes_sent:?}"
        );
    }
}
