//! Trust fails closed: a keyset that does not chain to the pinned
//! administrator, a keyset older than one seen before, a manifest that no
//! registered writer signed are each refused (or ignored when picking the
//! newest), never accepted with a warning. Loose segment files are restored
//! only when asked for by name, and say that nothing authenticates them.

mod support;

use std::fs;
use std::path::Path;

use cbfs_core::{AdminSecret, Keyset, UserName, fingerprint};
use cbfs_format::{Manifest, SegmentMode};
use cbfs_restore::{
    Anchors, Error, LocalDir, LockboxOpener, NoKey, Pin, Report, RestoreOptions, Snapshot, TarSink,
    Trust, TrustRecords, identify, load_keyset, open_snapshot, restore,
    restore_unauthenticated_segments, trusted_keyset,
};
use support::*;

const ADMIN: [u8; 32] = *b"trust tests: the administrator!!";
const WRITER: [u8; 32] = *b"trust tests: the agent's writer!";

fn restore_snapshot(
    store: &Path,
    snapshot: &Snapshot,
    opener: &dyn LockboxOpener,
) -> (Report, Vec<TarEntry>) {
    let source = LocalDir::new(store).unwrap();
    let mut sink = TarSink::new(Vec::new(), "memory");
    let report = restore(
        &source,
        snapshot,
        opener,
        &RestoreOptions::default(),
        &mut sink,
    )
    .unwrap();
    (report, tar_entries(&sink.into_inner().unwrap()))
}

fn files(entries: Vec<TarEntry>) -> std::collections::BTreeMap<String, Vec<u8>> {
    entries
        .into_iter()
        .filter(|e| e.kind == tar::EntryType::Regular)
        .map(|e| (e.path, e.content))
        .collect()
}

fn root_pin(admin: &AdminSecret) -> Pin {
    Pin::Root(admin.verifying_key())
}

// --- 1. No writer registered -------------------------------------------------

#[test]
fn with_no_registered_writer_no_manifest_is_trusted_unless_its_writer_is_named() {
    let dir = TestDir::new();
    let store = dir.path().join("store");
    let keys = Keys::new(&ADMIN, &WRITER, false);
    assert!(keys.keyset.writers().is_empty());
    let want = small_store(&store, &keys);
    let source = LocalDir::new(&store).unwrap();
    let keyset = load_keyset(&source, &root_pin(&keys.admin), None).unwrap();
    let writer_fp = fingerprint(&keys.writer.verifying_key());
    let newest = manifest_keys(&store).pop().unwrap();

    // The manifests are valid and signed, but by a key nobody registered.
    let err = open_snapshot(&source, &Trust::new(keyset.clone()), None).unwrap_err();
    match &err {
        Error::UntrustedWriter {
            object,
            fingerprint,
            keyset,
        } => {
            assert_eq!(object, &newest);
            assert_eq!(fingerprint, &writer_fp);
            assert!(keyset.contains("registers no writer"), "{keyset}");
        }
        other => panic!("expected an untrusted writer, got {other}"),
    }
    assert!(err.is_verification());
    assert!(
        err.to_string()
            .contains(&format!("--accept-unregistered-writer {writer_fp}")),
        "{err}"
    );
    // Asked for by sequence, the same.
    let err = open_snapshot(&source, &Trust::new(keyset.clone()), Some("1")).unwrap_err();
    assert!(matches!(err, Error::UntrustedWriter { .. }), "{err}");
    // Another key's fingerprint accepts nothing.
    let other = fingerprint(&stranger_signer().verifying_key());
    let trust = Trust::new(keyset.clone()).accept_unregistered_writer(Some(other));
    assert!(matches!(
        open_snapshot(&source, &trust, None).unwrap_err(),
        Error::UntrustedWriter { .. }
    ));

    // Named, for this one call, it is accepted (and said to be unregistered).
    let trust = Trust::new(keyset.clone()).accept_unregistered_writer(Some(writer_fp.clone()));
    let snapshot = open_snapshot(&source, &trust, None).unwrap();
    assert_eq!(snapshot.sequence(), 2);
    assert_eq!(snapshot.writer(), None);
    assert_eq!(snapshot.info().writer_fingerprint, writer_fp);
    let admin = identify(seed(&ADMIN), &keyset).unwrap();
    let (report, entries) = restore_snapshot(&store, &snapshot, &admin);
    assert!(report.failures.is_empty(), "{report:#?}");
    assert_eq!(files(entries), want);
    // The exception is the caller's, not the keyset's: a new Trust has none.
    assert!(open_snapshot(&source, &Trust::new(keyset), None).is_err());
}

