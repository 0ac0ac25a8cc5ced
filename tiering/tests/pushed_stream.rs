//! Tiering out a pushed tar stream (what `cbfs-gateway` does for a host):
//! the stream restores to the tree it was made from; a second push of the
//! same tree stores nothing; an unsorted stream (GNU tar) works as well,
//! deletions included; a hard link into another scope is stored as a file
//! of that scope; small files held in memory (a stream that marks its
//! linked files) wait for the workers when the memory is spent; a link to a
//! file such a stream did not mark is refused; a stream refused after
//! segments were already written leaves the store and the index exactly as
//! they were; and a pushed tree keeps its devices (with their numbers),
//! FIFOs, symbolic links and times before 1970, and leaves its sockets
//! out.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use cbfs_core::KeySource;
use cbfs_tests::{Compare, TreeGen, Workdir, assert_same_tree};
use cbfs_tiering::{
    Agent, AgentOptions, ChangeTest, Error, OutOptions, OutReport, Quiet, RestoreRequest,
    ScopeRules, TrustOptions,
};

struct Fs {
    keys: PathBuf,
    store: PathBuf,
    index: PathBuf,
    work: Workdir,
}

impl Fs {
    fn new() -> Fs {
        let work = Workdir::new();
        let keys = work.mkdir("keys");
        cbfs_tests::agent_keyset(&keys, "pushed", &["alice", "bob"]);
        Fs {
            store: work.path("store"),
            index: work.path("index"),
            keys,
            work,
        }
    }

    fn agent(&self) -> Arc<Agent> {
        Agent::open(AgentOptions {
            store: self.store.to_str().unwrap(),
            index: &self.index,
            keyset: Some(&self.keys.join("keyset.json")),
            writer_key: Some(KeySource::File(self.keys.join("agent.key"))),
        })
        .unwrap()
    }

    fn opts(&self, prefix: &str) -> OutOptions {
        let rules = ScopeRules::new(vec![
            "home/alice/**=alice".parse().unwrap(),
            "home/bob/**=bob".parse().unwrap(),
        ]);
        let mut opts = OutOptions::new(PathBuf::new(), rules);
        opts.prefix = Some(prefix.as_bytes().to_vec());
        opts.change_test = ChangeTest::Attributes;
        // Small segments: a stream of a few hundred KiB closes several.
        opts.segment_size = 64 << 10;
        opts
    }

    fn push(&self, agent: &Arc<Agent>, stream: Vec<u8>, prefix: &str) -> Result<OutReport, Error> {
        self.push_with(agent, stream, self.opts(prefix))
    }

    fn push_with(
        &self,
        agent: &Arc<Agent>,
        stream: Vec<u8>,
        opts: OutOptions,
    ) -> Result<OutReport, Error> {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(agent.tier_out_stream(
            Box::new(std::io::Cursor::new(stream)),
            opts,
            Arc::new(Quiet),
        ))
    }

    /// A tree of `files` files (from `seed`) and a file with two names.
    fn tree_with_a_link(&self, seed: u64, files: usize) -> (PathBuf, TreeGen) {
        let src = self.work.path("src");
        let mut tree = TreeGen::new(&src, seed);
        tree.populate(files);
        // Hard links and a nanosecond time survive the stream.
        fs::write(src.join("linked"), b"one inode").unwrap();
        fs::hard_link(src.join("linked"), src.join("linked-too")).unwrap();
        (src, tree)
    }

    /// Restores everything (pushed under `data`) and checks that it is
    /// `src`, the hard link a link again. The restored `data` folder.
    fn restored_like(&self, src: &Path) -> PathBuf {
        let dest = self.work.path("restored");
        self.restore(&dest);
        let data = dest.join("data");
        assert_same_tree(src, &data, Compare::default());
        let a = fs::metadata(data.join("linked")).unwrap();
        let b = fs::metadata(data.join("linked-too")).unwrap();
        assert_eq!(a.ino(), b.ino(), "the hard link was restored as a link");
        data
    }

