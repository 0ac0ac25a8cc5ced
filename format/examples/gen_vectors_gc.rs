//! Adds the vectors of the objects of retention and garbage collection
//! (retention records, manifest bases, relocation records, collection
//! records, run records, the collector's lease) to `format/vectors/`,
//! leaving every existing vector as it is.
//!
//! ```sh
//! cargo run -p cbfs-format --example gen_vectors_gc [-- format/vectors]
//! ```
//!
//! The keys are those of `gen_vectors` (same seeds). Everything here is
//! deterministic but the signatures' bytes, which the committed files fix.

mod common;

use std::fs;
use std::path::Path;

use cbfs_format::{
    CollectReason, CollectedSegment, Collection, ForgottenSnapshot, Lease, ManifestBase,
    ManifestBuilder, ManifestEntry, MemberId, RecordId, Relocation, RetentionRecord, RunRecord,
    SegmentId, SegmentMode, SnapshotId, SummaryEntry,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use umbral_pre::{SecretKeyFactory, Signer};

const FACTORY_SEED: [u8; 32] = [0x42; 32];

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    fs::write(dir.join(name), bytes).unwrap();
    name.to_owned()
}

fn main() {
    let dir = common::vectors_dir();
    let index = common::read_index(&dir);
    let factory = SecretKeyFactory::from_secure_randomness(&FACTORY_SEED).unwrap();
    let writer = Signer::new(factory.make_key(b"vectors/writer"));
    let mut new = Vec::new();

    // A retention record forgetting three snapshots.
    let forgotten: Vec<ForgottenSnapshot> = (1..=3u8)
        .map(|i| ForgottenSnapshot {
            sequence: u64::from(i),
            snapshot: SnapshotId::from_bytes([0x70 + i; 16]),
            manifest_hash: Sha256::digest([i]).into(),
        })
        .collect();
    let r = RetentionRecord::sign(
        RecordId::from_bytes([0x11; 16]),
        1_700_000_500,
        "--keep-last 3",
        forgotten.clone(),
        &writer,
    )
    .unwrap();
    let good = r.to_bytes();
    let file = write(&dir, "retention-ok.retention", &good);
    new.push(
        json!({"name": "retention-ok", "kind": "retention", "file": file,
        "signer": "writer", "expect": "ok", "forgotten": [1, 2, 3], "policy": "--keep-last 3",
        "note": "a writer's record forgetting snapshots 1, 2 and 3"}),
    );
    // Brand 8, version 2, id 16, created 8, key 33, policy 2 + 13, count 4:
    // the first entry; entries are 56 bytes.
    let first = 8 + 2 + 16 + 8 + 33 + 2 + 13 + 4;
    let mut flip = good.clone();
    flip[first + 2 * 56 + 7] ^= 0x04;
    let file = write(&dir, "retention-flip-sequence.retention", &flip);
    new.push(
        json!({"name": "retention-flip-sequence", "kind": "retention", "file": file,
        "signer": "writer", "expect": "bad_signature",
        "note": "the last forgotten snapshot's sequence changed from 3 to 7"}),
    );
    let mut version = good.clone();
    version[9] = 9;
    let file = write(&dir, "retention-unknown-version.retention", &version);
    new.push(
        json!({"name": "retention-unknown-version", "kind": "retention", "file": file,
        "signer": "writer", "expect": "unknown_version", "note": "version 9"}),
    );
    let mut bad_brand = good.clone();
    bad_brand[0] = b'X';
    let file = write(&dir, "retention-bad-brand.retention", &bad_brand);
    new.push(
        json!({"name": "retention-bad-brand", "kind": "retention", "file": file,
        "signer": "writer", "expect": "bad_brand"}),
    );
    let other = Signer::new(factory.make_key(b"vectors/other-writer"));
    let untrusted = RetentionRecord::sign(
        RecordId::from_bytes([0x12; 16]),
        1_700_000_500,
        "",
        forgotten,
        &other,
    )
    .unwrap();
    let file = write(
        &dir,
        "retention-other-signer.retention",
        &untrusted.to_bytes(),
    );
    new.push(
        json!({"name": "retention-other-signer", "kind": "retention", "file": file,
        "signer": "writer", "expect": "untrusted_signer",
        "note": "validly signed by another key than the trusted one"}),
    );

    // A base completing a delta manifest.
    let entry = |i: u8| {
        ManifestEntry::single(
            SegmentId::from_bytes([0x50; 16]),
            MemberId::from_bytes([i; 16]),
            Sha256::digest([i]).into(),
        )
    };
    let mut b = ManifestBuilder::new(SnapshotId::from_bytes([0x81; 16]), 1, None, 1_700_000_600);
    b.extend((1..=4).map(entry));
    let full = b.sign(&writer).unwrap();
    let mut b = ManifestBuilder::new(
        SnapshotId::from_bytes([0x82; 16]),
        2,
        Some(full.hash()),
        1_700_000_700,
    );
    b.extend((2..=6).map(entry));
    let delta = b.sign_delta(&writer, &full).unwrap();
    assert!(delta.is_delta());
    let manifest = write(&dir, "base-delta.manifest", &delta.to_bytes());
    let base = ManifestBase::of(&delta).unwrap();
    let file = write(&dir, "base-ok.base", &base.to_bytes());
    new.push(
        json!({"name": "base-ok", "kind": "base", "file": file, "manifest": manifest,
        "trusted": "writer", "expect": "ok", "entries": 5, "sequence": 2,
        "merkle_root": hex::encode(delta.merkle_root()),
        "note": "the whole snapshot of a delta manifest whose previous manifest is gone"}),
    );
    let mut forged = base.to_bytes();
    // Count at brand 8 + version 2 + hash 32 + sequence 8 + id 16.
    let count_at = 8 + 2 + 32 + 8 + 16;
    forged[count_at + 3] += 1;
    forged.extend_from_slice(SegmentId::from_bytes([0x50; 16]).as_bytes());
    forged.extend_from_slice(MemberId::from_bytes([9; 16]).as_bytes());
    forged.extend_from_slice(&Sha256::digest([9u8]));
    forged.extend_from_slice(&[1, 1]);
    let file = write(&dir, "base-extra-entry.base", &forged);
    new.push(
        json!({"name": "base-extra-entry", "kind": "base", "file": file,
        "manifest": manifest, "trusted": "writer", "expect": "merkle_mismatch",
        "note": "one entry more than the snapshot has"}),
    );
    let mut other_hash = base.to_bytes();
    other_hash[10] ^= 0x01;
    let file = write(&dir, "base-other-manifest.base", &other_hash);
    new.push(
        json!({"name": "base-other-manifest", "kind": "base", "file": file,
        "manifest": manifest, "trusted": "writer", "expect": "invalid_input",
        "note": "the base names another manifest's hash"}),
    );

    // A relocation record: two members moved into a new segment.
    let moved = |i: u8, at: u64, len: u64| SummaryEntry {
        member: MemberId::from_bytes([0x30 + i; 16]),
        header_offset: at,
        data_offset: at + 512,
        data_len: len,
        group: Some(cbfs_format::GroupId::from_bytes([1; 16])),
        sha256: Sha256::digest([i]).into(),
    };
    let rel = Relocation::new(
        SegmentId::from_bytes([0x91; 16]),
        SegmentId::from_bytes([0x92; 16]),
        SegmentMode::Encrypted,
        vec![moved(1, 1024, 700), moved(2, 2560, 100)],
    )
    .unwrap();
    let good = rel.to_bytes();
    let file = write(&dir, "relocation-ok.relocation", &good);
    new.push(
        json!({"name": "relocation-ok", "kind": "relocation", "file": file,
        "expect": "ok", "old_segment": "91".repeat(16), "new_segment": "92".repeat(16),
        "members": 2}),
    );
    // The second entry's header offset (brand 8, version 2, ids 32, mode 1,
    // count 4, first entry 88, member id 16) moved into the first member.
    let mut overlap = good.clone();
    let at = 8 + 2 + 32 + 1 + 4 + 88 + 16;
    overlap[at..at + 8].copy_from_slice(&1536u64.to_be_bytes());
    overlap[at + 8..at + 16].copy_from_slice(&2048u64.to_be_bytes());
    let file = write(&dir, "relocation-overlap.relocation", &overlap);
    new.push(
        json!({"name": "relocation-overlap", "kind": "relocation", "file": file,
        "expect": "malformed", "note": "the second member overlaps the first"}),
    );
    let mut trailing = good.clone();
    trailing.push(0);
    let file = write(&dir, "relocation-trailing-byte.relocation", &trailing);
    new.push(
        json!({"name": "relocation-trailing-byte", "kind": "relocation", "file": file,
        "expect": "malformed"}),
    );

    // A collection record.
    let c = Collection::new(
        RecordId::from_bytes([0x13; 16]),
        1_700_000_800,
        9,
        vec![
            CollectedSegment {
                segment: SegmentId::from_bytes([0x91; 16]),
                reason: CollectReason::Compacted,
                length: 65_536,
            },
            CollectedSegment {
                segment: SegmentId::from_bytes([0x93; 16]),
                reason: CollectReason::Dead,
                length: 4096,
            },
        ],
        vec![format!(
            "snapshots/{:020}-{}.manifest",
            1,
            SnapshotId::from_bytes([0x71; 16])
        )],
    )
    .unwrap();
    let good = c.to_bytes();
    let file = write(&dir, "collection-ok.collection", &good);
    new.push(
        json!({"name": "collection-ok", "kind": "collection", "file": file,
        "expect": "ok", "segments": 2, "objects": 1}),
    );
    let mut bad_key = good.clone();
    let last = bad_key.len() - 1;
    bad_key[last - 9] = b' ';
    let file = write(&dir, "collection-bad-key.collection", &bad_key);
    new.push(
        json!({"name": "collection-bad-key", "kind": "collection", "file": file,
        "expect": "malformed", "note": "a space in an object key"}),
    );

    // A run record.
    let run = RunRecord::sign(
        RecordId::from_bytes([0x14; 16]),
        1_700_000_900,
        1_700_000_960,
        Some(10),
        vec![Sha256::digest(&good).into()],
        &writer,
    )
    .unwrap();
    let good = run.to_bytes();
    let file = write(&dir, "run-ok.run", &good);
    new.push(
        json!({"name": "run-ok", "kind": "run", "file": file, "signer": "writer",
        "expect": "ok", "snapshot": 10, "acknowledges": [hex::encode(Sha256::digest(c.to_bytes()))],
        "note": "a run that saw collection-ok pending when it started"}),
    );
    let mut flip = good.clone();
    // The snapshot field: brand 8, version 2, id 16, times 16, key 33.
    flip[8 + 2 + 16 + 16 + 33 + 7] ^= 0x01;
    let file = write(&dir, "run-flip-snapshot.run", &flip);
    new.push(
        json!({"name": "run-flip-snapshot", "kind": "run", "file": file,
        "signer": "writer", "expect": "bad_signature"}),
    );

    // The collector's lease.
    let lease = Lease {
        generation: 3,
        holder: RecordId::from_bytes([0x15; 16]),
        acquired_unix: 1_700_001_000,
        expires_unix: 1_700_001_600,
        released: false,
        host: "gc-host".into(),
        pid: 4242,
    };
    let good = lease.to_bytes();
    let file = write(&dir, "lease-ok.lease", &good);
    new.push(
        json!({"name": "lease-ok", "kind": "lease", "file": file, "expect": "ok",
        "generation": 3, "host": "gc-host", "pid": 4242, "released": false}),
    );
    let mut state = good.clone();
    state[8 + 2 + 8 + 16 + 16] = 7;
    let file = write(&dir, "lease-bad-state.lease", &state);
    new.push(
        json!({"name": "lease-bad-state", "kind": "lease", "file": file,
        "expect": "malformed", "note": "state 7 (held is 1, released 2)"}),
    );

    common::add_vectors(&dir, index, new);
}
