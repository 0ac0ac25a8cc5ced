//! Test support: writes small stores with the layout and order the tiering
//! agent uses (`tiering/src/out.rs`: segment, lockboxes, summary, manifest,
//! and `keysets/<serial>.json`), minus RocksDB, and scans real trees into
//! member metadata the way the agent's scanner does.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cbfs_core::umbral_pre::{PublicKey, Signer};
use cbfs_core::{
    AdminSecret, FsName, Keyset, ScopeLabel, Seed, UserName, UserSecret, fingerprint,
    public_key_hex,
};
use cbfs_format::{
    EntryKind, GroupKey, Lockbox, Manifest, ManifestBuilder, ManifestEntry, MemberId, Metadata,
    SegmentId, SegmentMode, SegmentWriter, SnapshotId, Timestamp, layout,
};

pub const GNU_TAR: &str = "/usr/bin/tar";
pub const BSDTAR: &str = "/usr/bin/bsdtar";

/// Deterministic bytes (xorshift64*), so that tests are reproducible.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn seed(bytes32: &[u8]) -> Seed {
    Seed::from_slice(bytes32, "test").unwrap()
}

pub fn label(s: &str) -> ScopeLabel {
    ScopeLabel::new(s).unwrap()
}

/// An administrator, the keyset (scopes `default`, `alice`, `bob`) and a
/// registered writer.
pub struct Keys {
    pub admin: AdminSecret,
    pub keyset: Keyset,
    pub writer: Signer,
    pub writer_seed: Vec<u8>,
}

impl Keys {
    pub fn new(admin_seed: &[u8], writer_seed: &[u8], register_writer: bool) -> Keys {
        let admin = AdminSecret::from_seed(seed(admin_seed));
        let mut ks = Keyset::new(FsName::new("fixture").unwrap(), &admin);
        ks.add_scope(&admin, &label("alice")).unwrap();
        ks.add_scope(&admin, &label("bob")).unwrap();
        let writer = UserSecret::from_seed(seed(writer_seed)).signer();
        if register_writer {
            ks.add_writer(
                &admin,
                &UserName::new("agent").unwrap(),
                writer.verifying_key(),
            )
            .unwrap();
        }
        let signed = ks.to_signed_bytes(&admin).unwrap();
        let keyset = Keyset::from_bytes(&signed, "keyset").unwrap();
        Keys {
            admin,
            keyset,
            writer,
            writer_seed: writer_seed.to_vec(),
        }
    }

    pub fn random(register_writer: bool) -> Keys {
        let a = Seed::generate();
        let w = Seed::generate();
        Keys::new(
            a.expose_secret_bytes(),
            w.expose_secret_bytes(),
            register_writer,
        )
    }
}

/// One entry to store: metadata, content and scope.
pub struct Item {
    pub meta: Metadata,
    pub content: Vec<u8>,
    pub scope: String,
}

pub fn file(path: &str, content: Vec<u8>, scope: &str) -> Item {
    let mut meta = Metadata::new(path.as_bytes(), EntryKind::File);
    meta.size = content.len() as u64;
    meta.mode = 0o640;
    meta.uid = 1000;
    meta.gid = 1000;
    meta.uname = "alice".into();
    meta.gname = "staff".into();
    meta.mtime = Timestamp::new(1_700_000_000, 123_456_789);
    Item {
        meta,
        content,
        scope: scope.into(),
    }
}

pub fn entry(path: &[u8], kind: EntryKind, scope: &str) -> Item {
    let mut meta = Metadata::new(path, kind);
    meta.mtime = Timestamp::new(1_600_000_000, 0);
    Item {
        meta,
        content: Vec::new(),
        scope: scope.into(),
    }
}

/// What a segment holds: its id and each member's path and id.
#[derive(Clone, Debug)]
pub struct SegmentRecord {
    pub id: SegmentId,
    pub members: Vec<(Vec<u8>, MemberId)>,
    pub groups: BTreeMap<String, cbfs_format::GroupId>,
}

