//! What readers make of retention and garbage collection, through the
//! restore library every reader shares: trusted retention records hide
//! snapshots and explain gaps in manifest chains (and nothing else does),
//! manifest bases stand in for deleted manifests, and relocation records
//! lead to moved members, which still must be the manifest's bytes.

mod support;

use std::fs;
use std::io::Cursor;
use std::path::Path;

use cbfs_core::umbral_pre::Signer;
use cbfs_format::{
    ForgottenSnapshot, Manifest, ManifestBase, RecordId, Relocation, RetentionRecord, SegmentId,
    SegmentMode, SegmentWriter, Summary, SummaryEntry, layout,
};
use cbfs_restore::{
    AdminOpener, Error, LocalDir, Pin, RestoreOptions, TarSink, Trust, load_keyset, open_snapshot,
    restore, snapshot_listing,
};
use support::*;

const ADMIN: [u8; 32] = *b"retention tests: administrator!!";
const WRITER: [u8; 32] = *b"retention tests: agent's writer!";

/// Four snapshots (one full manifest, then deltas), one segment each.
fn history(store: &Path, keys: &Keys) -> (Vec<(String, Manifest)>, Vec<SegmentRecord>) {
    let mut w = StoreWriter::new(store, keys);
    let mut snaps = Vec::new();
    let mut segs = Vec::new();
    for i in 0..4u64 {
        segs.push(w.segment(
            SegmentMode::Encrypted,
            &[
                file(&format!("docs/{i}-a.txt"), bytes(i, 3000), "default"),
                file(&format!("alice/{i}-b.bin"), bytes(100 + i, 5000), "alice"),
            ],
        ));
        snaps.push(w.snapshot());
    }
    assert!(snaps[1].1.is_delta() && snaps[3].1.is_delta());
    (snaps, segs)
}

fn record(store: &Path, signer: &Signer, forgotten: &[&Manifest]) -> String {
    let list = forgotten
        .iter()
        .map(|m| ForgottenSnapshot {
            sequence: m.sequence(),
            snapshot: m.snapshot_id(),
            manifest_hash: m.hash(),
        })
        .collect();
    let id = RecordId::random();
    let r = RetentionRecord::sign(id, 1_700_000_100, "test", list, signer).unwrap();
    let key = layout::retention(1_700_000_100, &id);
    let path = store.join(&key);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, r.to_bytes()).unwrap();
    key
}

fn trust(store: &Path, keys: &Keys) -> Trust {
    let source = LocalDir::new(store).unwrap();
    Trust::new(load_keyset(&source, &Pin::Root(keys.admin.verifying_key()), None).unwrap())
}

fn sequences(store: &Path, trust: &Trust) -> (Vec<u64>, Vec<u64>) {
    let l = snapshot_listing(&LocalDir::new(store).unwrap(), trust, 0).unwrap();
    (
        l.kept.iter().map(|s| s.sequence()).collect(),
        l.forgotten.iter().map(|(s, _)| s.sequence()).collect(),
    )
}

fn restored_files(store: &Path, keys: &Keys, trust: &Trust) -> (cbfs_restore::Report, Vec<String>) {
    let source = LocalDir::new(store).unwrap();
    let snap = open_snapshot(&source, trust, None).unwrap();
    let opener = AdminOpener::new(cbfs_core::AdminSecret::from_seed(seed(&ADMIN)));
    let _ = keys;
    let mut sink = TarSink::new(Vec::new(), "memory");
    let report = restore(
        &source,
        &snap,
        &opener,
        &RestoreOptions::default(),
        &mut sink,
    )
    .unwrap();
    let files = tar_files(&sink.into_inner().unwrap()).into_keys().collect();
    (report, files)
}

#[test]
fn a_trusted_record_hides_snapshots_and_an_untrusted_one_changes_nothing() {
    let dir = TestDir::new();
    let store = dir.path().join("store");
    let keys = Keys::new(&ADMIN, &WRITER, true);
    let (snaps, _) = history(&store, &keys);
    let trust = trust(&store, &keys);
    // A stranger's record is ignored, and said so.
    let planted = record(&store, &stranger_signer(), &[&snaps[0].1, &snaps[1].1]);
    assert_eq!(sequences(&store, &trust), (vec![1, 2, 3, 4], vec![]));
    let l = snapshot_listing(&LocalDir::new(&store).unwrap(), &trust, 0).unwrap();
    assert!(
        l.ignored.iter().any(|(k, _)| k == &planted),
        "{:?}",
        l.ignored
    );
    // The writer's own record forgets its snapshots 1 and 2.
    record(&store, &keys.writer, &[&snaps[0].1, &snaps[1].1]);
    assert_eq!(sequences(&store, &trust), (vec![3, 4], vec![1, 2]));
    let source = LocalDir::new(&store).unwrap();
    match open_snapshot(&source, &trust, Some("1")) {
        Err(Error::NoSnapshot(msg)) => assert!(msg.contains("forgotten"), "{msg}"),
        other => panic!("snapshot 1 is forgotten: {:?}", other.map(|s| s.sequence())),
    }
    assert_eq!(open_snapshot(&source, &trust, None).unwrap().sequence(), 4);
    // A record forgetting the newest snapshot is not honoured, even the
    // administrator's.
    record(&store, &keys.admin.signer(), &[&snaps[3].1]);
    assert_eq!(sequences(&store, &trust), (vec![3, 4], vec![1, 2]));
    let newest = open_snapshot(&source, &trust, None).unwrap();
    assert_eq!(newest.sequence(), 4);
    assert!(
        newest
            .warnings()
            .iter()
            .any(|w| w.contains("never forgotten")),
        "{:?}",
        newest.warnings()
    );
}

