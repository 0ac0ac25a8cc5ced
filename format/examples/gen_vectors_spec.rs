//! Adds to `format/vectors/` the vectors that pin what `docs/FORMAT.md`
//! spells out for a second implementation, leaving every other vector as
//! it is:
//!
//! - `lockbox-dem`: the committed lockboxes `lockbox-ok` and `lockbox-v2-ok`
//!   taken apart step by step (capsule in MessagePack and in its simple
//!   form, the shared point, the DEM key, the nonce, the sealed plaintext);
//! - `names`: every kind of object name the store holds;
//! - `snapshot`: a manifest naming the members of the committed segment
//!   `segment-v2-ok`, to show what an entry's `sha256` is (the SHA-256 of the
//!   member's stored bytes, as in the summary).
//!
//! ```sh
//! cargo run --example gen_vectors_spec [-- format/vectors]
//! ```
//!
//! The lockboxes are the committed files and the names are made of fixed
//! ids, so a rerun writes the same entries; it writes one file, the
//! manifest `manifest-of-segment-v2.manifest`, whose signature differs on
//! every run (the committed file is the reference).

mod common;
#[path = "../tests/spec/mod.rs"]
mod spec;

use std::fs;

use cbfs_format::{
    GroupId, ManifestBuilder, ManifestEntry, RecordId, SegmentId, SnapshotId, Summary, layout,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use umbral_pre::{SecretKeyFactory, Signer};

const FACTORY_SEED: [u8; 32] = [0x42; 32];

/// Takes a committed lockbox apart with the scope key made from `label`.
fn dem_vector(dir: &std::path::Path, name: &str, file: &str, label: &str) -> Value {
    let factory = SecretKeyFactory::from_secure_randomness(&FACTORY_SEED).unwrap();
    let sk = factory.make_key(label.as_bytes());
    let scalar: [u8; 32] = sk.to_be_bytes().as_secret().as_slice().try_into().unwrap();
    let bytes = fs::read(dir.join(file)).unwrap();
    let lb = spec::parse_lockbox(&bytes).expect("a lockbox by the documented layout");
    let capsule = spec::parse_capsule(&lb.capsule).expect("a capsule by the documented layout");
    assert!(capsule.self_check());
    let shared = capsule.shared_point(&scalar).unwrap();
    let key = spec::dem_key(&shared);
    let sealed = spec::dem_open(&key, &lb.ciphertext, &capsule.simple()).expect("opens");
    assert_eq!(
        sealed[32..],
        spec::binding(&lb.label, lb.key_version, &lb.group, &lb.segment)
    );
    json!({
        "name": name, "kind": "lockbox-dem", "file": file, "expect": "ok",
        "scope_key_label": label,
        "key_version": lb.key_version,
        "capsule_msgpack": hex::encode(&lb.capsule),
        "capsule_simple": hex::encode(capsule.simple()),
        "shared_point": hex::encode(shared),
        "dem_key": hex::encode(key),
        "nonce": hex::encode(&lb.ciphertext[..24]),
        "sealed": hex::encode(&sealed),
        "group_key_sha256": hex::encode(Sha256::digest(&sealed[..32])),
        "note": "the lockbox opened by the recipe of docs/FORMAT.md, step by step: \
                 shared point (E + V)·sk, DEM key HKDF-SHA-256(shared point), \
                 XChaCha20-Poly1305 with the capsule's 98-byte simple form as associated data",
    })
}

fn names_vector() -> Value {
    let segment = SegmentId::from_bytes([0x5e; 16]);
    let new_segment = SegmentId::from_bytes([0x6e; 16]);
    let group = GroupId::from_bytes([0x99; 16]);
    let snapshot = SnapshotId::from_bytes([0x70; 16]);
    let record = RecordId::from_bytes([0x11; 16]);
    let (s, n, g, p, r) = (
        segment.to_string(),
        new_segment.to_string(),
        group.to_string(),
        snapshot.to_string(),
        record.to_string(),
    );
    let names = vec![
        json!({"object": "keyset", "serial": 3, "key": layout::keyset(3)}),
        json!({"object": "segment", "segment": s, "key": layout::segment(&segment)}),
        json!({"object": "summary", "segment": s, "key": layout::summary(&segment)}),
        json!({"object": "lockbox", "segment": s, "group": g, "key_version": 1,
               "key": layout::lockbox_at(&segment, &group, 1)}),
        json!({"object": "lockbox", "segment": s, "group": g, "key_version": 2,
               "key": layout::lockbox_at(&segment, &group, 2)}),
        json!({"object": "lockbox", "segment": s, "group": g, "key_version": 12,
               "key": layout::lockbox_at(&segment, &group, 12)}),
        json!({"object": "manifest", "sequence": 17, "snapshot": p,
               "key": layout::manifest(17, &snapshot)}),
        json!({"object": "retention", "time": 1_700_000_500, "record": r,
               "key": layout::retention(1_700_000_500, &record)}),
        json!({"object": "retention", "time": -5, "record": r,
               "key": layout::retention(-5, &record)}),
        json!({"object": "base", "sequence": 18, "snapshot": p,
               "key": layout::base(18, &snapshot)}),
        json!({"object": "relocation", "segment": s, "new_segment": n,
               "key": layout::relocation(&segment, &new_segment)}),
        json!({"object": "collection", "time": 1_700_000_600, "record": r,
               "key": layout::collection(1_700_000_600, &record)}),
        json!({"object": "run", "time": 1_700_000_700, "record": r,
               "key": layout::run_record(1_700_000_700, &record)}),
        json!({"object": "lease", "generation": 42, "key": layout::lease(42)}),
    ];
    json!({
        "name": "object-names", "kind": "names", "expect": "ok", "names": names,
        "note": "the object name of each kind of object, from its ids and numbers \
                 (docs/FORMAT.md, Object names)",
    })
}

/// A full manifest of the members of `segment-v2-ok`, their `sha256`
/// taken from its summary, signed by the vector writer.
fn snapshot_vector(dir: &std::path::Path) -> Value {
    let factory = SecretKeyFactory::from_secure_randomness(&FACTORY_SEED).unwrap();
    let writer = Signer::new(factory.make_key(b"vectors/writer"));
    let summary =
        Summary::from_bytes(&fs::read(dir.join("segment-v2-ok.summary")).unwrap()).unwrap();
    let mut entries: Vec<ManifestEntry> = summary
        .entries()
        .iter()
        .map(|e| ManifestEntry::single(summary.segment_id(), e.member, e.sha256))
        .collect();
    entries.sort();
    let count = entries.len();
    let mut b = ManifestBuilder::new(SnapshotId::from_bytes([0x79; 16]), 1, None, 1_700_000_200);
    for e in entries {
        b.push(e);
    }
    let file = "manifest-of-segment-v2.manifest";
    fs::write(dir.join(file), b.sign(&writer).unwrap().to_bytes()).unwrap();
    json!({
        "name": "manifest-of-segment-v2", "kind": "snapshot", "file": file,
        "segment": "segment-v2-ok.tar", "summary": "segment-v2-ok.summary", "keys": ["g1"],
        "trusted": "writer", "expect": "ok", "entries": count,
        "note": "each entry's sha256 is the SHA-256 of the member's bytes in the segment \
                 (its whole age payload), the same as the summary's, and those bytes \
                 decrypt as the member",
    })
}

fn main() {
    let dir = common::vectors_dir();
    let index = common::read_index(&dir);
    let new = vec![
        dem_vector(
            &dir,
            "lockbox-dem-ok",
            "lockbox-ok.lockbox",
            "vectors/scope",
        ),
        dem_vector(
            &dir,
            "lockbox-dem-v2-ok",
            "lockbox-v2-ok.lockbox",
            "vectors/scope/v2",
        ),
        names_vector(),
        snapshot_vector(&dir),
    ];
    common::add_vectors(&dir, index, new);
}