impl SegmentRecord {
    pub fn member(&self, path: &str) -> MemberId {
        self.members
            .iter()
            .find(|(p, _)| p == path.as_bytes())
            .unwrap_or_else(|| panic!("no member {path}"))
            .1
    }
}

/// Writes a store as the tiering agent does.
pub struct StoreWriter<'k> {
    pub root: PathBuf,
    keys: &'k Keys,
    live: BTreeMap<Vec<u8>, ManifestEntry>,
    last: Option<Manifest>,
    /// The sequence number of the last snapshot written (the next is one more).
    pub sequence: u64,
    /// Write delta manifests where they are smaller (on by default).
    pub deltas: bool,
}

impl<'k> StoreWriter<'k> {
    pub fn new(root: &Path, keys: &'k Keys) -> Self {
        for d in ["segments", "lockboxes", "summaries", "snapshots", "keysets"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let ks = keys.keyset.to_signed_bytes(&keys.admin).unwrap();
        fs::write(root.join(layout::keyset(keys.keyset.serial())), ks).unwrap();
        StoreWriter {
            root: root.to_owned(),
            keys,
            live: BTreeMap::new(),
            last: None,
            sequence: 0,
            deltas: true,
        }
    }

    /// Segment first, then its lockboxes, then its summary.
    pub fn segment(&mut self, mode: SegmentMode, items: &[Item]) -> SegmentRecord {
        let id = SegmentId::random();
        let spool_path = self.root.join(format!(".spool-{id}"));
        let spool = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&spool_path)
            .unwrap();
        let mut w = SegmentWriter::new(spool, id, mode).unwrap();
        let mut groups: HashMap<String, GroupKey> = HashMap::new();
        let mut lockboxes = Vec::new();
        let mut members = Vec::new();
        for item in items {
            let member = MemberId::random();
            let entry = match mode {
                SegmentMode::Plain => w
                    .append_plain(member, &item.meta, &item.content[..])
                    .unwrap(),
                SegmentMode::Encrypted => {
                    if !groups.contains_key(&item.scope) {
                        let pk = self.keys.keyset.scope(&label(&item.scope)).unwrap();
                        let (lb, key) = Lockbox::seal(&item.scope, pk, id).unwrap();
                        lockboxes.push(lb);
                        groups.insert(item.scope.clone(), key);
                    }
                    let key = &groups[&item.scope];
                    w.append_encrypted(member, key, &item.meta, &item.content[..])
                        .unwrap()
                }
            };
            self.live.insert(
                item.meta.path.clone(),
                ManifestEntry::single(id, member, entry.sha256),
            );
            members.push((item.meta.path.clone(), member));
        }
        let (mut spool, summary) = w.finish().unwrap();
        spool.set_len(summary.segment_len()).unwrap();
        spool.seek(SeekFrom::Start(0)).unwrap();
        drop(spool);
        fs::rename(&spool_path, self.root.join(layout::segment(&id))).unwrap();
        let mut group_ids = BTreeMap::new();
        for lb in &lockboxes {
            let key = layout::lockbox(&id, &lb.group_id());
            let path = self.root.join(&key);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, lb.to_bytes()).unwrap();
            group_ids.insert(lb.scope().to_owned(), lb.group_id());
        }
        fs::write(self.root.join(layout::summary(&id)), summary.to_bytes()).unwrap();
        SegmentRecord {
            id,
            members,
            groups: group_ids,
        }
    }

    /// Forgets a path, as a deletion in the tree would.
    pub fn delete(&mut self, path: &str) {
        self.live.remove(path.as_bytes());
    }

    /// A signed manifest of everything live, chained to the previous one.
    pub fn snapshot(&mut self) -> (String, Manifest) {
        self.sequence += 1;
        let id = SnapshotId::random();
        let previous = self.last.as_ref().map(Manifest::hash);
        let mut b = ManifestBuilder::new(
            id,
            self.sequence,
            previous,
            1_700_000_000 + self.sequence as i64,
        );
        b.extend(self.live.values().copied());
        // As the agent does: a delta against the previous manifest when
        // that is smaller (cbfs_format decides), else a full manifest.
        let m = match &self.last {
            Some(base) if self.deltas => b.sign_delta(&self.keys.writer, base).unwrap(),
            _ => b.sign(&self.keys.writer).unwrap(),
        };
        let key = layout::manifest(self.sequence, &id);
        fs::write(self.root.join(&key), m.to_bytes()).unwrap();
        self.last = Some(m.clone());
        (key, m)
    }
}

