//! Generates the committed test vectors in `format/vectors/`.
//!
//! Run once: `cargo run -p cbfs-format --example gen_vectors -- format/vectors`.
//! Keys come from fixed seeds; age draws file keys and nonces from the OS, so member
//! payloads differ between runs: the committed files are the reference, and
//! `tests/vectors.rs` only checks them. Do not regenerate without reason.

use std::collections::BTreeMap;
use std::fs;
use std::io::Cursor;
use std::path::PathBuf;

use cbfs_format::{
    EntryKind, GroupId, GroupKey, Lockbox, ManifestBuilder, ManifestEntry, MemberId, Metadata,
    SegmentId, SegmentMode, SegmentWriter, SnapshotId, Timestamp, write_member,
};
use rand::{RngCore, SeedableRng};
use secrecy::SecretBox;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use umbral_pre::{
    DefaultSerialize, SecretKeyFactory, Signer, generate_kfrags_with_rng, reencrypt_with_rng,
};

const CHUNK: usize = 64 * 1024 + 16;
const FACTORY_SEED: [u8; 32] = [0x42; 32];

struct Gen {
    dir: PathBuf,
    vectors: Vec<Value>,
}

impl Gen {
    fn file(&self, name: &str, bytes: &[u8]) -> String {
        fs::write(self.dir.join(name), bytes).unwrap();
        name.to_string()
    }
    fn push(&mut self, v: Value) {
        self.vectors.push(v);
    }
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rng(seed).fill_bytes(&mut out);
    out
}

fn fixed_key(seed: u8) -> GroupKey {
    GroupKey::new(
        GroupId::from_bytes([seed; 16]),
        SecretBox::new(Box::new([seed ^ 0xa5; 32])),
    )
}

fn payload_start(file: &[u8]) -> usize {
    let mac = file.windows(5).position(|w| w == b"\n--- ").unwrap() + 5;
    mac + file[mac..].iter().position(|&b| b == b'\n').unwrap() + 1 + 16
}

fn header_lines(file: &[u8]) -> Vec<Vec<u8>> {
    let end = payload_start(file) - 16;
    file[..end]
        .split(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn join_lines(lines: &[Vec<u8>]) -> Vec<u8> {
    lines.join(&b'\n')
}

fn meta_file(path: &[u8], size: usize) -> Metadata {
    let mut m = Metadata::new(path, EntryKind::File);
    m.size = size as u64;
    m.mode = 0o640;
    m.uid = 1000;
    m.gid = 100;
    m.uname = "alice".into();
    m.gname = "users".into();
    m.mtime = Timestamp::new(1_700_000_000, 500_000_000);
    m
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "format/vectors".into()),
    );
    fs::create_dir_all(&dir).unwrap();
    let mut g = Gen {
        dir: dir.clone(),
        vectors: Vec::new(),
    };

    let factory = SecretKeyFactory::from_secure_randomness(&FACTORY_SEED).unwrap();
    let scope_sk = factory.make_key(b"vectors/scope");
    let user_sk = factory.make_key(b"vectors/user");
    let writer = Signer::new(factory.make_key(b"vectors/writer"));
    let other_writer = Signer::new(factory.make_key(b"vectors/other-writer"));
    let delegation_signer = Signer::new(factory.make_key(b"vectors/delegation-signer"));

    let g1 = fixed_key(1);
    let g2 = fixed_key(2);
    let m1 = MemberId::from_bytes([0x11; 16]);
    let m2 = MemberId::from_bytes([0x22; 16]);
    let mut groups = BTreeMap::new();
    groups.insert("g1", (g1.id().to_string(), hex::encode(g1.expose_secret())));
    groups.insert("g2", (g2.id().to_string(), hex::encode(g2.expose_secret())));
    groups.insert("g1-wrong", (g1.id().to_string(), hex::encode([0x99u8; 32])));

    members(&mut g, &g1, m1, m2);
    lockboxes(&mut g, &scope_sk, &user_sk, &delegation_signer);
    segments(&mut g, &g1, &g2);
    manifests(&mut g, &writer, &other_writer);

    let index = json!({
        "format": "cbfs test vectors v1",
        "about": "Each vector names an object file, the keys it needs and the expected outcome: 'ok' (with hashes to compare) or an error code from cbfs_format::Error::code().",
        "keys": {
            "umbral_factory_seed": hex::encode(FACTORY_SEED),
            "scope_label": "vectors/scope",
            "user_label": "vectors/user",
            "writer_label": "vectors/writer",
            "other_writer_label": "vectors/other-writer",
            "delegation_signer_label": "vectors/delegation-signer",
            "groups": groups.iter().map(|(k, (id, key))| (k.to_string(), json!({"id": id, "key": key}))).collect::<serde_json::Map<_, _>>(),
        },
        "vectors": g.vectors,
    });
    fs::write(
        dir.join("index.json"),
        serde_json::to_string_pretty(&index).unwrap() + "\n",
    )
    .unwrap();
    println!(
        "wrote {} vectors to {}",
        index["vectors"].as_array().unwrap().len(),
        dir.display()
    );
}

