//! Adds the vectors of the stub record (the extended attribute a released
//! file carries) to `format/vectors/`, leaving every other vector as it is.
//!
//! ```sh
//! cargo run -p cbfs-format --example gen_vectors_stub [-- format/vectors]
//! ```
//!
//! The record has no randomness: a rerun writes the same bytes.

mod common;

use std::fs;

use cbfs_format::{MemberId, SegmentId, SnapshotId, StubPhase, StubRecord, Timestamp};
use serde_json::{Value, json};

fn main() {
    let dir = common::vectors_dir();
    let index = common::read_index(&dir);
    let record = StubRecord {
        phase: StubPhase::Released,
        fs: "vectors".into(),
        snapshot: SnapshotId::from_bytes([0x51; 16]),
        sequence: 3,
        segment: SegmentId::from_bytes([0x52; 16]),
        member: MemberId::from_bytes([0x53; 16]),
        slot: 2,
        size: 1_048_576,
        sha256: [0x54; 32],
        mtime: Timestamp::new(1_700_000_000, 123_456_789),
        inode: 4242,
        path: b"home/alice/report.pdf".to_vec(),
    };
    let ok = record.to_bytes().unwrap();
    let facts = |r: &StubRecord| {
        json!({
            "phase": match r.phase {
                StubPhase::Releasing => "releasing",
                StubPhase::Released => "released",
                _ => "recalling",
            },
            "fs": r.fs, "snapshot": r.snapshot.to_string(), "sequence": r.sequence,
            "segment": r.segment.to_string(), "member": r.member.to_string(), "slot": r.slot,
            "size": r.size, "sha256": hex::encode(r.sha256),
            "mtime": [r.mtime.secs, r.mtime.nanos], "inode": r.inode,
            "path_hex": hex::encode(&r.path),
        })
    };
    let mut new = Vec::new();
    let mut add = |name: &str, bytes: &[u8], expect: Value, note: &str| {
        let file = format!("{name}.stub");
        fs::write(dir.join(&file), bytes).unwrap();
        let mut v = json!({"name": name, "kind": "stub", "file": file, "note": note});
        match expect {
            Value::String(code) => v["expect"] = json!(code),
            facts => {
                v["expect"] = json!("ok");
                v["record"] = facts;
            }
        }
        new.push(v);
    };
    add("stub-ok", &ok, facts(&record), "a released file's record");
    let releasing = StubRecord {
        phase: StubPhase::Releasing,
        ..record.clone()
    };
    add(
        "stub-releasing-ok",
        &releasing.to_bytes().unwrap(),
        facts(&releasing),
        "a record written before the content was dropped",
    );
    let recalling = StubRecord {
        phase: StubPhase::Recalling,
        ..record.clone()
    };
    add(
        "stub-recalling-ok",
        &recalling.to_bytes().unwrap(),
        facts(&recalling),
        "a record of a file whose content is being filled back",
    );
    let mut b = ok.clone();
    b.push(0);
    add(
        "stub-trailing-byte",
        &b,
        json!("malformed"),
        "one byte after the path",
    );
    add(
        "stub-truncated",
        &ok[..ok.len() - 1],
        json!("malformed"),
        "the last byte of the path cut off",
    );
    let mut b = ok.clone();
    b[9] = 2;
    add(
        "stub-unknown-version",
        &b,
        json!("unknown_version"),
        "version 2",
    );
    let mut b = ok.clone();
    b[0] = b'X';
    add("stub-bad-brand", &b, json!("bad_brand"), "brand XBFSSTUB");
    let mut b = ok.clone();
    b[10] = 0;
    add("stub-bad-phase", &b, json!("malformed"), "phase 0");
    // Brand 8, version 2, phase 1, fs name 1 + 7, then the snapshot id.
    let mut b = ok.clone();
    b[19..35].fill(0);
    add(
        "stub-zero-snapshot",
        &b,
        json!("malformed"),
        "the snapshot id all zero",
    );

    common::add_vectors(&dir, index, new);
}
