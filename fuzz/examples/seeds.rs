//! Builds the seed corpora of the fuzz targets, `fuzz/corpus/<target>/`:
//! the committed test vectors (`format/vectors/`) of each object, and
//! valid objects made here, signed and sealed with the fixed keys of
//! `cbfs_fuzz`, for the kinds that have no vectors (plain segments of every
//! entry kind, packs, metadata records, deltas, key documents, node and
//! gateway bodies).
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds   # writes fuzz/corpus/
//! ```
//!
//! Seeds are named `seed-*`; running again replaces them and leaves the
//! rest of a corpus (what fuzzing found) alone. Members and nonces are
//! random, so every run writes different bytes of the same shapes.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use cbfs_core::umbral_pre;
use cbfs_core::{Clock, DelegationTerms, Revocation, delegate};
use cbfs_format::fuzzing::{metadata_to_record, pack_table_to_bytes};
use cbfs_format::{
    EntryKind, GroupKey, GroupKeys, Lockbox, ManifestBuilder, ManifestEntry, MemberId, Metadata,
    SegmentId, SegmentMode, SegmentWriter, SnapshotId, Timestamp, write_member, write_pack,
};
use cbfs_fuzz::{NOW, base_entries, delta_base, parties, vectors};
use cbfs_wire::gateway::{SignedParts, authorization, content_sha256};
use cbfs_wire::{
    CFRAGS_FORMAT, CFRAGS_VERSION, Cfrags, ErrorBody, GrantStored, GrantUpload, NodeInfo,
    ReencryptBody, RevokeDone, encode_cfrag,
};

/// Vectors of more than this many bytes are left out: they slow every run
/// of a target down and reach nothing the smaller ones do not.
const MAX_VECTOR: u64 = 80 * 1024;

struct Corpus {
    root: PathBuf,
    written: BTreeMap<String, usize>,
}

impl Corpus {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.root.join(target);
        fs::create_dir_all(&dir).expect("a corpus folder");
        fs::write(dir.join(format!("seed-{name}")), bytes).expect("writing a seed");
        *self.written.entry(target.to_owned()).or_default() += 1;
    }

    /// Every committed vector whose name ends in `ext`, under `target`,
    /// each behind `prefix`.
    fn vectors(&mut self, target: &str, ext: &str, prefix: &[u8]) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../format/vectors");
        let mut names: Vec<_> = fs::read_dir(&dir)
            .expect("format/vectors")
            .map(|e| e.expect("an entry").path())
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(ext))
            .filter(|p| fs::metadata(p).expect("a vector").len() <= MAX_VECTOR)
            .collect();
        names.sort();
        for path in names {
            let mut bytes = prefix.to_vec();
            bytes.extend(fs::read(&path).expect("a vector"));
            let name = path
                .file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            self.put(target, &format!("vector-{name}"), &bytes);
        }
    }
}

fn meta(path: &str, kind: EntryKind, size: u64) -> Metadata {
    let mut m = Metadata::new(path, kind);
    m.size = size;
    m
}