fn members(g: &mut Gen, g1: &GroupKey, m1: MemberId, m2: MemberId) {
    let ok = |g: &mut Gen, name: &str, meta: Metadata, content: &[u8]| -> Vec<u8> {
        let payload = write_member(Vec::new(), m1, g1, &meta, content, 3).unwrap();
        let file = g.file(&format!("{name}.age"), &payload);
        g.push(json!({
            "name": name, "kind": "member", "file": file, "member_id": m1.to_string(),
            "keys": ["g1"], "expect": "ok",
            "path_hex": hex::encode(&meta.path), "content_sha256": sha(content),
        }));
        payload
    };
    ok(g, "member-ok-empty", meta_file(b"empty", 0), b"");
    let mut small = meta_file(b"caf\xe9/notes.txt", 12);
    small
        .xattrs
        .insert(b"user.comment".to_vec(), b"hi\0there".to_vec());
    let small_payload = ok(g, "member-ok-small", small.clone(), b"hello world\n");
    let big = bytes(7, 140_000);
    let big_payload = ok(
        g,
        "member-ok-multichunk",
        meta_file(b"big.bin", big.len()),
        &big,
    );
    ok(
        g,
        "member-ok-symlink",
        Metadata::new(
            "link",
            EntryKind::Symlink {
                target: b"../target".to_vec(),
            },
        ),
        b"",
    );
    let mut d = Metadata::new("dir", EntryKind::Dir);
    d.xattrs.insert(b"user.a".to_vec(), b"1".to_vec());
    ok(g, "member-ok-dir", d, b"");
    ok(
        g,
        "member-ok-hardlink",
        Metadata::new(
            "hard",
            EntryKind::Hardlink {
                target: b"big.bin".to_vec(),
            },
        ),
        b"",
    );

    let bad = |g: &mut Gen,
               name: &str,
               bytes: Vec<u8>,
               member: MemberId,
               keys: &[&str],
               expect: &str,
               note: &str| {
        let file = g.file(&format!("{name}.age"), &bytes);
        g.push(json!({
            "name": name, "kind": "member", "file": file, "member_id": member.to_string(),
            "keys": keys, "expect": expect, "note": note,
        }));
    };
    let start = payload_start(&big_payload);
    let lines = header_lines(&small_payload);
    let stanza = lines
        .iter()
        .position(|l| l.starts_with(b"-> cbfs1 "))
        .unwrap();

    bad(
        g,
        "member-not-age",
        bytes(9, 300),
        m1,
        &["g1"],
        "member_header",
        "random bytes",
    );
    let mut l = lines.clone();
    let words: Vec<&[u8]> = l[stanza].split(|&b| b == b' ').collect();
    l[stanza] = words[..words.len() - 1].join(&b' ');
    let mut v = join_lines(&l);
    v.extend_from_slice(&small_payload[payload_start(&small_payload) - 16..]);
    bad(
        g,
        "member-bad-stanza-args",
        v,
        m1,
        &["g1"],
        "member_header",
        "cbfs1 stanza with its nonce argument removed",
    );
    let mut l = lines.clone();
    let dup = [l[stanza].clone(), l[stanza + 1].clone()];
    l.splice(stanza..stanza, dup);
    let mut v = join_lines(&l);
    v.extend_from_slice(&small_payload[payload_start(&small_payload) - 16..]);
    bad(
        g,
        "member-two-cbfs1-stanzas",
        v,
        m1,
        &["g1"],
        "member_header",
        "the cbfs1 stanza appears twice",
    );
    let mut v = small_payload.clone();
    v[20] = b'2';
    bad(
        g,
        "member-age-v2",
        v,
        m1,
        &["g1"],
        "unknown_version",
        "intro line says age-encryption.org/v2",
    );
    let mut v = small_payload.clone();
    let mac = v.windows(5).position(|w| w == b"\n--- ").unwrap() + 5;
    v[mac] = if v[mac] == b'A' { b'B' } else { b'A' };
    bad(
        g,
        "member-header-mac-flip",
        v,
        m1,
        &["g1"],
        "header_mac",
        "first MAC character changed",
    );
    let mut v = small_payload.clone();
    let body_at = lines[..=stanza].iter().map(|l| l.len() + 1).sum::<usize>();
    v[body_at] = if v[body_at] == b'A' { b'B' } else { b'A' };
    bad(
        g,
        "member-stanza-body-flip",
        v,
        m1,
        &["g1"],
        "wrong_key",
        "first character of the wrapped file key changed",
    );
    let other = write_member(Vec::new(), m2, g1, &small, &b"hello world\n"[..], 3).unwrap();
    bad(
        g,
        "member-moved-to-other-id",
        other.clone(),
        m1,
        &["g1"],
        "wrong_key",
        "a valid payload of member 2222... presented as member 1111...",
    );
    let mut l = lines.clone();
    let ol = header_lines(&other);
    let os = ol.iter().position(|l| l.starts_with(b"-> cbfs1 ")).unwrap();
    l[stanza] = ol[os].clone();
    l[stanza + 1] = ol[os + 1].clone();
    let mut v = join_lines(&l);
    v.extend_from_slice(&small_payload[payload_start(&small_payload) - 16..]);
    bad(
        g,
        "member-stanza-from-other-member",
        v,
        m1,
        &["g1"],
        "wrong_key",
        "cbfs1 stanza taken from member 2222... (same group)",
    );
    bad(
        g,
        "member-wrong-group-key",
        small_payload.clone(),
        m1,
        &["g1-wrong"],
        "wrong_key",
        "right group id, wrong key bytes",
    );
    bad(
        g,
        "member-unknown-group",
        small_payload.clone(),
        m1,
        &["g2"],
        "wrong_key",
        "keyring lacks the member's group",
    );

    let mut v = big_payload.clone();
    v[start + CHUNK + 100] ^= 0x01;
    bad(
        g,
        "member-payload-flip",
        v,
        m1,
        &["g1"],
        "payload_auth",
        "one bit flipped in the second chunk",
    );
    let n = (big_payload.len() - start).div_ceil(CHUNK);
    bad(
        g,
        "member-truncated-last-chunk",
        big_payload[..start + (n - 1) * CHUNK].to_vec(),
        m1,
        &["g1"],
        "payload_truncated",
        "last chunk removed at a chunk boundary",
    );
    bad(
        g,
        "member-truncated-mid-chunk",
        big_payload[..big_payload.len() - 10].to_vec(),
        m1,
        &["g1"],
        "payload_auth",
        "cut inside the last chunk: it no longer authenticates",
    );
    bad(
        g,
        "member-header-only",
        big_payload[..start].to_vec(),
        m1,
        &["g1"],
        "payload_truncated",
        "header and nonce, no chunk",
    );
    let mut v = big_payload[..start].to_vec();
    v.extend_from_slice(&big_payload[start + CHUNK..start + 2 * CHUNK]);
    v.extend_from_slice(&big_payload[start..start + CHUNK]);
    v.extend_from_slice(&big_payload[start + 2 * CHUNK..]);
    bad(
        g,
        "member-reordered-chunks",
        v,
        m1,
        &["g1"],
        "payload_auth",
        "chunks 0 and 1 swapped",
    );
    let twin = write_member(
        Vec::new(),
        m1,
        g1,
        &meta_file(b"big.bin", big.len()),
        &big[..],
        3,
    )
    .unwrap();
    let ts = payload_start(&twin);
    let mut v = big_payload[..start + CHUNK].to_vec();
    v.extend_from_slice(&twin[ts + CHUNK..ts + 2 * CHUNK]);
    v.extend_from_slice(&big_payload[start + 2 * CHUNK..]);
    bad(
        g,
        "member-spliced-chunk",
        v,
        m1,
        &["g1"],
        "payload_auth",
        "chunk 1 taken from another encryption of the same file",
    );
    let mut v = big_payload.clone();
    v.extend_from_slice(b"extra");
    bad(
        g,
        "member-trailing-data",
        v,
        m1,
        &["g1"],
        "payload_auth",
        "bytes after the last chunk",
    );
    let mut v = big_payload.clone();
    v[start - 1] ^= 0x80;
    bad(
        g,
        "member-nonce-flip",
        v,
        m1,
        &["g1"],
        "payload_auth",
        "payload nonce changed",
    );
}

