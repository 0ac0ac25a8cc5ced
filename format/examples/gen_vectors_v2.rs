//! Adds the vectors of the version 2 layouts (a pack member: plaintext
//! version 2; a manifest whose entries carry slot bitmaps: manifest version
//! 2; a summary whose segment digest replaces each member's data by its
//! SHA-256: summary version 2) to `format/vectors/`, leaving every existing
//! vector as it is.
//!
//! ```sh
//! cargo run -p cbfs-format --example gen_vectors_v2 [-- format/vectors]
//! ```
//!
//! The keys are those of `gen_vectors` (same seeds, group `g1`). age draws
//! file keys and nonces from the operating system, so a rerun gives other
//! member bytes: it replaces only the vectors it makes.

mod common;

use std::fs;

use std::io::Cursor;

use cbfs_format::{
    EntryKind, GroupId, GroupKey, ManifestBuilder, ManifestEntry, MemberId, Metadata, SegmentId,
    SegmentMode, SegmentWriter, SnapshotId, Timestamp, write_pack,
};
use secrecy::SecretBox;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use umbral_pre::{SecretKeyFactory, Signer};

const FACTORY_SEED: [u8; 32] = [0x42; 32];

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn main() {
    let dir = common::vectors_dir();
    let index = common::read_index(&dir);
    let g1 = GroupKey::new(
        GroupId::from_bytes([1; 16]),
        SecretBox::new(Box::new([1 ^ 0xa5; 32])),
    );
    let factory = SecretKeyFactory::from_secure_randomness(&FACTORY_SEED).unwrap();
    let writer = Signer::new(factory.make_key(b"vectors/writer"));
    let mut new = Vec::new();

    // A pack: two files and a folder in one member.
    let member = MemberId::from_bytes([0x33; 16]);
    let mut files: Vec<(Metadata, Vec<u8>)> = Vec::new();
    for (path, content) in [
        ("docs/a.txt", b"alpha\n".repeat(300)),
        ("docs", Vec::new()),
        ("docs/b.bin", (0..=255u8).cycle().take(5000).collect()),
    ] {
        let kind = if content.is_empty() {
            EntryKind::Dir
        } else {
            EntryKind::File
        };
        let mut m = Metadata::new(path, kind);
        m.size = content.len() as u64;
        m.mode = if content.is_empty() { 0o755 } else { 0o640 };
        m.uname = "alice".into();
        m.mtime = Timestamp::new(1_700_000_000, 0);
        files.push((m, content));
    }
    let refs: Vec<(&Metadata, &[u8])> = files.iter().map(|(m, c)| (m, c.as_slice())).collect();
    let pack = write_pack(Vec::new(), member, &g1, &refs, 3).unwrap();
    fs::write(dir.join("pack-ok.age"), &pack).unwrap();
    let listed: Vec<Value> = files
        .iter()
        .map(|(m, c)| json!({"path_hex": hex::encode(&m.path), "content_sha256": sha(c)}))
        .collect();
    new.push(
        json!({"name": "pack-ok", "kind": "pack", "file": "pack-ok.age",
        "member_id": member.to_string(), "keys": ["g1"], "expect": "ok", "files": listed,
        "note": "plaintext version 2: three entries (file, folder, file) in one member"}),
    );
    let mut flipped = pack.clone();
    let at = flipped.len() - 40;
    flipped[at] ^= 0x01;
    fs::write(dir.join("pack-flipped-byte.age"), &flipped).unwrap();
    new.push(
        json!({"name": "pack-flipped-byte", "kind": "pack", "file": "pack-flipped-byte.age",
        "member_id": member.to_string(), "keys": ["g1"], "expect": "payload_auth",
        "note": "one bit flipped in the last chunk"}),
    );

    // A version 2 manifest: one-file members and packs with some files gone.
    let mut b = ManifestBuilder::new(
        SnapshotId::from_bytes([0x78; 16]),
        4,
        Some([0xcd; 32]),
        1_700_000_100,
    );
    let slot_sets: [&[usize]; 4] = [&[0], &[0, 2], &[1, 2, 3, 9], &[255]];
    for (i, slots) in slot_sets.iter().enumerate() {
        let i = i as u8;
        b.push(ManifestEntry {
            slots: slots.iter().copied().collect(),
            ..ManifestEntry::single(
                SegmentId::from_bytes([0x60; 16]),
                MemberId::from_bytes([0x20 + i; 16]),
                Sha256::digest([i]).into(),
            )
        });
    }
    let m = b.sign(&writer).unwrap();
    let good = m.to_bytes();
    fs::write(dir.join("manifest-v2-ok.manifest"), &good).unwrap();
    new.push(
        json!({"name": "manifest-v2-ok", "kind": "manifest", "file": "manifest-v2-ok.manifest",
        "trusted": "writer", "expect": "ok", "entries": 4, "sequence": 4,
        "merkle_root": hex::encode(m.merkle_root()),
        "note": "version 2: entries with slot bitmaps {0}, {0,2}, {1,2,3,9}, {255}"}),
    );
    // Header: brand 8, version 2, snapshot 16, sequence 8, previous 32,
    // created 8, writer key 33; then the count (4) and the first entry:
    // ids and hash (64), bitmap length, bitmap.
    let first_len = 8 + 2 + 16 + 8 + 32 + 8 + 33 + 4 + 64;
    let mut padded = good.clone();
    assert_eq!(padded[first_len], 1);
    padded[first_len] = 2;
    padded.insert(first_len + 2, 0);
    fs::write(dir.join("manifest-v2-bitmap-padded.manifest"), &padded).unwrap();
    new.push(
        json!({"name": "manifest-v2-bitmap-padded", "kind": "manifest",
        "file": "manifest-v2-bitmap-padded.manifest", "trusted": "writer", "expect": "malformed",
        "note": "the first entry's bitmap has a trailing zero byte (not canonical)"}),
    );
    let mut slot_flip = good.clone();
    slot_flip[first_len + 1] ^= 0x02;
    fs::write(dir.join("manifest-v2-slot-added.manifest"), &slot_flip).unwrap();
    new.push(json!({"name": "manifest-v2-slot-added", "kind": "manifest",
        "file": "manifest-v2-slot-added.manifest", "trusted": "writer", "expect": "merkle_mismatch",
        "note": "slot 1 added to the first entry's bitmap"}));

    // A segment with a version 2 summary: a small member and one streamed
    // (over 1 MiB, its header written after its data).
    let mut w = SegmentWriter::new(
        Cursor::new(Vec::new()),
        SegmentId::from_bytes([0x61; 16]),
        SegmentMode::Encrypted,
    )
    .unwrap();
    let mut members = Vec::new();
    for (i, len) in [(0u8, 3000usize), (1, (1 << 20) + 5000)] {
        let content: Vec<u8> = (0..len).map(|j| (j % 251) as u8 ^ i).collect();
        let mut m = Metadata::new(format!("seg/file-{i}"), EntryKind::File);
        m.size = len as u64;
        m.mtime = Timestamp::new(1_700_000_000, 0);
        w.append_encrypted(MemberId::from_bytes([0x40 + i; 16]), &g1, &m, &content[..])
            .unwrap();
        members.push(json!({"path_hex": hex::encode(&m.path), "content_sha256": sha(&content)}));
    }
    let (spool, summary) = w.finish().unwrap();
    let seg = spool.into_inner();
    fs::write(dir.join("segment-v2-ok.tar"), &seg).unwrap();
    fs::write(dir.join("segment-v2-ok.summary"), summary.to_bytes()).unwrap();
    new.push(json!({"name": "segment-v2-ok", "kind": "segment", "file": "segment-v2-ok.tar",
        "summary": "segment-v2-ok.summary", "keys": ["g1"], "expect": "ok", "members": members,
        "note": "summary version 2: the digest of the segment with each member's data replaced by its SHA-256"}));
    // Brand 8, version 2, segment id 16, mode 1, length 8: the digest.
    let mut bad = summary.to_bytes();
    bad[35] ^= 0x01;
    fs::write(dir.join("segment-v2-digest-flipped.summary"), &bad).unwrap();
    new.push(
        json!({"name": "segment-v2-digest-flipped", "kind": "segment",
        "file": "segment-v2-ok.tar", "summary": "segment-v2-digest-flipped.summary", "keys": ["g1"],
        "expect": "summary_mismatch", "note": "one bit flipped in the summary's segment digest"}),
    );

    common::add_vectors(&dir, index, new);
}