/// Entries of every kind and every header a plain segment can need.
fn assorted() -> Vec<(Metadata, Vec<u8>)> {
    let mut out = Vec::new();
    let mut file = meta("docs/readme.txt", EntryKind::File, 12);
    file.uname = "alice".into();
    file.gname = "staff".into();
    file.uid = 1000;
    file.gid = 1000;
    file.mode = 0o640;
    file.mtime = Timestamp::new(1_700_000_000, 0);
    out.push((file, b"hello, cbfs\n".to_vec()));
    let mut dir = meta("docs", EntryKind::Dir, 0);
    dir.mtime = Timestamp::new(-86_400, 500);
    out.push((dir, Vec::new()));
    out.push((
        meta(
            "docs/link",
            EntryKind::Symlink {
                target: b"readme.txt".to_vec(),
            },
            0,
        ),
        Vec::new(),
    ));
    out.push((
        meta(
            "docs/hard",
            EntryKind::Hardlink {
                target: b"docs/readme.txt".to_vec(),
            },
            0,
        ),
        Vec::new(),
    ));
    out.push((
        meta("dev/null", EntryKind::CharDevice { major: 1, minor: 3 }, 0),
        Vec::new(),
    ));
    out.push((
        meta("dev/sda", EntryKind::BlockDevice { major: 8, minor: 0 }, 0),
        Vec::new(),
    ));
    out.push((meta("run/pipe", EntryKind::Fifo, 0), Vec::new()));
    let long = format!("{}/{}", "d".repeat(120), "f".repeat(140));
    let mut big_ids = meta(&long, EntryKind::File, 3);
    big_ids.uid = 0o7777777 + 1;
    big_ids.uname = "a-very-long-user-name-of-more-than-31-bytes".into();
    big_ids.mtime = Timestamp::new(1_700_000_000, 123_456_789);
    big_ids
        .xattrs
        .insert(b"user.comment".to_vec(), b"a value".to_vec());
    big_ids
        .xattrs
        .insert(b"user.mime_type".to_vec(), b"text/plain".to_vec());
    out.push((big_ids, b"abc".to_vec()));
    let mut raw = meta("raw", EntryKind::File, 1);
    raw.path = [b"latin1-\xe9-".as_slice(), &[b'x'; 120]].concat();
    out.push((raw, b"z".to_vec()));
    out
}

fn segments(c: &mut Corpus) -> Vec<Vec<u8>> {
    c.vectors("segment", "tar", b"");
    let mut made = Vec::new();
    // Plain: every kind, one per segment, and all of them together.
    let all = assorted();
    let mut sets: Vec<Vec<(Metadata, Vec<u8>)>> = all.iter().map(|e| vec![e.clone()]).collect();
    sets.push(all);
    sets.push(Vec::new());
    for (i, set) in sets.iter().enumerate() {
        let mut w = SegmentWriter::new(
            Cursor::new(Vec::new()),
            SegmentId::random(),
            SegmentMode::Plain,
        )
        .expect("a writer");
        for (meta, content) in set {
            w.append_plain(MemberId::random(), meta, &content[..])
                .expect("appending");
        }
        let (spool, summary) = w.finish().expect("finishing");
        let bytes = spool.into_inner();
        c.put("segment", &format!("plain-{i}"), &bytes);
        // A plain segment is a tar stream a host could push as well.
        c.put("gateway_push", &format!("plain-{i}"), &bytes);
        c.put("summary", &format!("plain-{i}"), &summary.to_bytes());
        made.push(bytes);
    }
    // Encrypted: a member of each vector group key, and a pack.
    let keys = &vectors().keyring;
    let g1 = keys
        .group_key(&"01010101010101010101010101010101".parse().expect("an id"))
        .expect("g1");
    let g2 = keys
        .group_key(&"02020202020202020202020202020202".parse().expect("an id"))
        .expect("g2");
    let mut w = SegmentWriter::new(
        Cursor::new(Vec::new()),
        SegmentId::random(),
        SegmentMode::Encrypted,
    )
    .expect("a writer");
    let files = assorted();
    w.append_encrypted(MemberId::random(), g1, &files[0].0, &files[0].1[..])
        .expect("appending");
    w.append_encrypted(MemberId::random(), g2, &files[7].0, &files[7].1[..])
        .expect("appending");
    let pack: Vec<(&Metadata, &[u8])> = files.iter().map(|(m, c)| (m, &c[..])).collect();
    w.append_pack(MemberId::random(), g1, &pack)
        .expect("appending a pack");
    let (spool, summary) = w.finish().expect("finishing");
    let bytes = spool.into_inner();
    c.put("segment", "encrypted", &bytes);
    c.put("summary", "encrypted", &summary.to_bytes());
    made.push(bytes);
    made
}