// --- 2. A registered writer, and the keyset rolled back ----------------------

/// A store whose newest keyset (serial 3) registers the writer; the records
/// saw it. Then someone who can write to the store hides serial 3, serves
/// serial 2 (no writer registered) and a manifest of their own.
struct RolledBack {
    _dir: TestDir,
    store: std::path::PathBuf,
    admin: AdminSecret,
    records: TrustRecords,
    forged: String,
}

fn rolled_back() -> RolledBack {
    let dir = TestDir::new();
    let store = dir.path().join("store");
    let keys = Keys::new(&ADMIN, &WRITER, true);
    assert_eq!(keys.keyset.serial(), 3);
    let mut w = StoreWriter::new(&store, &keys);
    w.segment(
        SegmentMode::Encrypted,
        &[file("docs/real.txt", b"real\n".to_vec(), "default")],
    );
    let (_, real) = w.snapshot();

    // A restore that trusted serial 3 and saw snapshot 1.
    let source = LocalDir::new(&store).unwrap();
    let mut records = TrustRecords::load(&trust_file(dir.path())).unwrap();
    let keyset = load_keyset(&source, &root_pin(&keys.admin), Some(&records)).unwrap();
    assert_eq!(keyset.serial(), 3);
    let snapshot = open_snapshot(&source, &Trust::new(keyset.clone()), None).unwrap();
    assert_eq!(snapshot.writer(), Some("agent"));
    records.note(&keyset, snapshot.sequence());
    records.save().unwrap();

    // The rollback, and the forgery it is for.
    let older = Keys::new(&ADMIN, &WRITER, false);
    assert_eq!(older.keyset.serial(), 2);
    fs::remove_file(store.join(cbfs_format::layout::keyset(3))).unwrap();
    publish_keyset(&store, &older.keyset, &older.admin);
    let forged = plant_manifest(
        &store,
        2,
        Some(real.hash()),
        real.entries(),
        &stranger_signer(),
    );
    let records = TrustRecords::load(&trust_file(dir.path())).unwrap();
    RolledBack {
        _dir: dir,
        store,
        admin: keys.admin,
        records,
        forged,
    }
}

#[test]
fn a_keyset_older_than_the_records_saw_is_a_rollback() {
    let r = rolled_back();
    let source = LocalDir::new(&r.store).unwrap();
    for pin in [root_pin(&r.admin), Pin::Records] {
        let err = load_keyset(&source, &pin, Some(&r.records)).unwrap_err();
        assert!(matches!(err, Error::Rollback(_)), "{pin:?}: {err}");
        assert!(err.is_verification());
        assert!(
            err.to_string().contains("serial 2")
                && err.to_string().contains("serial 3 was seen before"),
            "{err}"
        );
    }
    // Through the anchors a CLI builds from the root secret, the same.
    let secret = seed(&ADMIN);
    let anchors = Anchors {
        secret: Some(&secret),
        ..Anchors::default()
    };
    let err = trusted_keyset(&source, &anchors, Some(&r.records)).unwrap_err();
    assert!(matches!(err, Error::Rollback(_)), "{err}");

    // With no records the older keyset is all there is; it registers no
    // writer, so the forged manifest is still not trusted.
    let older = load_keyset(&source, &root_pin(&r.admin), None).unwrap();
    assert_eq!(older.serial(), 2);
    let err = open_snapshot(&source, &Trust::new(older), None).unwrap_err();
    match &err {
        Error::UntrustedWriter { object, .. } => assert_eq!(object, &r.forged),
        other => panic!("expected an untrusted writer, got {other}"),
    }
}