fn lockboxes(
    g: &mut Gen,
    scope_sk: &umbral_pre::SecretKey,
    user_sk: &umbral_pre::SecretKey,
    dsigner: &Signer,
) {
    let segment = SegmentId::from_bytes([0x5e; 16]);
    let (lb, key) = Lockbox::seal_with_rng(
        &mut rng(100),
        "vectors/scope",
        &scope_sk.public_key(),
        segment,
    )
    .unwrap();
    let good = lb.to_bytes();
    let file = g.file("lockbox-ok.lockbox", &good);
    let ok = json!({
        "kind": "lockbox", "file": file, "open_with": "scope", "expect": "ok",
        "group_id": key.id().to_string(), "group_key_sha256": sha(key.expose_secret()),
        "segment_id": segment.to_string(), "scope": "vectors/scope",
    });
    let mut v = ok.clone();
    v["name"] = json!("lockbox-ok");
    g.push(v);

    let kfrags = generate_kfrags_with_rng(
        &mut rng(101),
        scope_sk,
        &user_sk.public_key(),
        dsigner,
        2,
        3,
        true,
        true,
    );
    let mut cfrag_files = Vec::new();
    for (i, k) in kfrags.iter().enumerate() {
        let cfrag =
            reencrypt_with_rng(&mut rng(102 + i as u64), lb.capsule(), k.clone()).unverify();
        cfrag_files.push(g.file(&format!("lockbox-ok.cfrag{i}"), &cfrag.to_bytes().unwrap()));
    }
    let mut v = ok.clone();
    v["name"] = json!("lockbox-ok-delegated");
    v["open_with"] = json!("user");
    v["cfrags"] = json!(cfrag_files[1..].to_vec());
    g.push(v);
    let mut v = ok.clone();
    v["name"] = json!("lockbox-delegated-too-few-cfrags");
    v["open_with"] = json!("user");
    v["cfrags"] = json!(cfrag_files[..1].to_vec());
    v["expect"] = json!("lockbox_open");
    g.push(v);
    let mut v = ok.clone();
    v["name"] = json!("lockbox-wrong-scope-key");
    v["open_with"] = json!("user-as-scope");
    v["expect"] = json!("lockbox_open");
    g.push(v);

    let bad = |g: &mut Gen, name: &str, bytes: Vec<u8>, expect: &str, note: &str| {
        let file = g.file(&format!("{name}.lockbox"), &bytes);
        g.push(json!({"name": name, "kind": "lockbox", "file": file, "open_with": "scope", "expect": expect, "note": note}));
    };
    let label_end = 8 + 2 + 1 + "vectors/scope".len();
    let mut v = good.clone();
    v[0] = b'X';
    bad(
        g,
        "lockbox-bad-brand",
        v,
        "bad_brand",
        "first brand byte changed",
    );
    let mut v = good.clone();
    v[9] = 2;
    bad(
        g,
        "lockbox-unknown-version",
        v,
        "unknown_version",
        "version 2",
    );
    let mut v = good.clone();
    v[label_end] ^= 1;
    bad(
        g,
        "lockbox-flip-group-id",
        v,
        "lockbox_open",
        "group id changed: the sealed binding no longer matches",
    );
    let mut v = good.clone();
    v[label_end + 16] ^= 1;
    bad(
        g,
        "lockbox-flip-segment-id",
        v,
        "lockbox_open",
        "segment id changed",
    );
    let mut v = good.clone();
    v[label_end - 1] ^= 0x20;
    bad(
        g,
        "lockbox-flip-scope-label",
        v,
        "lockbox_open",
        "scope label letter case changed",
    );
    let mut v = good.clone();
    let last = v.len() - 20;
    v[last] ^= 1;
    bad(
        g,
        "lockbox-flip-ciphertext",
        v,
        "lockbox_open",
        "Umbral DEM ciphertext changed",
    );
    let mut v = good.clone();
    v[label_end + 32 + 2 + 10] ^= 1;
    bad(
        g,
        "lockbox-flip-capsule",
        v,
        "malformed",
        "capsule point changed: it fails its self-check",
    );
    let mut v = good.clone();
    v.push(0);
    bad(
        g,
        "lockbox-trailing-byte",
        v,
        "malformed",
        "one byte appended",
    );
}