fn members(c: &mut Corpus) {
    // The vectors' members are all of member 11..11, their packs of 33..33.
    c.vectors("member", "age", &[0x11; 16]);
    c.vectors("stanza", "age", b"");
    let g1 = GroupKey::new(
        "01010101010101010101010101010101".parse().expect("an id"),
        secrecy::SecretBox::new(Box::new(
            *vectors()
                .keyring
                .group_key(&"01010101010101010101010101010101".parse().expect("an id"))
                .expect("g1")
                .expose_secret(),
        )),
    );
    let id = MemberId::from_bytes([0x11; 16]);
    for (i, (meta, content)) in assorted().iter().enumerate() {
        let payload = write_member(Vec::new(), id, &g1, meta, &content[..], 3).expect("a member");
        c.put(
            "member",
            &format!("one-{i}"),
            &[id.as_bytes(), &payload[..]].concat(),
        );
        if i < 3 {
            c.put("stanza", &format!("one-{i}"), &payload);
        }
    }
    let files = assorted();
    let pack: Vec<(&Metadata, &[u8])> = files.iter().map(|(m, c)| (m, &c[..])).collect();
    let payload = write_pack(Vec::new(), id, &g1, &pack, 3).expect("a pack");
    c.put("member", "pack", &[id.as_bytes(), &payload[..]].concat());
    c.put("stanza", "pack", &payload);
}

/// The plaintext of a member as the writer frames it: the head ends a zstd
/// block of its own, the contents follow in the same frame.
fn framed(version: u16, table: &[u8], contents: &[u8]) -> Vec<u8> {
    let mut z = zstd::stream::Encoder::new(Vec::new(), 3).expect("an encoder");
    z.write_all(b"CBFSMEMB").expect("writing");
    z.write_all(&version.to_be_bytes()).expect("writing");
    z.write_all(&(table.len() as u32).to_be_bytes())
        .expect("writing");
    z.write_all(table).expect("writing");
    z.flush().expect("flushing");
    z.write_all(contents).expect("writing");
    z.finish().expect("finishing")
}

fn records(c: &mut Corpus) {
    let files = assorted();
    for (i, (meta, content)) in files.iter().enumerate() {
        let record = metadata_to_record(meta).expect("a record");
        c.put("metadata", &format!("{i}"), &record);
        c.put(
            "member_plaintext",
            &format!("one-{i}"),
            &framed(1, &record, content),
        );
    }
    let metas: Vec<Metadata> = files.iter().map(|(m, _)| m.clone()).collect();
    let contents: Vec<u8> = files.iter().flat_map(|(_, c)| c.clone()).collect();
    for n in [1, 2, metas.len()] {
        let table = pack_table_to_bytes(&metas[..n]).expect("a table");
        c.put("pack_table", &format!("{n}"), &table);
        let len: usize = files[..n].iter().map(|(_, c)| c.len()).sum();
        c.put(
            "member_plaintext",
            &format!("pack-{n}"),
            &framed(2, &table, &contents[..len]),
        );
    }
}

fn manifests(c: &mut Corpus) {
    c.vectors("manifest", "manifest", b"");
    let writer = &vectors().writer;
    let base = delta_base();
    c.put("manifest", "base", &base.to_bytes());
    let mut b = ManifestBuilder::new(SnapshotId::random(), 1, None, NOW);
    c.put(
        "manifest",
        "empty",
        &b.clone().sign(writer).expect("signing").to_bytes(),
    );
    b.extend(base_entries().into_iter().take(3));
    c.put(
        "manifest",
        "three",
        &b.sign(writer).expect("signing").to_bytes(),
    );

    // Deltas after the base: members removed, added, and packs whose slots
    // changed.
    let mut entries = base_entries();
    let edits: [&dyn Fn(&mut Vec<ManifestEntry>); 4] = [
        &|e| {
            e.remove(5);
        },
        &|e| {
            e.push(ManifestEntry::single(
                SegmentId::from_bytes([9; 16]),
                MemberId::from_bytes([9; 16]),
                [9; 32],
            ))
        },
        &|e| e[3].slots = cbfs_format::Slots::from_bitmap(&[0b11]).expect("a bitmap"),
        &|e| {
            e.retain(|x| x.segment.as_bytes()[0] != 2);
        },
    ];
    for (i, edit) in edits.iter().enumerate() {
        edit(&mut entries);
        let mut b = ManifestBuilder::new(SnapshotId::random(), 2, Some(base.hash()), NOW + 60);
        b.extend(entries.iter().copied());
        let delta = b.sign_delta(writer, base).expect("signing a delta");
        assert!(delta.is_delta(), "delta {i} came out full");
        c.put("delta_manifest", &format!("{i}"), &delta.to_bytes());
    }
}