#[test]
fn a_keyset_given_by_file_is_a_floor_too() {
    let r = rolled_back();
    let source = LocalDir::new(&r.store).unwrap();
    let newest = Keys::new(&ADMIN, &WRITER, true).keyset;
    let err = load_keyset(&source, &Pin::Keyset(Box::new(newest)), None).unwrap_err();
    assert!(matches!(err, Error::Rollback(_)), "{err}");
}

// --- 3. A keyset forged with the real scope key ------------------------------

/// The fixture store after an attack: a keyset of serial 10 signed by the
/// attacker's own administrator key, with the real scope public keys
/// copied and the attacker's writer registered, and a segment and snapshot
/// 3 that the real `alice` scope secret decrypts.
struct Forged {
    dir: TestDir,
    store: std::path::PathBuf,
    forger: AdminSecret,
}

fn forged_fixture_store() -> Forged {
    let (dir, store) = fixture_store("store", None);
    let forger = AdminSecret::generate();
    let writer = stranger_signer();
    let real = fixture_keyset();
    let keyset = forged_keyset(&real, &forger, 10, &[("agent", writer.verifying_key())]);
    assert_eq!(keyset.scope(&label("alice")), real.scope(&label("alice")));
    let keys = Keys {
        admin: AdminSecret::from_seed(seed(forger.seed().expose_secret_bytes())),
        keyset,
        writer,
        writer_seed: Vec::new(),
    };
    let mut w = StoreWriter::new(&store, &keys);
    w.sequence = 2;
    w.deltas = false;
    w.segment(
        SegmentMode::Encrypted,
        &[
            entry(b"alice", cbfs_format::EntryKind::Dir, "alice"),
            file("alice/a1.txt", b"forged\n".to_vec(), "alice"),
            file("alice/planted.sh", b"#!/bin/sh\nexit 0\n".to_vec(), "alice"),
        ],
    );
    w.snapshot();
    Forged { dir, store, forger }
}

fn the_real_alice_files(files: &std::collections::BTreeMap<String, Vec<u8>>) {
    assert_eq!(files["alice/a1.txt"], b"alice one\n");
    assert_eq!(files["alice/a2.bin"], bytes(2, 66_000));
    assert!(
        !files.contains_key("alice/planted.sh"),
        "{:?}",
        files.keys()
    );
}

