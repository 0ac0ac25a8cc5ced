//! Which keyset to trust: the one that chains to an administrator the
//! reader trusts, never merely the store's newest.
//!
//! A store can hold anything anyone who writes to it put there: a keyset
//! signed by another administrator (with the real scope keys copied in, and
//! a writer of its own), or an older keyset of the right administrator that
//! registers no writer. So a reader pins the administrator's verifying key
//! ([`Pin`]) and the highest keyset serial it has seen ([`TrustRecords`], a
//! file beside the user's key, as ssh keeps `known_hosts`), and takes the
//! newest keyset of that administrator, refusing one older than it has seen.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cbfs_core::umbral_pre::PublicKey;
use cbfs_core::{Keyset, fingerprint, public_key_from_hex, public_key_hex};
use cbfs_format::layout;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::source::ObjectSource;

/// Where a reader's trust in an administrator key comes from.
#[derive(Clone, Debug)]
pub enum Pin {
    /// Derived from the root secret the reader holds.
    Root(PublicKey),
    /// A keyset file the reader trusts (`--keyset`): its administrator, and
    /// no store keyset older than it.
    Keyset(Box<Keyset>),
    /// A fingerprint the reader was given out of band (`--admin-key`).
    Fingerprint(String),
    /// An administrator key the caller pinned itself (the tiering agent's
    /// index remembers the one its keyset had).
    Admin(PublicKey),
    /// What the reader's own records pinned before.
    Records,
}

impl Pin {
    /// Whether a keyset chains to the pinned administrator key: signed by
    /// it, or by a key it handed over to (each hand-over signed by the key
    /// before, as the keyset proves).
    fn accepts(&self, keyset: &Keyset, records: Option<&TrustRecords>) -> bool {
        let fs = keyset.fs().as_str();
        match self {
            Pin::Root(k) | Pin::Admin(k) => keyset.chains_from(k),
            Pin::Keyset(ks) => ks.admin_history().iter().any(|k| keyset.chains_from(k)),
            Pin::Fingerprint(fp) => keyset
                .admin_history()
                .iter()
                .any(|k| normalize(fp) == normalize(&fingerprint(k))),
            Pin::Records => records
                .and_then(|r| r.admin_of(fs))
                .is_some_and(|k| keyset.chains_from(&k)),
        }
    }

    fn describe(&self) -> String {
        match self {
            Pin::Root(k) => format!(
                "the administrator key of the root secret ({})",
                fingerprint(k)
            ),
            Pin::Keyset(ks) => format!(
                "the administrator key of the given keyset ({})",
                fingerprint(ks.admin_verifying_key())
            ),
            Pin::Fingerprint(fp) => format!("the administrator key {fp} (--admin-key)"),
            Pin::Admin(k) => format!("the pinned administrator key {}", fingerprint(k)),
            Pin::Records => "the administrator key pinned in your trust records".into(),
        }
    }
}