fn lockboxes(c: &mut Corpus) {
    c.vectors("lockbox", "lockbox", b"");
    let scope = vectors().scope.public_key();
    for label in ["a", "projects/apollo", &"x".repeat(64)] {
        let (lockbox, _) = Lockbox::seal(label, &scope, SegmentId::random()).expect("sealing");
        c.put(
            "lockbox",
            &format!("made-{}", label.len()),
            &lockbox.to_bytes(),
        );
    }
}

fn documents(c: &mut Corpus) {
    let p = parties();
    let admin = &p.admin;
    let mut keyset = p.keyset.clone();
    c.put(
        "keyset",
        "scopes",
        &keyset.to_signed_bytes(admin).expect("signing"),
    );
    keyset
        .add_writer(admin, &p.user_name, p.user.verifying_key())
        .expect("a writer");
    c.put(
        "keyset",
        "writer",
        &keyset.to_signed_bytes(admin).expect("signing"),
    );
    c.put(
        "user_key",
        "alice",
        &p.user_public.to_signed_bytes(&p.user).expect("signing"),
    );
    let nodes: Vec<_> = p.nodes.iter().map(|n| n.public_key()).collect();
    for (threshold, expires) in [(2, None), (1, Some("2030-01-01T00:00:00Z".to_owned()))] {
        let terms = DelegationTerms {
            threshold,
            shares: 3,
            expires,
        };
        let d = delegate(
            admin,
            &p.keyset,
            &p.scope,
            &p.user_public,
            &terms,
            &nodes,
            &*p.clock,
        )
        .expect("a delegation");
        let record = d.record.to_bytes();
        c.put("delegation_record", &format!("{threshold}"), record);
        for (i, grant) in d.grants.iter().enumerate() {
            let name = format!("{threshold}-{i}");
            c.put(
                "grant",
                &name,
                &grant.to_signed_bytes(admin).expect("signing"),
            );
            let sealed = grant.seal_for_node(admin).expect("sealing");
            c.put("sealed_grant", &name, &sealed);
            let upload = GrantUpload::new(&sealed, &d.record);
            c.put(
                "node_grant_upload",
                &name,
                &serde_json::to_vec(&upload).expect("JSON"),
            );
            // The node's answer for the fixed capsule.
            let cfrag = umbral_pre::reencrypt(&p.capsule, grant.kfrag().clone());
            let answer = Cfrags {
                format: CFRAGS_FORMAT.into(),
                version: CFRAGS_VERSION,
                delegation: serde_json::from_slice(record).expect("JSON"),
                cfrags: vec![encode_cfrag(&cfrag)],
            };
            c.put(
                "node_response",
                &format!("cfrags-{name}"),
                &serde_json::to_vec_pretty(&answer).expect("JSON"),
            );
            let request = ReencryptBody::new(
                &nodes[i],
                &p.user_name,
                &p.scope,
                "/proj/docs",
                &[p.capsule.clone()],
                p.clock.unix(),
            )
            .sign(&p.user.signer());
            c.put(
                "node_request",
                &name,
                &serde_json::to_vec(&request).expect("JSON"),
            );
        }
    }
    let revocation = Revocation::new(admin, &p.scope, &p.user_public, &*p.clock);
    c.put(
        "revocation",
        "alice",
        &revocation.to_signed_bytes(admin).expect("signing"),
    );
    let node = &p.nodes[0].public_key();
    let others: [(&str, Vec<u8>); 4] = [
        (
            "node-info",
            serde_json::to_vec(&NodeInfo {
                format: cbfs_wire::NODE_FORMAT.into(),
                version: cbfs_wire::NODE_VERSION,
                public_key: cbfs_core::public_key_hex(node),
                fingerprint: cbfs_core::fingerprint(node),
                fs: p.fs.to_string(),
                admin_fingerprint: cbfs_core::fingerprint(&admin.verifying_key()),
            })
            .expect("JSON"),
        ),
        (
            "grant-stored",
            serde_json::to_vec(&GrantStored {
                scope: "proj".into(),
                user: "alice".into(),
                share: 1,
                threshold: 2,
                shares: 3,
                expires: Some("2030-01-01T00:00:00Z".into()),
            })
            .expect("JSON"),
        ),
        (
            "revoke-done",
            serde_json::to_vec(&RevokeDone {
                revoked: true,
                deleted: true,
                threshold: Some(2),
                shares: Some(3),
            })
            .expect("JSON"),
        ),
        (
            "error",
            serde_json::to_vec(&ErrorBody {
                error: "denied".into(),
                reason: "policy says no".into(),
            })
            .expect("JSON"),
        ),
    ];
    for (name, bytes) in others {
        c.put("node_response", name, &bytes);
    }
}