fn write_segment(
    mode: SegmentMode,
    id: SegmentId,
    entries: &[(MemberId, &GroupKey, Metadata, Vec<u8>)],
) -> (Vec<u8>, cbfs_format::Summary) {
    let mut w = SegmentWriter::new(Cursor::new(Vec::new()), id, mode).unwrap();
    for (member, key, meta, content) in entries {
        match mode {
            SegmentMode::Encrypted => w
                .append_encrypted(*member, key, meta, &content[..])
                .unwrap(),
            SegmentMode::Plain => w.append_plain(*member, meta, &content[..]).unwrap(),
        };
    }
    let (spool, summary) = w.finish().unwrap();
    (spool.into_inner(), summary)
}

fn segments(g: &mut Gen, g1: &GroupKey, g2: &GroupKey) {
    let big = bytes(8, 70_000);
    let entries = vec![
        (
            MemberId::from_bytes([0x31; 16]),
            g1,
            Metadata::new("d", EntryKind::Dir),
            Vec::new(),
        ),
        (
            MemberId::from_bytes([0x32; 16]),
            g1,
            meta_file(b"d/a.txt", 6),
            b"alpha\n".to_vec(),
        ),
        (
            MemberId::from_bytes([0x33; 16]),
            g2,
            meta_file(b"d/big", big.len()),
            big.clone(),
        ),
    ];
    let expected: Vec<Value> = entries
        .iter()
        .map(|(_, _, m, c)| json!({"path_hex": hex::encode(&m.path), "content_sha256": sha(c)}))
        .collect();
    for (mode, tag) in [
        (SegmentMode::Encrypted, "encrypted"),
        (SegmentMode::Plain, "plain"),
    ] {
        let id = SegmentId::from_bytes(if tag == "plain" {
            [0x6e; 16]
        } else {
            [0x5e; 16]
        });
        let (seg, summary) = write_segment(mode, id, &entries);
        let name = format!("segment-{tag}-ok");
        let sf = g.file(&format!("{name}.tar"), &seg);
        let su = g.file(&format!("{name}.summary"), &summary.to_bytes());
        g.push(json!({"name": name, "kind": "segment", "file": sf, "summary": su, "keys": ["g1", "g2"], "expect": "ok", "members": expected}));
        if mode == SegmentMode::Plain {
            continue;
        }
        let s = summary.to_bytes();
        let bad = |g: &mut Gen,
                   name: &str,
                   seg_file: &str,
                   summary: Vec<u8>,
                   expect: &str,
                   note: &str| {
            let su = g.file(&format!("{name}.summary"), &summary);
            g.push(json!({"name": name, "kind": "segment", "file": seg_file, "summary": su, "keys": ["g1", "g2"], "expect": expect, "note": note}));
        };
        // Entries start at byte 71; each is 88 bytes: id, 3 offsets, group, sha256.
        let mut v = s.clone();
        v[71 + 88 + 56 + 3] ^= 1;
        bad(
            g,
            "summary-flip-member-sha",
            &sf,
            v,
            "summary_mismatch",
            "SHA-256 of member 2 changed",
        );
        let mut v = s.clone();
        v[71 + 88 + 40] ^= 1;
        bad(
            g,
            "summary-flip-group",
            &sf,
            v,
            "summary_mismatch",
            "group of member 2 changed",
        );
        let mut v = s.clone();
        v[3] ^= 1;
        bad(g, "summary-bad-brand", &sf, v, "bad_brand", "brand changed");
        let mut v = s.clone();
        v[9] = 9;
        bad(
            g,
            "summary-unknown-version",
            &sf,
            v,
            "unknown_version",
            "version 9",
        );

        let seg_bad = |g: &mut Gen, name: &str, bytes: Vec<u8>, expect: &str, note: &str| {
            let f = g.file(&format!("{name}.tar"), &bytes);
            g.push(json!({"name": name, "kind": "segment", "file": f, "summary": su, "keys": ["g1", "g2"], "expect": expect, "note": note}));
        };
        let e = &summary.entries()[2];
        let mut v = seg.clone();
        v[(e.data_offset + e.data_len / 2) as usize] ^= 4;
        seg_bad(
            g,
            "segment-flip-payload",
            v,
            "summary_mismatch",
            "one bit of member 3's ciphertext changed",
        );
        seg_bad(
            g,
            "segment-truncated",
            seg[..seg.len() - 1024].to_vec(),
            "tar",
            "end-of-archive marker removed",
        );
        let mut v = seg.clone();
        let text = String::from_utf8_lossy(&v[512..1024]).into_owned();
        let at = 512 + text.find("cbfs-segment/1").unwrap() + 13;
        v[at] = b'7';
        seg_bad(
            g,
            "segment-unknown-version",
            v,
            "unknown_version",
            "global header says cbfs-segment/7",
        );
    }
}