/// Reads the extended attributes of a path (not following a symbolic link).
pub fn xattrs_of(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    if let Ok(names) = xattr::list(path) {
        for name in names {
            if let Ok(Some(v)) = xattr::get(path, &name) {
                out.insert(name.as_bytes().to_vec(), v);
            }
        }
    }
    out
}

/// Scans a tree into member metadata and content, in sorted order, as the
/// tiering agent does (hard links point at the first path of the inode).
pub fn scan_tree(root: &Path) -> Vec<(Metadata, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort_by(|a, b| {
            a.file_name()
                .unwrap()
                .as_bytes()
                .cmp(b.file_name().unwrap().as_bytes())
        });
        for p in names {
            out.push(p.clone());
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                walk(&p, out);
            }
        }
    }
    let mut paths = Vec::new();
    walk(root, &mut paths);
    let mut first: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut out = Vec::new();
    for p in paths {
        let st = fs::symlink_metadata(&p).unwrap();
        let rel = p
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        let ft = st.file_type();
        let mut hardlink = None;
        if st.nlink() > 1 && !ft.is_dir() {
            match first.get(&(st.dev(), st.ino())) {
                Some(f) => hardlink = Some(f.clone()),
                None => {
                    first.insert((st.dev(), st.ino()), rel.clone());
                }
            }
        }
        let kind = if let Some(target) = hardlink {
            EntryKind::Hardlink { target }
        } else if ft.is_file() {
            EntryKind::File
        } else if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            EntryKind::Symlink {
                target: fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec(),
            }
        } else {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_fifo() {
                EntryKind::Fifo
            } else {
                panic!("unexpected file type at {}", p.display())
            }
        };
        let mut meta = Metadata::new(rel, kind.clone());
        meta.mode = st.permissions().mode() & 0o7777;
        meta.uid = st.uid();
        meta.gid = st.gid();
        meta.uname = if st.uid() == 0 {
            "root".into()
        } else {
            String::new()
        };
        meta.gname = if st.gid() == 0 {
            "root".into()
        } else {
            String::new()
        };
        meta.mtime = Timestamp::new(st.mtime(), st.mtime_nsec() as u32);
        meta.xattrs = xattrs_of(&p);
        let content = if kind == EntryKind::File {
            fs::read(&p).unwrap()
        } else {
            Vec::new()
        };
        meta.size = content.len() as u64;
        out.push((meta, content));
    }
    out
}

/// Runs a command, returning its output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// The cbfs-recover binary, its trust records in `dir/trusted-admins.json`
/// (never the user's own).
pub fn recover_cmd(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cbfs-recover"));
    cmd.env("CBFS_TRUST_FILE", trust_file(dir))
        .env_remove("CBFS_LOG");
    cmd
}

/// Where [`recover_cmd`] keeps the trust records for `dir`.
pub fn trust_file(dir: &Path) -> PathBuf {
    dir.join("trusted-admins.json")
}

/// The body of a keyset document, in the field order `cbfs-core` signs.
#[derive(serde::Serialize)]
struct KeysetBody {
    format: &'static str,
    version: u32,
    fs: String,
    serial: u64,
    updated: String,
    admin_verifying_key: String,
    scopes: BTreeMap<String, String>,
    writers: BTreeMap<String, String>,
}