fn normalize(fp: &str) -> String {
    fp.chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

const RECORDS_FORMAT: &str = "cbfs-trust";

/// What a reader pinned for one file system.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pinned {
    /// Hex of the administrator's verifying key.
    pub admin_verifying_key: String,
    /// Its fingerprint, for people.
    pub fingerprint: String,
    /// The highest keyset serial seen: an older one is a rollback.
    pub highest_keyset_serial: u64,
    /// The highest snapshot sequence seen: fewer is a store whose newest
    /// snapshots vanished.
    #[serde(default)]
    pub highest_snapshot: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordsFile {
    format: String,
    version: u32,
    file_systems: BTreeMap<String, Pinned>,
}

/// A reader's trust records: per file system, the administrator key it
/// pinned and the highest keyset serial and snapshot it has seen.
///
/// Kept in `trusted-admins.json` beside the user's key file (or in
/// `$XDG_CONFIG_HOME/cbfs/` for keys that are not files). Readers may run at
/// once, in one process or in many: [`save`](Self::save) holds a lock
/// (`trusted-admins.json.lock`, `flock`) while it reads the file again,
/// merges what this reader [noted](Self::note) onto what is there (never
/// lowering a floor another reader raised meanwhile), and replaces the file
/// through a temporary file of its own.
#[derive(Clone, Debug)]
pub struct TrustRecords {
    path: PathBuf,
    file: RecordsFile,
    /// What the file held for each file system when it was read: what
    /// [`note`](Self::note) changed since is what a save merges.
    read: BTreeMap<String, Pinned>,
}

/// Temporary files of saves in this process, told apart.
static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl TrustRecords {
    /// The default place: beside a key file, else the user's configuration
    /// folder. `CBFS_TRUST_FILE` overrides both.
    pub fn default_path(key_file: Option<&Path>) -> PathBuf {
        if let Some(p) = std::env::var_os("CBFS_TRUST_FILE") {
            return PathBuf::from(p);
        }
        if let Some(dir) = key_file.and_then(Path::parent) {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            return dir.join("trusted-admins.json");
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("cbfs").join("trusted-admins.json")
    }

    /// Reads the records at `path` (none yet is fine).
    pub fn load(path: &Path) -> Result<Self> {
        let file = read_records(path)?;
        Ok(TrustRecords {
            path: path.to_owned(),
            read: file.file_systems.clone(),
            file,
        })
    }

    /// Where the records live.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fails if the newest trusted snapshot of `fs`, `sequence`, is older
    /// than one seen before (or than `also`, a floor the caller knows, such
    /// as the agent's index): the store was rolled back, or its newest
    /// snapshots were hidden. `object` names the snapshot in the error.
    pub fn check_newest(&self, fs: &str, sequence: u64, also: u64, object: &str) -> Result<()> {
        let seen = self.pinned(fs).map_or(0, |p| p.highest_snapshot);
        let floor = seen.max(also);
        if sequence < floor {
            return Err(Error::Rollback(format!(
                "the store's newest trusted snapshot is sequence {sequence} ({object}), but sequence {floor} was {}: the store was rolled back or its newest snapshots were hidden; give --snapshot to restore an older one on purpose",
                if floor == seen {
                    format!("seen before (recorded in {})", self.path.display())
                } else {
                    "written by the agent (its index says so)".to_owned()
                }
            )));
        }
        Ok(())
    }

    /// What is pinned for `fs`.
    pub fn pinned(&self, fs: &str) -> Option<&Pinned> {
        self.file.file_systems.get(fs)
    }

    fn admin_of(&self, fs: &str) -> Option<PublicKey> {
        self.pinned(fs)
            .and_then(|p| public_key_from_hex(&p.admin_verifying_key).ok())
    }

    /// Records that `keyset` is trusted and is the newest seen, and that
    /// snapshots up to `snapshot` were seen; never lowers what was seen.
    /// Returns whether anything changed.
    pub fn note(&mut self, keyset: &Keyset, snapshot: u64) -> bool {
        let admin = public_key_hex(keyset.admin_verifying_key());
        let fs = keyset.fs().to_string();
        let new = !self.file.file_systems.contains_key(&fs);
        let entry = self.file.file_systems.entry(fs).or_insert_with(|| Pinned {
            admin_verifying_key: admin.clone(),
            fingerprint: fingerprint(keyset.admin_verifying_key()),
            highest_keyset_serial: 0,
            highest_snapshot: 0,
        });
        let before = entry.clone();
        let handed_over = public_key_from_hex(&entry.admin_verifying_key)
            .is_ok_and(|old| keyset.chains_from(&old));
        if entry.admin_verifying_key != admin && handed_over {
            // The administrator handed over to a new key: follow it, and
            // from now on refuse what the old key signs alone.
            entry.admin_verifying_key = admin;
            entry.fingerprint = fingerprint(keyset.admin_verifying_key());
        } else if entry.admin_verifying_key != admin {
            // A deliberate new pin (the reader was given another key).
            entry.admin_verifying_key = admin;
            entry.fingerprint = fingerprint(keyset.admin_verifying_key());
            entry.highest_keyset_serial = 0;
            entry.highest_snapshot = 0;
        }
        entry.highest_keyset_serial = entry.highest_keyset_serial.max(keyset.serial());
        entry.highest_snapshot = entry.highest_snapshot.max(snapshot);
        new || *entry != before
    }

    /// Writes the records: under the records' lock, reads the file again,
    /// merges what this reader noted onto it, and replaces it through a
    /// temporary file of its own (written, synced, renamed over). Other
    /// readers' saves in between are kept: a floor (keyset serial, snapshot)
    /// is never lowered, and a file system this reader did not touch stays
    /// as the file has it. Afterwards `self` holds the merged records.
    pub fn save(&mut self) -> Result<()> {
        let out = |target: &Path| {
            let target = target.display().to_string();
            move |e| Error::Output {
                target,
                source: e,
                fatal: false,
            }
        };
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(out(&dir))?;
        let mut name = self.path.file_name().unwrap_or_default().to_owned();
        name.push(".lock");
        let lock_path = self.path.with_file_name(&name);
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(out(&lock_path))?;
        // Released when `lock` is closed, at the end of this function.
        lock.lock().map_err(out(&lock_path))?;

        let mut on_disk = read_records(&self.path)?;
        for (fs, mine) in &self.file.file_systems {
            let read = self.read.get(fs);
            merge_pinned(&mut on_disk.file_systems, fs, mine, read);
        }
        let mut bytes = serde_json::to_vec_pretty(&on_disk).expect("records serialize");
        bytes.push(b'\n');
        let mut tmp_name = self.path.file_name().unwrap_or_default().to_owned();
        tmp_name.push(format!(
            ".tmp-{}-{}",
            std::process::id(),
            SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let tmp = self.path.with_file_name(tmp_name);
        // A file of this very name can only be left by a process that died
        // (the name carries a live process's id, and the lock is held).
        let _ = std::fs::remove_file(&tmp);
        let written = (|| {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(out(&self.path)(e));
        }
        // The rename is durable once the folder is synced (best effort:
        // not every file system lets a folder be opened for that).
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        drop(lock);
        self.read = on_disk.file_systems.clone();
        self.file = on_disk;
        Ok(())
    }
}

/// Merges `mine`, what one reader holds for `fs` (`read`: what it read from
/// the file before), into `records`, what the file holds now. What the
/// reader did not change stays as the file has it. Under one administrator
/// key, each floor is the higher of the two. A reader that pinned another
/// administrator on purpose (its key differs from what it read) replaces
/// the entry; one that only raised the floors of a key that another reader
/// has since replaced leaves that new pin alone.
fn merge_pinned(
    records: &mut BTreeMap<String, Pinned>,
    fs: &str,
    mine: &Pinned,
    read: Option<&Pinned>,
) {
    let Some(now) = records.get_mut(fs) else {
        records.insert(fs.to_owned(), mine.clone());
        return;
    };
    if read == Some(mine) {
        return;
    }
    if now.admin_verifying_key == mine.admin_verifying_key {
        now.highest_keyset_serial = now.highest_keyset_serial.max(mine.highest_keyset_serial);
        now.highest_snapshot = now.highest_snapshot.max(mine.highest_snapshot);
    } else if read.is_none_or(|r| r.admin_verifying_key != mine.admin_verifying_key) {
        *now = mine.clone();
    }
}

/// The records file at `path`, or empty records if there is none.
fn read_records(path: &Path) -> Result<RecordsFile> {
    let file = match std::fs::read(path) {
        Ok(bytes) => {
            let file: RecordsFile = serde_json::from_slice(&bytes).map_err(|e| {
                Error::Keyset(format!(
                    "trust records {}: not readable ({e}); fix or remove the file",
                    path.display()
                ))
            })?;
            if file.format != RECORDS_FORMAT || file.version != 1 {
                return Err(Error::Keyset(format!(
                    "trust records {}: format `{}` version {} is not known",
                    path.display(),
                    file.format,
                    file.version
                )));
            }
            file
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => RecordsFile {
            format: RECORDS_FORMAT.into(),
            version: 1,
            file_systems: BTreeMap::new(),
        },
        Err(e) => return Err(Error::read(path.display().to_string(), e)),
    };
    Ok(file)
}

/// A keyset found in the store.
struct Found {
    key: String,
    keyset: Keyset,
}

/// The keyset to verify a store with: the newest keyset in the store that
/// the administrator of `pin` signed, no older than the keyset file of the
/// pin and than what `records` saw. With [`Pin::Keyset`] and a store that
/// holds no keyset of that administrator, the given keyset itself.
///
/// Keysets signed by anyone else are ignored (a planted keyset cannot get in
/// the way); if the store holds only those, the error names their keys and
/// says how to pin the right one.
pub fn load_keyset(
    source: &dyn ObjectSource,
    pin: &Pin,
    records: Option<&TrustRecords>,
) -> Result<Keyset> {
    let mut found = Vec::new();
    let mut unreadable = Vec::new();
    for key in source.list(layout::KEYSETS)? {
        if parse_keyset_key(&key).is_none() {
            continue;
        }
        match source
            .get(&key)
            .and_then(|b| Keyset::from_bytes(&b, &key).map_err(|e| Error::key(key.clone(), e)))
        {
            Ok(keyset) => found.push(Found { key, keyset }),
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => unreadable.push(e.to_string()),
        }
    }
    for f in &found {
        if parse_keyset_key(&f.key) != Some(f.keyset.serial()) {
            unreadable.push(format!(
                "{} holds serial {}, not the one its name says",
                f.key,
                f.keyset.serial()
            ));
        }
    }
    found.retain(|f| parse_keyset_key(&f.key) == Some(f.keyset.serial()));
    let (mut mine, others): (Vec<&Found>, Vec<&Found>) =
        found.iter().partition(|f| pin.accepts(&f.keyset, records));
    // After a hand-over, what the old key signs alone is refused: a keyset
    // whose signer another trusted keyset shows handing over at or before
    // its serial.
    let handovers: Vec<(PublicKey, u64)> = mine
        .iter()
        .flat_map(|f| f.keyset.handovers().iter().map(|h| (h.from, h.serial)))
        .collect();
    mine.retain(|f| {
        let stale = handovers
            .iter()
            .any(|(k, at)| k == f.keyset.admin_verifying_key() && f.keyset.serial() >= *at);
        if stale {
            unreadable.push(format!(
                "{} is signed by administrator key {} alone after it handed over: refused",
                f.key,
                fingerprint(f.keyset.admin_verifying_key())
            ));
        }
        !stale
    });
    let newest = mine.iter().max_by_key(|f| f.keyset.serial());
    let floor = match pin {
        Pin::Keyset(ks) => ks.serial(),
        _ => 0,
    };
    let chosen = match (newest, pin) {
        (Some(f), _) if f.keyset.serial() >= floor => f.keyset.clone(),
        (Some(f), Pin::Keyset(ks)) => {
            return Err(Error::Rollback(format!(
                "the store's newest keyset of administrator {} is serial {} ({}), older than the serial {} of the keyset you gave: the store was rolled back",
                fingerprint(ks.admin_verifying_key()),
                f.keyset.serial(),
                f.key,
                ks.serial()
            )));
        }
        (None, Pin::Keyset(ks)) if others.is_empty() => (**ks).clone(),
        _ => {
            let mut msg = format!(
                "the store {} holds no keyset signed by {}",
                source.describe(),
                pin.describe()
            );
            if matches!(pin, Pin::Records)
                && others.iter().all(|f| {
                    records
                        .and_then(|r| r.pinned(f.keyset.fs().as_str()))
                        .is_none()
                })
            {
                msg = format!(
                    "no administrator key is pinned for this store's file system{}: ask your administrator for the key's fingerprint and give it with --admin-key FINGERPRINT (or a trusted copy of the keyset with --keyset FILE); it is then remembered in {}",
                    fs_names(&others),
                    records.map_or("your trust records".into(), |r| r
                        .path()
                        .display()
                        .to_string())
                );
            } else if !others.is_empty() {
                msg.push_str(&format!(
                    "; it holds keysets signed by {}: if you trust that administrator, pin it with --admin-key FINGERPRINT",
                    others
                        .iter()
                        .map(|f| format!(
                            "administrator key {} ({}, file system `{}`)",
                            fingerprint(f.keyset.admin_verifying_key()),
                            f.key,
                            f.keyset.fs()
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if !unreadable.is_empty() {
                msg.push_str(&format!("; unreadable: {}", unreadable.join("; ")));
            }
            return Err(Error::Keyset(msg));
        }
    };
    if let Some(p) = records.and_then(|r| r.pinned(chosen.fs().as_str()))
        && public_key_from_hex(&p.admin_verifying_key).is_ok_and(|k| chosen.chains_from(&k))
        && chosen.serial() < p.highest_keyset_serial
    {
        return Err(Error::Rollback(format!(
            "the store's newest keyset of file system `{}` is serial {}, but serial {} was seen before (recorded in {}): the store was rolled back, or the newest keyset was hidden",
            chosen.fs(),
            chosen.serial(),
            p.highest_keyset_serial,
            records.map_or(String::new(), |r| r.path().display().to_string())
        )));
    }
    Ok(chosen)
}

/// What a reader was given to pin the administrator with, in the order they
/// count: a keyset file, a fingerprint, a key the caller pinned, the root
/// secret's own key; else its trust records.
#[derive(Default)]
#[cfg(feature = "secrets")]
pub struct Anchors<'a> {
    /// `--keyset FILE`: trusted, and a floor for the store's keysets.
    pub keyset_file: Option<&'a Path>,
    /// `--admin-key FINGERPRINT`.
    pub admin_key: Option<&'a str>,
    /// An administrator key pinned elsewhere (the agent's index).
    pub pinned: Option<PublicKey>,
    /// The secret the reader holds: if it is the root secret of a keyset in
    /// the store, its own administrator key is the pin.
    pub secret: Option<&'a cbfs_core::Seed>,
}

/// The keyset to trust, from `anchors` and `records` (see [`load_keyset`]).
#[cfg(feature = "secrets")]
pub fn trusted_keyset(
    source: &dyn ObjectSource,
    anchors: &Anchors<'_>,
    records: Option<&TrustRecords>,
) -> Result<Keyset> {
    if anchors.keyset_file.is_some() && anchors.admin_key.is_some() {
        return Err(Error::Usage(
            "give either --keyset or --admin-key, not both".into(),
        ));
    }
    if let Some(path) = anchors.keyset_file {
        let ks =
            Keyset::load(path).map_err(|e| Error::key(format!("keyset {}", path.display()), e))?;
        return load_keyset(source, &Pin::Keyset(Box::new(ks)), records);
    }
    if let Some(fp) = anchors.admin_key {
        return load_keyset(source, &Pin::Fingerprint(fp.to_owned()), records);
    }
    if let Some(pk) = anchors.pinned {
        return load_keyset(source, &Pin::Admin(pk), records);
    }
    if let Some(seed) = anchors.secret {
        let copy = cbfs_core::Seed::from_slice(seed.expose_secret_bytes(), "identity")
            .map_err(|e| Error::key("identity", e))?;
        let root = Pin::Root(cbfs_core::AdminSecret::from_seed(copy).verifying_key());
        match load_keyset(source, &root, records) {
            Ok(ks) => return Ok(ks),
            // Not the root secret of this store: a scope or user secret,
            // trusted by the records.
            Err(Error::Keyset(_)) => {}
            Err(e) => return Err(e),
        }
    }
    load_keyset(source, &Pin::Records, records)
}

fn fs_names(found: &[&Found]) -> String {
    let mut names: Vec<String> = found
        .iter()
        .map(|f| format!("`{}`", f.keyset.fs()))
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        String::new()
    } else {
        format!(" {}", names.join(", "))
    }
}

fn parse_keyset_key(key: &str) -> Option<u64> {
    let serial = key.strip_prefix(layout::KEYSETS)?.strip_suffix(".json")?;
    if serial.len() != 20 || !serial.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    serial.parse().ok()
}

#[cfg(all(test, feature = "secrets"))]
mod tests {
    use super::*;
    use crate::source::LocalDir;
    use cbfs_core::{AdminSecret, FsName, ScopeLabel};

    #[test]
    fn keyset_keys() {
        assert_eq!(parse_keyset_key(&layout::keyset(12)), Some(12));
        assert_eq!(parse_keyset_key("keysets/12.json"), None);
        assert_eq!(parse_keyset_key("keysets/0000000000000000001x.json"), None);
    }

    struct World {
        dir: tempfile::TempDir,
        admin: AdminSecret,
        keyset: Keyset,
    }

    fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("keysets")).unwrap();
        let admin = AdminSecret::generate();
        let keyset = Keyset::new(FsName::new("fs1").unwrap(), &admin);
        let w = World { dir, admin, keyset };
        w.publish(&w.keyset);
        w
    }

    impl World {
        fn publish(&self, ks: &Keyset) {
            let admin = if ks.admin_verifying_key() == &self.admin.verifying_key() {
                &self.admin
            } else {
                panic!("publish_as for other admins")
            };
            self.publish_as(ks, admin);
        }
        fn publish_as(&self, ks: &Keyset, admin: &AdminSecret) {
            std::fs::write(
                self.dir.path().join(layout::keyset(ks.serial())),
                ks.to_signed_bytes(admin).unwrap(),
            )
            .unwrap();
        }
        fn source(&self) -> LocalDir {
            LocalDir::new(self.dir.path()).unwrap()
        }
    }

    #[test]
    fn a_keyset_of_another_administrator_is_refused_and_the_error_says_how_to_pin() {
        let w = world();
        // The store's newest keyset is a forgery: another administrator,
        // the same file system name, a higher serial.
        let forger = AdminSecret::generate();
        let mut forged = Keyset::new(FsName::new("fs1").unwrap(), &forger);
        for _ in 0..5 {
            forged
                .add_scope(&forger, &ScopeLabel::new("x").unwrap())
                .unwrap();
            forged
                .add_scope(
                    &forger,
                    &ScopeLabel::new(format!("x{}", forged.serial())).unwrap(),
                )
                .unwrap();
        }
        w.publish_as(&forged, &forger);
        let pin = Pin::Root(w.admin.verifying_key());
        let chosen = load_keyset(&w.source(), &pin, None).unwrap();
        assert_eq!(chosen.admin_verifying_key(), &w.admin.verifying_key());
        // Pinned to the forger's key, nothing of the real one is taken; and
        // a pin that matches nothing names what is there.
        let pin = Pin::Fingerprint(fingerprint(&AdminSecret::generate().verifying_key()));
        let err = load_keyset(&w.source(), &pin, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--admin-key"), "{err}");
        assert!(err.contains(&fingerprint(&forger.verifying_key())), "{err}");
    }

    #[test]
    fn without_a_pin_nothing_is_trusted_and_with_records_a_rollback_is_refused() {
        let w = world();
        let path = w.dir.path().join("trust.json");
        let mut records = TrustRecords::load(&path).unwrap();
        let err = load_keyset(&w.source(), &Pin::Records, Some(&records))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no administrator key is pinned"), "{err}");
        assert!(err.contains("--admin-key"), "{err}");

        // Pin by fingerprint, remember it; the next read needs no pin.
        let fp = fingerprint(&w.admin.verifying_key());
        let ks = load_keyset(&w.source(), &Pin::Fingerprint(fp), Some(&records)).unwrap();
        let mut newer = ks.clone();
        newer
            .add_scope(&w.admin, &ScopeLabel::new("alice").unwrap())
            .unwrap();
        w.publish(&newer);
        let ks = load_keyset(&w.source(), &Pin::Records, Some(&records));
        assert!(ks.is_err(), "nothing was recorded yet");
        let ks = load_keyset(
            &w.source(),
            &Pin::Fingerprint(fingerprint(&w.admin.verifying_key())),
            Some(&records),
        )
        .unwrap();
        assert_eq!(ks.serial(), 1);
        assert!(records.note(&ks, 7));
        records.save().unwrap();
        let records = TrustRecords::load(&path).unwrap();
        assert_eq!(records.pinned("fs1").unwrap().highest_keyset_serial, 1);
        assert_eq!(records.pinned("fs1").unwrap().highest_snapshot, 7);
        assert_eq!(
            load_keyset(&w.source(), &Pin::Records, Some(&records))
                .unwrap()
                .serial(),
            1
        );

        // The store hides serial 1: the older keyset is refused.
        std::fs::remove_file(w.dir.path().join(layout::keyset(1))).unwrap();
        let err = load_keyset(&w.source(), &Pin::Records, Some(&records)).unwrap_err();
        assert!(matches!(err, Error::Rollback(_)), "{err}");
        assert!(
            err.to_string().contains("serial 1 was seen before"),
            "{err}"
        );
    }

    #[test]
    fn a_given_keyset_is_a_floor() {
        let w = world();
        let mut newer = w.keyset.clone();
        newer
            .add_scope(&w.admin, &ScopeLabel::new("alice").unwrap())
            .unwrap();
        // The store holds only serial 0; the reader trusts serial 1.
        let err =
            load_keyset(&w.source(), &Pin::Keyset(Box::new(newer.clone())), None).unwrap_err();
        assert!(matches!(err, Error::Rollback(_)), "{err}");
        w.publish(&newer);
        let got = load_keyset(&w.source(), &Pin::Keyset(Box::new(w.keyset.clone())), None).unwrap();
        assert_eq!(
            got.serial(),
            1,
            "the store's newer keyset of the same administrator"
        );
    }

    /// A keyset of the file system `fs`, signed by `admin`.
    fn keyset_of(fs: &str, admin: &AdminSecret) -> Keyset {
        Keyset::new(FsName::new(fs).unwrap(), admin)
    }

    /// Fails unless the records at `path` hold `shared` as the highest
    /// snapshot of file system `shared` (the highest any reader saw), and
    /// each of `own` (file system, highest snapshot): no reader's record
    /// was lost; and no temporary file is left beside them.
    fn assert_merged(path: &Path, shared: u64, own: &[(String, u64)]) {
        let records = TrustRecords::load(path).unwrap();
        assert_eq!(
            records.pinned("shared").unwrap().highest_snapshot,
            shared,
            "the highest snapshot any reader saw"
        );
        for (fs, seen) in own {
            assert_eq!(
                records.pinned(fs).map(|p| p.highest_snapshot),
                Some(*seen),
                "{fs}"
            );
        }
        let left: Vec<String> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn concurrent_saves_in_one_process_lose_no_record_and_lower_no_floor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trusted-admins.json");
        let admin = AdminSecret::generate();
        let shared = keyset_of("shared", &admin);
        const READERS: u64 = 16;
        // Every reader reads the records before any writes them (as
        // restores that start together do), then all save at once.
        let (loaded, saving) = (
            std::sync::Barrier::new(READERS as usize),
            std::sync::Barrier::new(READERS as usize),
        );
        std::thread::scope(|s| {
            for i in 0..READERS {
                let (path, admin, shared) = (&path, &admin, &shared);
                let (loaded, saving) = (&loaded, &saving);
                s.spawn(move || {
                    // Nothing may fail before the barriers: the others would
                    // wait for ever.
                    let records = TrustRecords::load(path);
                    loaded.wait();
                    let mut records = records.unwrap();
                    let noted = records.note(shared, i + 1)
                        && records.note(&keyset_of(&format!("own{i}"), admin), i);
                    saving.wait();
                    assert!(noted, "a new file system is a change");
                    records.save().unwrap();
                    assert!(records.pinned("shared").unwrap().highest_snapshot > i);
                });
            }
        });
        let own: Vec<(String, u64)> = (0..READERS).map(|i| (format!("own{i}"), i)).collect();
        assert_merged(&path, READERS, &own);
    }

    /// What a child process of
    /// `concurrent_saves_in_many_processes_lose_no_record_and_lower_no_floor`
    /// does: `CBFS_TEST_TRUST_CHILD=PATH:ADMIN_SEED_HEX:ID`.
    #[test]
    #[ignore = "run by concurrent_saves_in_many_processes_lose_no_record_and_lower_no_floor"]
    fn trust_records_child() {
        let Ok(arg) = std::env::var("CBFS_TEST_TRUST_CHILD") else {
            return;
        };
        let mut parts = arg.rsplitn(3, ':');
        let id: u64 = parts.next().unwrap().parse().unwrap();
        let seed = hex::decode(parts.next().unwrap()).unwrap();
        let path = PathBuf::from(parts.next().unwrap());
        let admin =
            AdminSecret::from_seed(cbfs_core::Seed::from_slice(&seed, "test seed").unwrap());
        let shared = keyset_of("shared", &admin);
        for round in 0..CHILD_ROUNDS {
            let mut records = TrustRecords::load(&path).unwrap();
            records.note(&shared, id * 1000 + round);
            records.note(&keyset_of(&format!("process{id}"), &admin), round);
            records.save().unwrap();
        }
    }

    const CHILD_ROUNDS: u64 = 20;

    #[test]
    fn concurrent_saves_in_many_processes_lose_no_record_and_lower_no_floor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trusted-admins.json");
        let seed: [u8; 32] = rand_seed();
        const PROCESSES: u64 = 6;
        let children: Vec<std::process::Child> = (0..PROCESSES)
            .map(|id| {
                std::process::Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--exact",
                        "keyset::tests::trust_records_child",
                        "--ignored",
                        "--test-threads=1",
                    ])
                    .env(
                        "CBFS_TEST_TRUST_CHILD",
                        format!("{}:{}:{id}", path.display(), hex::encode(seed)),
                    )
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success(), "a child failed");
        }
        let own: Vec<(String, u64)> = (0..PROCESSES)
            .map(|id| (format!("process{id}"), CHILD_ROUNDS - 1))
            .collect();
        assert_merged(&path, (PROCESSES - 1) * 1000 + CHILD_ROUNDS - 1, &own);
    }

    fn rand_seed() -> [u8; 32] {
        let mut seed = [0u8; 32];
        use sha2::Digest as _;
        seed.copy_from_slice(&sha2::Sha256::digest(
            format!("{:?}{}", std::time::SystemTime::now(), std::process::id()).as_bytes(),
        ));
        seed
    }

    #[test]
    fn a_new_pin_replaces_the_old_one_but_a_stale_reader_does_not_undo_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trusted-admins.json");
        let (old, new) = (AdminSecret::generate(), AdminSecret::generate());
        let mut first = TrustRecords::load(&path).unwrap();
        first.note(&keyset_of("fs", &old), 3);
        first.save().unwrap();
        // Two readers read the same records; one pins another administrator
        // on purpose, the other only saw a newer snapshot of the old one.
        let mut repin = TrustRecords::load(&path).unwrap();
        let mut stale = TrustRecords::load(&path).unwrap();
        repin.note(&keyset_of("fs", &new), 1);
        repin.save().unwrap();
        stale.note(&keyset_of("fs", &old), 9);
        stale.save().unwrap();
        let now = TrustRecords::load(&path).unwrap();
        let p = now.pinned("fs").unwrap();
        assert_eq!(p.admin_verifying_key, public_key_hex(&new.verifying_key()));
        assert_eq!(p.highest_snapshot, 1);
        assert_eq!(stale.pinned("fs"), Some(p), "the saver sees the merge");
    }

    #[test]
    fn readers_follow_a_hand_over_and_refuse_the_old_key_alone_after_it() {
        let w = world();
        let old_fp = fingerprint(&w.admin.verifying_key());
        let copy = AdminSecret::from_seed(
            cbfs_core::Seed::from_slice(w.admin.seed().expose_secret_bytes(), "t").unwrap(),
        );
        let mut next = w.keyset.clone();
        let new_admin = next.rotate_admin(copy).unwrap();
        w.publish_as(&next, &new_admin);
        // The old key, alone, signs a newer keyset (it leaked).
        let mut forged = w.keyset.clone();
        for i in 0..4 {
            forged
                .add_scope(&w.admin, &ScopeLabel::new(format!("f{i}")).unwrap())
                .unwrap();
        }
        w.publish(&forged);
        for pin in [
            Pin::Fingerprint(old_fp.clone()),
            Pin::Root(w.admin.verifying_key()),
            Pin::Keyset(Box::new(w.keyset.clone())),
        ] {
            let got = load_keyset(&w.source(), &pin, None).unwrap();
            assert_eq!(got.serial(), next.serial(), "{pin:?}");
            assert_eq!(got.admin_verifying_key(), next.admin_verifying_key());
        }
        // Records that pinned the old key move to the new one, keeping the
        // serial seen.
        let path = w.dir.path().join("trust.json");
        let mut records = TrustRecords::load(&path).unwrap();
        assert!(records.note(&w.keyset, 3));
        assert!(records.note(&next, 3));
        let pinned = records.pinned("fs1").unwrap();
        assert_eq!(pinned.fingerprint, fingerprint(next.admin_verifying_key()));
        assert_eq!(pinned.highest_snapshot, 3);
        let got = load_keyset(&w.source(), &Pin::Records, Some(&records)).unwrap();
        assert_eq!(got.serial(), next.serial());
    }
}