fn manifest_body_resigned(body: &[u8], signer: &Signer) -> Vec<u8> {
    let sig = signer.sign(&[b"cbfs manifest signature v1\0".as_slice(), body].concat());
    [body, &sig.to_be_bytes()].concat()
}

fn manifests(g: &mut Gen, writer: &Signer, other: &Signer) {
    let mut b = ManifestBuilder::new(
        SnapshotId::from_bytes([0x77; 16]),
        3,
        Some([0xab; 32]),
        1_700_000_000,
    );
    for i in 0..5u8 {
        b.push(ManifestEntry::single(
            SegmentId::from_bytes([0x50 + i % 2; 16]),
            MemberId::from_bytes([0x10 + i; 16]),
            Sha256::digest([i]).into(),
        ));
    }
    let m = b.sign(writer).unwrap();
    let good = m.to_bytes();
    let push = |g: &mut Gen, name: &str, bytes: &[u8], trusted: &str, expect: &str, note: &str| {
        let f = g.file(&format!("{name}.manifest"), bytes);
        let mut v = json!({"name": name, "kind": "manifest", "file": f, "trusted": trusted, "expect": expect, "note": note});
        if expect == "ok" {
            let parsed = cbfs_format::Manifest::from_bytes_any_signer(bytes).unwrap();
            v["merkle_root"] = json!(hex::encode(parsed.merkle_root()));
            v["entries"] = json!(parsed.entries().len());
            v["sequence"] = json!(parsed.sequence());
        }
        g.push(v);
    };
    push(
        g,
        "manifest-ok",
        &good,
        "writer",
        "ok",
        "five entries over two segments",
    );
    let empty = ManifestBuilder::new(SnapshotId::from_bytes([0x78; 16]), 1, None, 0)
        .sign(writer)
        .unwrap();
    push(
        g,
        "manifest-empty-ok",
        &empty.to_bytes(),
        "writer",
        "ok",
        "no entries",
    );
    push(
        g,
        "manifest-untrusted-signer",
        &other_signed(other),
        "writer",
        "untrusted_signer",
        "validly signed by another key",
    );
    let mut v = good.clone();
    let n = v.len();
    v[n - 10] ^= 1;
    push(
        g,
        "manifest-bad-signature",
        &v,
        "writer",
        "bad_signature",
        "signature byte changed",
    );
    let mut v = good.clone();
    v[34] ^= 1;
    push(
        g,
        "manifest-flip-sequence",
        &v,
        "writer",
        "bad_signature",
        "sequence number changed",
    );
    let entries_at = 8 + 2 + 16 + 8 + 32 + 8 + 33 + 4;
    let mut v = good.clone();
    v[entries_at + 64 + 40] ^= 1;
    push(
        g,
        "manifest-flip-entry-sha",
        &v,
        "writer",
        "merkle_mismatch",
        "hash in entry 2 changed",
    );
    let body = &good[..good.len() - 64];
    let mut b2 = body.to_vec();
    let root_at = b2.len() - 32;
    b2[root_at] ^= 1;
    push(
        g,
        "manifest-bad-root-resigned",
        &manifest_body_resigned(&b2, writer),
        "writer",
        "merkle_mismatch",
        "wrong root, validly signed",
    );
    let mut b3 = body.to_vec();
    let (e0, e1) = (
        b3[entries_at..entries_at + 64].to_vec(),
        b3[entries_at + 64..entries_at + 128].to_vec(),
    );
    b3[entries_at..entries_at + 64].copy_from_slice(&e1);
    b3[entries_at + 64..entries_at + 128].copy_from_slice(&e0);
    push(
        g,
        "manifest-unsorted-resigned",
        &manifest_body_resigned(&b3, writer),
        "writer",
        "malformed",
        "entries 1 and 2 swapped, validly signed",
    );
    let mut v = good.clone();
    v[9] = 9;
    push(
        g,
        "manifest-unknown-version",
        &v,
        "writer",
        "unknown_version",
        "version 9",
    );
    push(
        g,
        "manifest-truncated",
        &good[..good.len() - 1],
        "writer",
        "malformed",
        "last byte removed",
    );
}

fn other_signed(other: &Signer) -> Vec<u8> {
    ManifestBuilder::new(SnapshotId::from_bytes([0x79; 16]), 1, None, 0)
        .sign(other)
        .unwrap()
        .to_bytes()
}
