//! Generates the committed fixtures in `tests/fixtures/` (run once, by hand):
//!
//! ```text
//! cargo test -p cbfs-recover --test generate_fixtures -- --ignored
//! ```
//!
//! age draws file keys and nonces from the operating system, so a new run
//! gives new bytes: the committed files are the reference that
//! `tests/damage.rs` checks. Regenerate only when the format changes.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use cbfs_format::{EntryKind, ManifestBuilder, SegmentMode, SnapshotId, Summary, layout};
use serde_json::json;
use support::*;

const ADMIN_SEED: [u8; 32] = *b"TEST ONLY: cbfs-recover fixture!";
const WRITER_SEED: [u8; 32] = *b"TEST ONLY: fixture writer key !!";
const USER_SEED: [u8; 32] = *b"TEST ONLY: fixture user alice !!";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

/// Records a damaged copy of one or more objects: `variants/<name>/<key>`.
struct Variants {
    root: PathBuf,
    list: Vec<serde_json::Value>,
}

impl Variants {
    fn add(&mut self, name: &str, note: &str, replace: &[(&str, Vec<u8>)], delete: &[&str]) {
        for (key, bytes) in replace {
            write(&self.root.join(name).join(key), bytes);
        }
        self.list.push(json!({
            "name": name,
            "note": note,
            "replace": replace.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            "delete": delete,
        }));
    }
}

