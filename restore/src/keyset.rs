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
    fn accepts(&self, admin: &PublicKey, records: Option<&TrustRecords>, fs: &str) -> bool {
        match self {
            Pin::Root(k) | Pin::Admin(k) => k == admin,
            Pin::Keyset(ks) => ks.admin_verifying_key() == admin,
            Pin::Fingerprint(fp) => normalize(fp) == normalize(&fingerprint(admin)),
            Pin::Records => records
                .and_then(|r| r.admin_of(fs))
                .is_some_and(|k| &k == admin),
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
/// `$XDG_CONFIG_HOME/cbfs/` for keys that are not files). Written atomically.
#[derive(Clone, Debug)]
pub struct TrustRecords {
    path: PathBuf,
    file: RecordsFile,
}

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
        Ok(TrustRecords {
            path: path.to_owned(),
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
        let entry = self
            .file
            .file_systems
            .entry(keyset.fs().to_string())
            .or_insert_with(|| Pinned {
                admin_verifying_key: admin.clone(),
                fingerprint: fingerprint(keyset.admin_verifying_key()),
                highest_keyset_serial: 0,
                highest_snapshot: 0,
            });
        let before = entry.clone();
        if entry.admin_verifying_key != admin {
            // A deliberate new pin (the reader was given another key).
            entry.admin_verifying_key = admin;
            entry.fingerprint = fingerprint(keyset.admin_verifying_key());
            entry.highest_keyset_serial = 0;
            entry.highest_snapshot = 0;
        }
        entry.highest_keyset_serial = entry.highest_keyset_serial.max(keyset.serial());
        entry.highest_snapshot = entry.highest_snapshot.max(snapshot);
        *entry != before
    }

    /// Writes the records (atomically: a temporary file renamed over).
    pub fn save(&self) -> Result<()> {
        if let Some(dir) = self.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| Error::Output {
                target: dir.display().to_string(),
                source: e,
                fatal: false,
            })?;
        }
        let mut bytes = serde_json::to_vec_pretty(&self.file).expect("records serialize");
        bytes.push(b'\n');
        let tmp = self
            .path
            .with_extension(format!("tmp-{}", std::process::id()));
        let out = |e| Error::Output {
            target: self.path.display().to_string(),
            source: e,
            fatal: false,
        };
        std::fs::write(&tmp, &bytes).map_err(out)?;
        std::fs::rename(&tmp, &self.path).map_err(out)
    }
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
    let (mine, others): (Vec<&Found>, Vec<&Found>) = found.iter().partition(|f| {
        pin.accepts(
            f.keyset.admin_verifying_key(),
            records,
            f.keyset.fs().as_str(),
        )
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
        && p.admin_verifying_key == public_key_hex(chosen.admin_verifying_key())
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
}