fn gateway(c: &mut Corpus) {
    let p = parties();
    let nonce = "0123456789abcdef0123456789abcdef";
    let empty = content_sha256(b"");
    let parts = SignedParts {
        method: "GET",
        path_and_query: "/v1/fs/fuzzfs/ls?path=%2F",
        timestamp: NOW,
        nonce,
        content_sha256: &empty,
    };
    c.put(
        "gateway_request",
        "signed",
        authorization(&p.user_name, &p.user.signer(), &parts).as_bytes(),
    );
    c.put(
        "gateway_request",
        "unsigned",
        format!("cbfs-sig user=\"bob\", ts=\"-1\", nonce=\"{nonce}\", sig=\"00\"").as_bytes(),
    );
    for (status, body) in [
        (403u16, &br#"{"error":"denied","reason":"policy"}"#[..]),
        (503, br#"{"error":"unavailable","reason":"store down"}"#),
        (500, b"<html>oops</html>"),
    ] {
        c.put(
            "gateway_response",
            &format!("{status}"),
            &[&status.to_be_bytes()[..], body].concat(),
        );
    }
}

/// Tar streams as hosts push them: what `tar` and the push client make.
fn pushes(c: &mut Corpus) {
    let tar_of = |build: &dyn Fn(&mut tar::Builder<Vec<u8>>)| {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().expect("a tar")
    };
    let entry = |b: &mut tar::Builder<Vec<u8>>,
                 kind: tar::EntryType,
                 name: &str,
                 link: &str,
                 data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(1_700_000_000);
        if !link.is_empty() {
            h.set_link_name(link).expect("a link name");
        }
        b.append_data(&mut h, name, data).expect("an entry");
    };
    use tar::EntryType as T;
    let long = format!("./{}/{}", "d".repeat(90), "f".repeat(90));
    let streams: [(&str, Vec<(T, &str, &str, &[u8])>); 2] = [
        (
            "tree",
            vec![
                (T::Directory, "./", "", b""),
                (T::Directory, "./docs/", "", b""),
                (T::Regular, "./docs/a.txt", "", b"hello"),
                (T::Symlink, "./docs/l", "a.txt", b""),
                (T::Link, "./h", "docs/a.txt", b""),
                (T::Fifo, "./pipe", "", b""),
                (T::Regular, &long, "", b"long"),
            ],
        ),
        (
            "links",
            vec![
                (T::Directory, "a", "", b""),
                (T::Symlink, "a/up", "..", b""),
                (T::Symlink, "b", "a/up", b""),
                (T::Regular, "a/f", "", b"x"),
            ],
        ),
    ];
    for (name, entries) in streams {
        let stream = tar_of(&|b| {
            for (kind, path, link, data) in &entries {
                entry(b, *kind, path, link, data);
            }
        });
        c.put("gateway_push", name, &stream);
    }
}

fn main() {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let mut c = Corpus {
        root,
        written: BTreeMap::new(),
    };
    c.vectors("summary", "summary", b"");
    segments(&mut c);
    members(&mut c);
    records(&mut c);
    manifests(&mut c);
    lockboxes(&mut c);
    documents(&mut c);
    gateway(&mut c);
    pushes(&mut c);
    for (target, n) in &c.written {
        println!("{target}: {n} seeds");
    }
}