#[test]
#[ignore = "writes tests/fixtures; run by hand when the format changes"]
fn generate() {
    let dir = fixtures();
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let keys = Keys::new(&ADMIN_SEED, &WRITER_SEED, true);

    // Keys (test only): the root secret, an exported scope secret, a user's
    // own key (which opens nothing: users restore through delegation nodes)
    // and a stranger's.
    write(&dir.join("keys/admin.key"), &ADMIN_SEED);
    let alice_scope = keys.admin.scope(&label("alice"));
    write(
        &dir.join("keys/alice-scope.key"),
        alice_scope.seed().expose_secret_bytes(),
    );
    write(&dir.join("keys/alice-user.key"), &USER_SEED);
    write(
        &dir.join("keys/stranger.key"),
        b"TEST ONLY: belongs to nobody  !!",
    );
    write(
        &dir.join("keyset.json"),
        &keys.keyset.to_signed_bytes(&keys.admin).unwrap(),
    );
    // The intact store: two snapshots over three segments.
    let store = dir.join("store");
    let mut w = StoreWriter::new(&store, &keys);
    let mut docs = entry(b"docs", EntryKind::Dir, "default").meta;
    docs.mode = 0o750;
    let a = w.segment(
        SegmentMode::Encrypted,
        &[
            entry(b"alice", EntryKind::Dir, "alice"),
            file("alice/a1.txt", b"alice one\n".to_vec(), "alice"),
            file("alice/a2.bin", bytes(2, 66_000), "alice"),
            Item {
                meta: docs,
                content: Vec::new(),
                scope: "default".into(),
            },
            file("docs/d1.txt", b"docs one\n".to_vec(), "default"),
            file("swap/one", bytes(11, 3000), "default"),
        ],
    );
    let b = w.segment(
        SegmentMode::Encrypted,
        &[
            file("docs/d2.txt", b"docs two\n".to_vec(), "default"),
            file("alice/a3.txt", b"alice three\n".to_vec(), "alice"),
            entry(b"swap", EntryKind::Dir, "default"),
            file("swap/two", bytes(12, 3000), "default"),
        ],
    );
    let (snap1_key, snap1) = w.snapshot();
    let c = w.segment(
        SegmentMode::Encrypted,
        &[
            file("docs/d3.txt", b"docs three\n".to_vec(), "default"),
            entry(
                b"docs/link",
                EntryKind::Symlink {
                    target: b"d1.txt".to_vec(),
                },
                "default",
            ),
            entry(
                b"alice/hard",
                EntryKind::Hardlink {
                    target: b"alice/a1.txt".to_vec(),
                },
                "alice",
            ),
            entry(b"bob", EntryKind::Dir, "bob"),
            file("bob/b1.txt", b"bob one\n".to_vec(), "bob"),
            file("docs/tail.bin", bytes(3, 20_000), "default"),
        ],
    );
    let (snap2_key, snap2) = w.snapshot();
    assert!(
        snap2.is_delta(),
        "snapshot 2 is a delta manifest, as the agent writes them"
    );

    // A store whose members ask for paths outside the target.
    let evil_store = dir.join("evil-store");
    let mut ew = StoreWriter::new(&evil_store, &keys);
    ew.segment(
        SegmentMode::Encrypted,
        &[
            file("good/ok.txt", b"fine\n".to_vec(), "default"),
            file("../evil", b"escaped\n".to_vec(), "default"),
            file("/abs", b"absolute\n".to_vec(), "default"),
            file("good/../../up", b"climbed\n".to_vec(), "default"),
            entry(
                b"good/etc",
                EntryKind::Symlink {
                    target: b"../../etc".to_vec(),
                },
                "default",
            ),
            entry(
                b"good/root",
                EntryKind::Symlink {
                    target: b"/etc".to_vec(),
                },
                "default",
            ),
            entry(
                b"good/fine-link",
                EntryKind::Symlink {
                    target: b"ok.txt".to_vec(),
                },
                "default",
            ),
            entry(
                b"good/hard-out",
                EntryKind::Hardlink {
                    target: b"../outside".to_vec(),
                },
                "default",
            ),
            entry(
                b"good/hard-missing",
                EntryKind::Hardlink {
                    target: b"good/nothing".to_vec(),
                },
                "default",
            ),
            entry(b"good/fine-link/x", EntryKind::File, "default"),
        ],
    );
    ew.snapshot();

    // A plain (unencrypted) store.
    let plain_store = dir.join("plain-store");
    let mut pw = StoreWriter::new(&plain_store, &keys);
    let p = pw.segment(
        SegmentMode::Plain,
        &[
            entry(b"pub", EntryKind::Dir, "default"),
            file("pub/one.txt", b"plain one\n".to_vec(), "default"),
            file("pub/two.bin", bytes(4, 5000), "default"),
        ],
    );
    pw.snapshot();

    // Damaged copies of single objects.
    let mut v = Variants {
        root: dir.join("variants"),
        list: Vec::new(),
    };
    let read = |root: &Path, key: &str| fs::read(root.join(key)).unwrap();
    let seg_a = layout::segment(&a.id);
    let seg_b = layout::segment(&b.id);
    let seg_c = layout::segment(&c.id);
    let sum_a = Summary::from_bytes(&read(&store, &layout::summary(&a.id))).unwrap();
    let sum_b_key = layout::summary(&b.id);
    let sum_b = Summary::from_bytes(&read(&store, &sum_b_key)).unwrap();
    let sum_c = Summary::from_bytes(&read(&store, &layout::summary(&c.id))).unwrap();
    let entry_of = |s: &Summary, m| s.entry(&m).unwrap().clone();

    let a2 = entry_of(&sum_a, a.member("alice/a2.bin"));
    let mut bytes_a = read(&store, &seg_a);
    bytes_a[(a2.data_offset + a2.data_len / 2) as usize] ^= 0x01;
    v.add(
        "segment-bitflip",
        "one bit of alice/a2.bin's ciphertext in segment A",
        &[(&seg_a, bytes_a)],
        &[],
    );

    let lb_a_alice = layout::lockbox(&a.id, &a.groups["alice"]);
    let mut lb = read(&store, &lb_a_alice);
    let n = lb.len();
    lb[n - 20] ^= 0x01;
    v.add(
        "lockbox-bitflip",
        "one bit of the sealed key in segment A's alice lockbox",
        &[(&lb_a_alice, lb)],
        &[],
    );

    let lb_b_alice = layout::lockbox(&b.id, &b.groups["alice"]);
    v.add(
        "lockbox-swapped",
        "segment A's alice lockbox replaced by segment B's (a valid lockbox of another group)",
        &[(&lb_a_alice, read(&store, &lb_b_alice))],
        &[],
    );

    let mut sb = read(&store, &sum_b_key);
    let n = sb.len();
    sb[n - 5] ^= 0x01; // inside the last entry's SHA-256
    v.add(
        "summary-bitflip",
        "one bit of the last entry's SHA-256 in segment B's summary",
        &[(&sum_b_key, sb)],
        &[],
    );
    let mut sb = read(&store, &sum_b_key);
    sb[30] ^= 0x01; // inside segment_len
    v.add(
        "summary-garbled",
        "one bit of segment B's summary's segment length",
        &[(&sum_b_key, sb)],
        &[],
    );

    let tail = entry_of(&sum_c, c.member("docs/tail.bin"));
    let bytes_c = read(&store, &seg_c);
    v.add(
        "segment-truncated",
        "segment C cut in the middle of docs/tail.bin",
        &[(
            &seg_c,
            bytes_c[..(tail.data_offset + tail.data_len / 2) as usize].to_vec(),
        )],
        &[],
    );

    v.add("segment-missing", "segment B deleted", &[], &[&seg_b]);

    let one = entry_of(&sum_a, a.member("swap/one"));
    let two = entry_of(&sum_b, b.member("swap/two"));
    // Both are the last members of their segments, so they can trade places
    // (age makes payloads of slightly different lengths).
    assert_eq!(sum_a.entries().last().unwrap().member, one.member);
    assert_eq!(sum_b.entries().last().unwrap().member, two.member);
    let (old_a, old_b) = (read(&store, &seg_a), read(&store, &seg_b));
    let trailer = [0u8; 1024];
    let new_a = [
        &old_a[..one.header_offset as usize],
        &old_b[two.header_offset as usize..two.end_offset() as usize],
        &trailer[..],
    ]
    .concat();
    let new_b = [
        &old_b[..two.header_offset as usize],
        &old_a[one.header_offset as usize..one.end_offset() as usize],
        &trailer[..],
    ]
    .concat();
    v.add(
        "members-swapped",
        "swap/one (segment A) and swap/two (segment B) traded places, headers and data",
        &[(&seg_a, new_a), (&seg_b, new_b)],
        &[],
    );

    v.add(
        "manifest-rollback",
        "snapshot 1's manifest served under snapshot 2's object name",
        &[(&snap2_key, snap1.to_bytes())],
        &[],
    );

    let mut forged =
        ManifestBuilder::new(snap2.snapshot_id(), 2, Some([7; 32]), snap2.created_unix());
    forged.extend(snap2.entries().iter().copied());
    let forged = forged.sign(&keys.writer).unwrap();
    v.add(
        "chain-broken",
        "snapshot 2 re-signed by the writer, naming a previous manifest that is not snapshot 1",
        &[(&snap2_key, forged.to_bytes())],
        &[],
    );

    v.add(
        "delta-base-missing",
        "snapshot 1 deleted: snapshot 2, a delta, cannot be resolved",
        &[],
        &[&snap1_key],
    );

    let other = Keys::random(true);
    let mut alien = ManifestBuilder::new(
        SnapshotId::random(),
        3,
        Some(snap2.hash()),
        snap2.created_unix() + 1,
    );
    alien.extend(snap2.entries().iter().copied());
    let alien = alien.sign(&other.writer).unwrap();
    let alien_key = layout::manifest(3, &alien.snapshot_id());
    v.add(
        "untrusted-writer",
        "a newest snapshot signed by a writer the keyset does not register",
        &[(&alien_key, alien.to_bytes())],
        &[],
    );

    let plain_seg = layout::segment(&p.id);
    let plain_sum = Summary::from_bytes(&read(&plain_store, &layout::summary(&p.id))).unwrap();
    let one_txt = entry_of(&plain_sum, p.member("pub/one.txt"));
    let mut pb = read(&plain_store, &plain_seg);
    pb[one_txt.data_offset as usize + 2] ^= 0x20;
    v.add(
        "plain-bitflip",
        "one content byte of pub/one.txt in the plain store's segment",
        &[(&plain_seg, pb)],
        &[],
    );

    let member_ids = |rec: &SegmentRecord, name: &str| {
        rec.members
            .iter()
            .map(|(p, m)| {
                (
                    String::from_utf8_lossy(p).into_owned(),
                    json!({ "segment": name, "member": m.to_string() }),
                )
            })
            .collect::<BTreeMap<_, _>>()
    };
    let mut members = member_ids(&a, "A");
    members.extend(member_ids(&b, "B"));
    members.extend(member_ids(&c, "C"));
    let index = json!({
        "format": "cbfs-recover fixtures v1",
        "note": "TEST ONLY keys. Generated by tests/generate_fixtures.rs; checked by tests/damage.rs.",
        "segments": { "A": a.id.to_string(), "B": b.id.to_string(), "C": c.id.to_string() },
        "groups": {
            "A": a.groups.iter().map(|(s, g)| (s.clone(), g.to_string())).collect::<BTreeMap<_, _>>(),
            "B": b.groups.iter().map(|(s, g)| (s.clone(), g.to_string())).collect::<BTreeMap<_, _>>(),
            "C": c.groups.iter().map(|(s, g)| (s.clone(), g.to_string())).collect::<BTreeMap<_, _>>(),
        },
        "members": members,
        "snapshots": [snap1_key, snap2_key],
        "plain_segment": p.id.to_string(),
        "variants": v.list,
    });
    write(
        &dir.join("index.json"),
        serde_json::to_string_pretty(&index).unwrap().as_bytes(),
    );
}