#[test]
fn a_scope_secret_alone_pins_no_administrator() {
    let f = forged_fixture_store();
    let source = LocalDir::new(&f.store).unwrap();
    let records = TrustRecords::load(&trust_file(f.dir.path())).unwrap();
    let secret = fixture_seed("alice-scope.key");
    let anchors = Anchors {
        secret: Some(&secret),
        ..Anchors::default()
    };
    let err = trusted_keyset(&source, &anchors, Some(&records)).unwrap_err();
    assert!(matches!(err, Error::Keyset(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("no administrator key is pinned"), "{msg}");
    assert!(msg.contains("--admin-key"), "{msg}");
    // The newest keyset in the store, the forged one, would recognize the
    // scope secret: that is why a scope secret must not be trusted with it.
    let forged = Keyset::from_bytes(
        &fs::read(f.store.join(cbfs_format::layout::keyset(10))).unwrap(),
        "forged",
    )
    .unwrap();
    assert!(identify(fixture_seed("alice-scope.key"), &forged).is_some());
}

#[test]
fn with_the_real_administrator_pinned_the_forged_keyset_is_not_used() {
    let f = forged_fixture_store();
    let source = LocalDir::new(&f.store).unwrap();
    let real_fp = admin_fingerprint(&fixture_keyset());
    let keyset = load_keyset(&source, &Pin::Fingerprint(real_fp.clone()), None).unwrap();
    assert_eq!(keyset.serial(), 3);
    assert_eq!(
        keyset.admin_verifying_key(),
        fixture_keyset().admin_verifying_key()
    );
    assert_eq!(
        keyset.writers().get(&UserName::new("agent").unwrap()),
        fixture_keyset()
            .writers()
            .get(&UserName::new("agent").unwrap())
    );
    let snapshot = open_snapshot(&source, &Trust::new(keyset.clone()), None).unwrap();
    assert_eq!(snapshot.sequence(), 2);
    assert!(
        snapshot
            .warnings()
            .iter()
            .any(|w| w.contains("snapshots/00000000000000000003-")),
        "{:?}",
        snapshot.warnings()
    );
    let alice = identify(fixture_seed("alice-scope.key"), &keyset).unwrap();
    let (report, entries) = restore_snapshot(&f.store, &snapshot, &alice);
    assert!(report.failures.is_empty(), "{report:#?}");
    the_real_alice_files(&files(entries));

    // Pinned in the records, the next read needs no --admin-key.
    let mut records = TrustRecords::load(&trust_file(f.dir.path())).unwrap();
    records.note(&keyset, snapshot.sequence());
    let again = load_keyset(&source, &Pin::Records, Some(&records)).unwrap();
    assert_eq!(again.serial(), 3);
}

#[test]
fn with_the_real_keyset_gone_the_pin_matches_nothing() {
    let f = forged_fixture_store();
    fs::remove_file(f.store.join(cbfs_format::layout::keyset(3))).unwrap();
    let source = LocalDir::new(&f.store).unwrap();
    let real_fp = admin_fingerprint(&fixture_keyset());
    let err = load_keyset(&source, &Pin::Fingerprint(real_fp), None).unwrap_err();
    assert!(matches!(err, Error::Keyset(_)), "{err}");
    assert!(
        err.to_string()
            .contains(&fingerprint(&f.forger.verifying_key())),
        "the error names the key that signed what is there: {err}"
    );
    // A trusted keyset file does not let the forged one in either.
    let err = load_keyset(&source, &Pin::Keyset(Box::new(fixture_keyset())), None).unwrap_err();
    assert!(matches!(err, Error::Keyset(_)), "{err}");
}

// --- 4. Loose segments --------------------------------------------------------

#[test]
fn loose_segments_are_restored_only_by_name_and_marked_unauthenticated() {
    let (_d, store) = fixture_store("store", None);
    let segments: Vec<_> = fs::read_dir(store.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let admin = identify(fixture_seed("admin.key"), &fixture_keyset()).unwrap();
    let mut sink = TarSink::new(Vec::new(), "memory");
    let report = restore_unauthenticated_segments(
        &segments,
        None,
        &admin,
        &RestoreOptions::default(),
        &mut sink,
    )
    .unwrap();
    assert!(report.unauthenticated);
    assert!(!report.complete_by_manifest);
    assert!(report.snapshot.is_none());
    assert_eq!(report.restored_entries, 16);
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.starts_with("UNAUTHENTICATED")),
        "{:?}",
        report.warnings
    );
    assert!(report.human().contains("UNAUTHENTICATED"));
    // A restore of a verified snapshot says the opposite.
    let source = LocalDir::new(&store).unwrap();
    let snapshot = open_snapshot(&source, &Trust::new(fixture_keyset()), None).unwrap();
    let (report, _) = restore_snapshot(&store, &snapshot, &NoKey);
    assert!(!report.unauthenticated && report.complete_by_manifest);
}

#[test]
fn missing_or_unreadable_manifests_are_an_error_not_a_fallback() {
    let (_d, store) = fixture_store("store", None);
    let source = LocalDir::new(&store).unwrap();
    let trust = Trust::new(fixture_keyset());
    // Garbled: each manifest is ignored, and then there is no snapshot.
    for key in manifest_keys(&store) {
        fs::write(store.join(key), b"not a manifest at all").unwrap();
    }
    let err = open_snapshot(&source, &trust, None).unwrap_err();
    assert!(matches!(err, Error::NoSnapshot(_)), "{err}");
    assert!(err.to_string().contains("none of the 2 manifests"), "{err}");
    // Gone.
    for key in manifest_keys(&store) {
        fs::remove_file(store.join(key)).unwrap();
    }
    let err = open_snapshot(&source, &trust, None).unwrap_err();
    assert!(matches!(err, Error::NoSnapshot(_)), "{err}");
    assert!(
        err.to_string().contains("holds no snapshot manifest"),
        "{err}"
    );
}

// --- 5. Planted manifests ---------------------------------------------------

#[test]
fn manifests_planted_by_an_unregistered_key_do_not_hide_the_newest() {
    let (_d, store) = fixture_store("store", Some("untrusted-writer"));
    // Snapshot 3 (the variant) and a second snapshot 2, both signed by keys
    // the keyset does not register.
    let alien_key = manifest_keys(&store).pop().unwrap();
    assert!(alien_key.starts_with("snapshots/00000000000000000003-"));
    let alien =
        Manifest::from_bytes_any_signer(&fs::read(store.join(&alien_key)).unwrap()).unwrap();
    let twin = plant_manifest(&store, 2, None, alien.entries(), &stranger_signer());
    let source = LocalDir::new(&store).unwrap();
    let snapshot = open_snapshot(&source, &Trust::new(fixture_keyset()), None).unwrap();
    let real = fixture_index()["snapshots"][1].as_str().unwrap().to_owned();
    assert_eq!(snapshot.key(), real);
    assert_eq!(snapshot.writer(), Some("agent"));
    for planted in [&alien_key, &twin] {
        assert!(
            snapshot
                .warnings()
                .iter()
                .any(|w| w.starts_with(&format!("ignored {planted}"))),
            "{planted}: {:?}",
            snapshot.warnings()
        );
    }
    let admin = identify(fixture_seed("admin.key"), &fixture_keyset()).unwrap();
    let (report, _) = restore_snapshot(&store, &snapshot, &admin);
    assert!(report.failures.is_empty(), "{report:#?}");
    assert_eq!(report.restored_entries, 16);
    assert!(report.warnings.iter().any(|w| w.contains(&alien_key)));
}

// --- 6. Snapshot rollback, as the records keep it ------------------------------

#[test]
fn the_records_keep_the_highest_snapshot_seen_and_never_lower_it() {
    let (dir, store) = fixture_store("store", None);
    let source = LocalDir::new(&store).unwrap();
    let keyset = load_keyset(&source, &Pin::Keyset(Box::new(fixture_keyset())), None).unwrap();
    let path = trust_file(dir.path());
    let mut records = TrustRecords::load(&path).unwrap();
    let newest = open_snapshot(&source, &Trust::new(keyset.clone()), None).unwrap();
    assert!(records.note(&keyset, newest.sequence()));
    records.save().unwrap();
    // The store loses snapshot 2: what it shows is older than what was seen.
    fs::remove_file(store.join(fixture_index()["snapshots"][1].as_str().unwrap())).unwrap();
    let shown = open_snapshot(&source, &Trust::new(keyset.clone()), None).unwrap();
    assert_eq!(shown.sequence(), 1);
    let mut records = TrustRecords::load(&path).unwrap();
    let pinned = records.pinned("fixture").unwrap().clone();
    assert_eq!(pinned.highest_snapshot, 2);
    assert_eq!(pinned.highest_keyset_serial, 3);
    assert_eq!(pinned.fingerprint, admin_fingerprint(&keyset));
    assert!(shown.sequence() < pinned.highest_snapshot);
    // Restoring snapshot 1 on purpose does not lower what was seen.
    assert!(!records.note(&keyset, shown.sequence()));
    assert_eq!(records.pinned("fixture").unwrap().highest_snapshot, 2);
}