/// A keyset as someone who can write to the store would forge it: the real
/// keyset's file system name and scope public keys copied, signed by
/// `forger`, with `serial` and the given writers.
pub fn forged_keyset(
    real: &Keyset,
    forger: &AdminSecret,
    serial: u64,
    writers: &[(&str, PublicKey)],
) -> Keyset {
    let body = KeysetBody {
        format: "cbfs-keyset",
        version: 1,
        fs: real.fs().to_string(),
        serial,
        updated: real.updated().to_owned(),
        admin_verifying_key: public_key_hex(&forger.verifying_key()),
        scopes: real
            .scopes()
            .iter()
            .map(|(l, k)| (l.to_string(), public_key_hex(k)))
            .collect(),
        writers: writers
            .iter()
            .map(|(n, k)| ((*n).to_owned(), public_key_hex(k)))
            .collect(),
    };
    let mut msg = b"cbfs-keyset/v1\0".to_vec();
    msg.extend_from_slice(&serde_json::to_vec(&body).unwrap());
    let signature = forger.signer().sign(&msg);
    let mut value = serde_json::to_value(&body).unwrap();
    value["signature"] = hex::encode(signature.to_der_bytes()).into();
    let bytes = serde_json::to_vec_pretty(&value).unwrap();
    let keyset = Keyset::from_bytes(&bytes, "forged keyset").unwrap();
    assert_eq!(keyset.admin_verifying_key(), &forger.verifying_key());
    keyset
}

/// Stores `keyset`, signed by `admin`, as `keysets/<serial>.json`.
pub fn publish_keyset(store: &Path, keyset: &Keyset, admin: &AdminSecret) -> PathBuf {
    let path = store.join(layout::keyset(keyset.serial()));
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, keyset.to_signed_bytes(admin).unwrap()).unwrap();
    path
}

/// The administrator fingerprint of a keyset, as `--admin-key` takes it.
pub fn admin_fingerprint(keyset: &Keyset) -> String {
    fingerprint(keyset.admin_verifying_key())
}

/// A small encrypted store: two snapshots over two segments (scopes
/// `default` and `alice`); returns what the newest snapshot holds.
pub fn small_store(root: &Path, keys: &Keys) -> BTreeMap<String, Vec<u8>> {
    let mut w = StoreWriter::new(root, keys);
    w.segment(
        SegmentMode::Encrypted,
        &[
            file("docs/one.txt", b"one\n".to_vec(), "default"),
            file("alice/a.txt", b"alice\n".to_vec(), "alice"),
        ],
    );
    w.snapshot();
    w.segment(
        SegmentMode::Encrypted,
        &[file("docs/two.bin", bytes(21, 9000), "default")],
    );
    w.snapshot();
    [
        ("alice/a.txt", b"alice\n".to_vec()),
        ("docs/one.txt", b"one\n".to_vec()),
        ("docs/two.bin", bytes(21, 9000)),
    ]
    .into_iter()
    .map(|(p, c)| (p.to_owned(), c))
    .collect()
}

/// The files (regular entries) of a tar, by path.
pub fn tar_files(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    tar_entries(bytes)
        .into_iter()
        .filter(|e| e.kind == tar::EntryType::Regular)
        .map(|e| (e.path, e.content))
        .collect()
}

/// Writes a raw key file with mode 0600, as a key source wants it.
pub fn key_file(dir: &Path, name: &str, bytes32: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes32).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Copies a directory tree (for damaging a copy of a fixture store).
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Flips the bits of one byte of a file.
pub fn flip(path: &Path, offset: u64) {
    let mut b = fs::read(path).unwrap();
    b[offset as usize] ^= 0xff;
    fs::write(path, b).unwrap();
}

/// Checks that a tool is installed; fails (does not skip) with how to get it.
pub fn need(tool: &str, package: &str) {
    assert!(
        Path::new(tool).exists(),
        "{tool} is needed by this test: install the Debian package `{package}`"
    );
}