#[test]
fn a_base_stands_in_for_deleted_manifests_and_the_gap_is_checked_against_retention() {
    let dir = TestDir::new();
    let store = dir.path().join("store");
    let keys = Keys::new(&ADMIN, &WRITER, true);
    let (snaps, _) = history(&store, &keys);
    let trust = trust(&store, &keys);
    // Forget 1 and 2; write the base of 3; delete the manifests of 1 and 2,
    // as the collector does.
    record(&store, &keys.writer, &[&snaps[0].1, &snaps[1].1]);
    let base = ManifestBase::of(&snaps[2].1).unwrap();
    let base_key = layout::base(3, &snaps[2].1.snapshot_id());
    fs::create_dir_all(store.join(layout::BASES)).unwrap();
    fs::write(store.join(&base_key), base.to_bytes()).unwrap();
    for (key, _) in &snaps[..2] {
        fs::remove_file(store.join(key)).unwrap();
    }
    assert_eq!(sequences(&store, &trust), (vec![3, 4], vec![]));
    let source = LocalDir::new(&store).unwrap();
    let three = open_snapshot(&source, &trust, Some("3")).unwrap();
    assert_eq!(three.manifest().entries(), snaps[2].1.entries());
    assert!(
        !three
            .warnings()
            .iter()
            .any(|w| w.contains("no longer in the store")),
        "the gap is explained by retention: {:?}",
        three.warnings()
    );
    let (report, files) = restored_files(&store, &keys, &trust);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(files.len(), 8);

    // A forged base is refused; with the manifests gone, snapshot 3 cannot
    // be verified any more and fails closed.
    let mut forged = base.to_bytes();
    let last = forged.len() - 3;
    forged[last] ^= 0x01;
    fs::write(store.join(&base_key), forged).unwrap();
    assert!(open_snapshot(&source, &trust, Some("3")).is_err());
    let (kept, _) = sequences(&store, &trust);
    assert!(!kept.contains(&3) && !kept.contains(&4), "{kept:?}");
}

/// Copies the members of `old` into a new segment as the collector does,
/// with the lockboxes, and writes the relocation record: the new segment's
/// id and the record's key.
fn relocate(store: &Path, old: &SegmentRecord) -> (SegmentId, String) {
    let summary =
        Summary::from_bytes(&fs::read(store.join(layout::summary(&old.id))).unwrap()).unwrap();
    let seg = fs::read(store.join(layout::segment(&old.id))).unwrap();
    let new = SegmentId::random();
    let mut w = SegmentWriter::new(Cursor::new(Vec::new()), new, summary.mode()).unwrap();
    let mut placed: Vec<SummaryEntry> = Vec::new();
    for e in summary.entries() {
        let bytes = &seg[e.header_offset as usize..(e.data_offset + e.data_len) as usize];
        placed.push(w.append_copy(&summary, &e.member, bytes).unwrap());
    }
    let (cur, new_summary) = w.finish().unwrap();
    fs::write(store.join(layout::segment(&new)), cur.into_inner()).unwrap();
    fs::write(store.join(layout::summary(&new)), new_summary.to_bytes()).unwrap();
    fs::create_dir_all(store.join(layout::lockboxes_of(&new))).unwrap();
    for g in summary.groups() {
        fs::copy(
            store.join(layout::lockbox(&old.id, &g)),
            store.join(layout::lockbox(&new, &g)),
        )
        .unwrap();
    }
    let r = Relocation::new(old.id, new, summary.mode(), placed).unwrap();
    let key = layout::relocation(&old.id, &new);
    fs::create_dir_all(store.join(layout::relocations_of(&old.id))).unwrap();
    fs::write(store.join(&key), r.to_bytes()).unwrap();
    (new, key)
}

#[test]
fn moved_members_restore_and_a_forged_relocation_fails_only_its_member() {
    let dir = TestDir::new();
    let store = dir.path().join("store");
    let keys = Keys::new(&ADMIN, &WRITER, true);
    let (_, segs) = history(&store, &keys);
    let trust = trust(&store, &keys);
    // Move the members of the first two segments, then delete those.
    let (_, key0) = relocate(&store, &segs[0]);
    let (new1, key1) = relocate(&store, &segs[1]);
    for s in &segs[..2] {
        fs::remove_file(store.join(layout::segment(&s.id))).unwrap();
        fs::remove_file(store.join(layout::summary(&s.id))).unwrap();
    }
    let (report, files) = restored_files(&store, &keys, &trust);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(files.len(), 8);

    // Point one member of the first record past the end of its new
    // segment: that member fails, named with the record; the rest is
    // restored.
    let r0 = Relocation::from_bytes(&fs::read(store.join(&key0)).unwrap()).unwrap();
    let victim = r0.entries()[0].clone();
    let mut entries = r0.entries().to_vec();
    entries[0].header_offset += 1 << 20;
    entries[0].data_offset += 1 << 20;
    let forged = Relocation::new(r0.old_segment(), r0.new_segment(), r0.mode(), entries).unwrap();
    fs::write(store.join(&key0), forged.to_bytes()).unwrap();
    let _ = (new1, key1);
    let (report, files) = restored_files(&store, &keys, &trust);
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    let f = &report.failures[0];
    assert_eq!(
        f.member.as_deref(),
        Some(victim.member.to_string().as_str())
    );
    assert!(f.error.contains(&key0), "{}", f.error);
    assert_eq!(files.len(), 7);
}