    /// Restores everything with the administrator's key into `dest`.
    fn restore(&self, dest: &Path) {
        let request = RestoreRequest {
            store: self.store.display().to_string(),
            trust: TrustOptions {
                index: Some(self.index.clone()),
                trust_file: Some(self.keys.join("trusted-admins.json")),
                ..TrustOptions::default()
            },
            identity: KeySource::File(self.keys.join("admin.key")),
            snapshot: None,
            path: ".".into(),
            dest: dest.to_owned(),
            threads: Some(2),
            nodes: Vec::new(),
            user: None,
            node_timeout: std::time::Duration::from_secs(10),
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        let report = rt
            .block_on(cbfs_tiering::restore(request, Arc::new(Quiet)))
            .unwrap();
        assert!(report.failures.is_empty(), "{:?}", report.failures);
    }
}

fn tar_of_tree(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    cbfs_tiering::gateway::write_tree(dir, &mut out).unwrap();
    out
}

#[test]
fn a_pushed_stream_restores_to_its_tree_and_a_second_push_stores_nothing() {
    let fs = Fs::new();
    let (src, tree) = fs.tree_with_a_link(7, 120);
    let agent = fs.agent();

    let first = fs.push(&agent, tar_of_tree(&src), "data").unwrap();
    assert!(first.files > 100, "{first:?}");
    assert!(first.new_segments > 1, "small segments: {first:?}");
    assert!(first.snapshot.is_some());
    let data = fs.restored_like(&src);
    assert_eq!(
        fs::metadata(data.join("linked")).unwrap().mtime_nsec(),
        fs::metadata(src.join("linked")).unwrap().mtime_nsec(),
        "times to the nanosecond"
    );

    let again = fs.push(&agent, tar_of_tree(&src), "data").unwrap();
    assert_eq!((again.files, again.deleted), (0, 0), "{again:?}");
    assert!(again.snapshot.is_none(), "nothing changed: no snapshot");

    // One change, one deletion: one file stored, one gone.
    let files: Vec<PathBuf> = tree
        .files()
        .into_iter()
        .filter(|f| fs::metadata(src.join(f)).unwrap().nlink() == 1)
        .collect();
    fs::write(src.join(&files[0]), b"changed").unwrap();
    fs::remove_file(src.join(&files[1])).unwrap();
    let third = fs.push(&agent, tar_of_tree(&src), "data").unwrap();
    assert_eq!((third.files, third.deleted), (1, 1), "{third:?}");
}

#[test]
fn an_unsorted_stream_from_gnu_tar_works_deletions_included() {
    let fs = Fs::new();
    let src = fs.work.path("src");
    let mut tree = TreeGen::new(&src, 11);
    tree.populate(80);
    let gnu_tar = |dir: &Path| {
        let out = Command::new(cbfs_tests::require_tool("tar", "`apt-get install tar`"))
            .arg("-C")
            .arg(dir)
            .args(["--format=pax", "--xattrs", "-cf", "-", "."])
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    };
    let agent = fs.agent();
    fs.push(&agent, gnu_tar(&src), "home/bob").unwrap();
    let single: Vec<PathBuf> = tree
        .files()
        .into_iter()
        .filter(|f| fs::metadata(src.join(f)).unwrap().nlink() == 1)
        .collect();
    for f in &single[..3] {
        fs::remove_file(src.join(f)).unwrap();
    }
    let second = fs.push(&agent, gnu_tar(&src), "home/bob").unwrap();
    assert_eq!(second.deleted, 3, "{second:?}");
    assert_eq!(second.files, 0, "nothing else changed: {second:?}");
    let dest = fs.work.path("restored");
    fs.restore(&dest);
    assert_same_tree(&src, &dest.join("home/bob"), Compare::default());
}

#[test]
fn a_hard_link_into_another_scope_is_stored_as_a_file_of_that_scope() {
    let fs = Fs::new();
    let src = fs.work.path("src");
    fs::create_dir_all(src.join("alice")).unwrap();
    fs::create_dir_all(src.join("bob")).unwrap();
    fs::write(src.join("alice/shared"), b"shared content").unwrap();
    fs::hard_link(src.join("alice/shared"), src.join("bob/shared")).unwrap();
    let agent = fs.agent();
    fs.push(&agent, tar_of_tree(&src), "home").unwrap();
    let bob = agent.index.file(b"home/bob/shared").unwrap().unwrap();
    assert_eq!(bob.scope, "bob");
    assert_eq!(bob.hardlink_to, None, "no link (and no name) across scopes");
    let alice = agent.index.file(b"home/alice/shared").unwrap().unwrap();
    assert_eq!(alice.scope, "alice");
    assert_ne!(alice.member, bob.member, "a member per scope");
    let dest = fs.work.path("restored");
    fs.restore(&dest);
    assert_eq!(
        fs::read(dest.join("home/bob/shared")).unwrap(),
        b"shared content"
    );
}

/// A GNU header of a regular file of `size` bytes, owned by root, mode 0644.
fn plain_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

#[test]
fn a_stream_refused_after_segments_were_written_commits_nothing() {
    let fs = Fs::new();
    let src = fs.work.path("src");
    let mut tree = TreeGen::new(&src, 3);
    tree.populate(60);
    let agent = fs.agent();
    fs.push(&agent, tar_of_tree(&src), "data").unwrap();
    let snapshots = agent.index.snapshots().unwrap();
    let store_before = cbfs_tests::describe(&fs.store, Compare::default());

    // Many new files (several 64 KiB segments close while the stream goes
    // on), then an entry that climbs out.
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..40 {
        let data = cbfs_tests::random_bytes(20_000);
        let mut h = plain_header(data.len() as u64);
        b.append_data(&mut h, format!("new/{i}"), &data[..])
            .unwrap();
    }
    let mut h = plain_header(1);
    h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    let stream = b.into_inner().unwrap();
    match fs.push(&agent, stream, "data") {
        Err(Error::Refused(why)) => assert!(why.contains("../escape"), "{why}"),
        other => panic!("the stream must be refused: {other:?}"),
    }
    assert_eq!(agent.index.snapshots().unwrap(), snapshots);
    assert!(agent.index.file(b"data/new/0").unwrap().is_none());
    assert!(
        !agent.index.state().unwrap().dirty,
        "nothing waits for a snapshot"
    );
    let store_after = cbfs_tests::describe(&fs.store, Compare::default());
    assert_eq!(
        store_before, store_after,
        "a refused stream wrote to the store"
    );
    let spool: Vec<_> = fs::read_dir(fs.index.join("spool"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(spool.is_empty(), "spool left behind: {spool:?}");

    // The same files without the bad entry are stored.
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..40 {
        let data = cbfs_tests::random_bytes(20_000);
        let mut h = plain_header(data.len() as u64);
        b.append_data(&mut h, format!("new/{i}"), &data[..])
            .unwrap();
    }
    let done = fs
        .push(&agent, b.into_inner().unwrap(), "data/more")
        .unwrap();
    assert_eq!(
        done.files, 40,
        "40 files (their folder is implied): {done:?}"
    );
}

/// A pax global header with one record.
fn global_header(key: &str, value: &str) -> (tar::Header, Vec<u8>) {
    let rest = format!(" {key}={value}\n");
    let len = (1..)
        .find(|n: &usize| n.to_string().len() + rest.len() == *n)
        .unwrap();
    let record = format!("{len}{rest}").into_bytes();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XGlobalHeader);
    h.set_path("pax_global_header").unwrap();
    h.set_mode(0o644);
    h.set_size(record.len() as u64);
    h.set_cksum();
    (h, record)
}

#[test]
fn small_files_in_memory_wait_for_the_workers_once_the_memory_is_spent() {
    let fs = Fs::new();
    let (src, _) = fs.tree_with_a_link(5, 150);
    let agent = fs.agent();
    let stream = tar_of_tree(&src);
    assert!(
        stream.windows(16).any(|w| w == b"CBFS.links=marke"),
        "cbfs-tier push marks its linked files"
    );
    let mut opts = fs.opts("data");
    // Far less than the tree: the stream waits for the workers many times.
    opts.push_memory = 32 << 10;
    let report = fs.push_with(&agent, stream, opts).unwrap();
    assert!(report.files > 150, "{report:?}");
    fs.restored_like(&src);
}

#[test]
fn a_link_to_a_file_that_a_marking_stream_did_not_mark_is_refused() {
    let fs = Fs::new();
    let agent = fs.agent();
    let snapshots = agent.index.snapshots().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let (h, record) = global_header("CBFS.links", "marked");
    b.append(&h, record.as_slice()).unwrap();
    let mut h = plain_header(5);
    b.append_data(&mut h, "unmarked", &b"hello"[..]).unwrap();
    let mut h = plain_header(0);
    h.set_entry_type(tar::EntryType::Link);
    b.append_link(&mut h, "link", "unmarked").unwrap();
    let stream = b.into_inner().unwrap();
    match fs.push(&agent, stream.clone(), "data") {
        Err(Error::Refused(why)) => {
            assert!(
                why.contains("\"link\"") && why.contains("did not mark"),
                "{why}"
            )
        }
        other => panic!("the stream must be refused: {other:?}"),
    }
    assert_eq!(agent.index.snapshots().unwrap(), snapshots);
    assert!(agent.index.file(b"data/unmarked").unwrap().is_none());

    // The same stream without the global header: every file is kept on
    // the spool, and the link is fine.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = plain_header(5);
    b.append_data(&mut h, "unmarked", &b"hello"[..]).unwrap();
    let mut h = plain_header(0);
    h.set_entry_type(tar::EntryType::Link);
    b.append_link(&mut h, "link", "unmarked").unwrap();
    let report = fs.push(&agent, b.into_inner().unwrap(), "data").unwrap();
    assert_eq!(report.files, 2, "{report:?}");
}

#[test]
fn an_entry_whose_headers_pass_the_limit_is_refused_before_they_fill_memory() {
    let fs = Fs::new();
    let agent = fs.agent();
    // A GNU long name of 9 MiB: the tar reader would hold it whole.
    let mut b = tar::Builder::new(Vec::new());
    let name = vec![b'a'; 9 << 20];
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_path("././@LongLink").unwrap();
    h.set_mode(0o644);
    h.set_size(name.len() as u64);
    h.set_cksum();
    b.append(&h, name.as_slice()).unwrap();
    let mut h = plain_header(5);
    b.append_data(&mut h, "short", &b"hello"[..]).unwrap();
    match fs.push(&agent, b.into_inner().unwrap(), "data") {
        Err(Error::Refused(why)) => assert!(why.contains("headers"), "{why}"),
        other => panic!("the stream must be refused: {other:?}"),
    }
    assert!(agent.index.snapshots().unwrap().is_empty());
}

#[test]
fn a_pushed_tree_keeps_its_special_files_and_leaves_sockets_out() {
    use std::os::unix::fs::{FileTypeExt, symlink};
    assert!(
        rustix::process::geteuid().is_root(),
        "this test makes a device file: run it as root"
    );
    let fs = Fs::new();
    let src = fs.work.path("src");
    fs::create_dir_all(src.join("dev")).unwrap();
    fs::write(src.join("dev/plain"), b"plain").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("dev/full"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o640),
        rustix::fs::makedev(1, 7),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("dev/pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    symlink("plain", src.join("dev/to-plain")).unwrap();
    // A time before 1970 with a fraction: 1.5 s before.
    let before_1970 = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: -2,
            tv_nsec: 500_000_000,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: -2,
            tv_nsec: 500_000_000,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        src.join("dev/plain"),
        &before_1970,
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(src.join("dev/socket")).unwrap();
    assert!(
        fs::symlink_metadata(src.join("dev/socket"))
            .unwrap()
            .file_type()
            .is_socket()
    );

    let stream = tar_of_tree(&src);
    let mut seen = std::collections::BTreeMap::new();
    for entry in tar::Archive::new(stream.as_slice()).entries().unwrap() {
        let entry = entry.unwrap();
        let h = entry.header();
        let path = entry.path().unwrap().display().to_string();
        // (The global header's device fields are left empty.)
        let numbers = (
            h.device_major().ok().flatten(),
            h.device_minor().ok().flatten(),
        );
        seen.insert(path, (h.entry_type(), h.mode().unwrap(), numbers));
    }
    let (kind, mode, numbers) = seen["dev/full"];
    assert_eq!(kind, tar::EntryType::Char);
    assert_eq!(mode, 0o640, "permission bits only");
    assert_eq!(numbers, (Some(1), Some(7)), "the device's numbers");
    assert_eq!(seen["dev/pipe"].0, tar::EntryType::Fifo);
    assert_eq!(seen["dev/to-plain"].0, tar::EntryType::Symlink);
    assert_eq!(seen["dev/plain"].0, tar::EntryType::Regular);
    assert!(!seen.contains_key("dev/socket"), "a socket is left out");

    // The gateway's side takes them all.
    let agent = fs.agent();
    let report = fs.push(&agent, stream, "data").unwrap();
    assert!(report.snapshot.is_some(), "{report:?}");
    let full = agent.index.file(b"data/dev/full").unwrap().unwrap();
    assert_eq!(
        full.stat.rdev,
        rustix::fs::makedev(1, 7),
        "the numbers kept"
    );
    let plain = agent.index.file(b"data/dev/plain").unwrap().unwrap();
    assert_eq!(
        (plain.stat.mtime, plain.stat.mtime_ns),
        (-2, 500_000_000),
        "1.5 s before 1970, not 2.5"
    );
}

#[test]
fn a_file_under_a_lease_is_read_once_the_lease_is_given_back() {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    // The lease's break is signalled to this process (SIGIO): ignored.
    unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
    let fs = Fs::new();
    let src = fs.work.mkdir("src");
    fs::write(src.join("leased"), b"leased content").unwrap();
    let holder = fs::OpenOptions::new()
        .write(true)
        .open(src.join("leased"))
        .unwrap();
    let taken = unsafe { libc::fcntl(holder.as_raw_fd(), libc::F_SETLEASE, libc::F_WRLCK) };
    assert_eq!(taken, 0, "{}", std::io::Error::last_os_error());
    let given_back = Arc::new(AtomicBool::new(false));
    let giver = {
        let given_back = given_back.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            given_back.store(true, Ordering::SeqCst);
            let r = unsafe { libc::fcntl(holder.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
            assert_eq!(r, 0);
        })
    };
    // The push's open meets the lease, waits for it, then reads the file.
    let stream = tar_of_tree(&src);
    assert!(
        given_back.load(Ordering::SeqCst),
        "read before the lease went"
    );
    giver.join().unwrap();
    let mut found = false;
    for entry in tar::Archive::new(stream.as_slice()).entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some("leased") {
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
            assert_eq!(content, b"leased content");
            found = true;
        }
    }
    assert!(found, "the leased file is in the stream");
}