/// A temporary directory, kept (and named on stderr) when `CBFS_TEST_KEEP` is set.
pub struct TestDir {
    path: PathBuf,
    _guard: Option<tempfile::TempDir>,
}

impl TestDir {
    pub fn new() -> TestDir {
        let tmp = tempfile::tempdir().unwrap();
        if std::env::var_os("CBFS_TEST_KEEP").is_some() {
            let path = tmp.keep();
            eprintln!("keeping {}", path.display());
            TestDir { path, _guard: None }
        } else {
            TestDir {
                path: tmp.path().to_owned(),
                _guard: Some(tmp),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The committed fixtures (see tests/generate_fixtures.rs).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The fixtures' index.json.
pub fn fixture_index() -> serde_json::Value {
    serde_json::from_slice(&fs::read(fixtures().join("index.json")).unwrap()).unwrap()
}

/// A seed from a committed key file.
pub fn fixture_seed(name: &str) -> Seed {
    seed(&fs::read(fixtures().join("keys").join(name)).unwrap())
}

/// The fixture keyset.
pub fn fixture_keyset() -> Keyset {
    Keyset::load(&fixtures().join("keyset.json")).unwrap()
}

/// A copy of a fixture store (`store`, `plain-store`, `evil-store`) with a
/// damage variant laid over it.
pub fn fixture_store(base: &str, variant: Option<&str>) -> (TestDir, PathBuf) {
    let dir = TestDir::new();
    let store = dir.path().join("store");
    copy_tree(&fixtures().join(base), &store);
    if let Some(name) = variant {
        let index = fixture_index();
        let v = index["variants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variant {name}"));
        for key in v["replace"].as_array().unwrap() {
            let key = key.as_str().unwrap();
            let to = store.join(key);
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::copy(fixtures().join("variants").join(name).join(key), to).unwrap();
        }
        for key in v["delete"].as_array().unwrap() {
            fs::remove_file(store.join(key.as_str().unwrap())).unwrap();
        }
    }
    (dir, store)
}

/// One entry of a tar, as the `tar` crate reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct TarEntry {
    pub path: String,
    pub kind: tar::EntryType,
    pub link: Option<String>,
    pub content: Vec<u8>,
    pub mode: u32,
}

pub fn tar_entries(bytes: &[u8]) -> Vec<TarEntry> {
    use std::io::Read;
    let mut archive = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = String::from_utf8_lossy(&e.path_bytes())
            .trim_end_matches('/')
            .to_owned();
        let kind = e.header().entry_type();
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        let mode = e.header().mode().unwrap();
        let mut content = Vec::new();
        e.read_to_end(&mut content).unwrap();
        out.push(TarEntry {
            path,
            kind,
            link,
            content,
            mode,
        });
    }
    out
}

/// Stores a full manifest of `entries` under sequence `sequence`, signed by
/// `signer` (a forgery when the keyset does not register it); returns its
/// object key.
pub fn plant_manifest(
    store: &Path,
    sequence: u64,
    previous: Option<[u8; 32]>,
    entries: &[ManifestEntry],
    signer: &Signer,
) -> String {
    let id = SnapshotId::random();
    let mut b = ManifestBuilder::new(id, sequence, previous, 1_800_000_000 + sequence as i64);
    b.extend(entries.iter().copied());
    let m = b.sign(signer).unwrap();
    let key = layout::manifest(sequence, &id);
    fs::write(store.join(&key), m.to_bytes()).unwrap();
    key
}

/// The object keys under `snapshots/` of a store, sorted.
pub fn manifest_keys(store: &Path) -> Vec<String> {
    let mut keys: Vec<String> = fs::read_dir(store.join("snapshots"))
        .unwrap()
        .map(|e| format!("snapshots/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    keys.sort();
    keys
}

/// The signer of a fresh key nobody registered.
pub fn stranger_signer() -> Signer {
    UserSecret::generate().signer()
}
