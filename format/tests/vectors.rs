//! Checks every committed test vector in `format/vectors/index.json`.
//!
//! The vectors were made once by `examples/gen_vectors.rs`; this test only reads,
//! decrypts and verifies them, and asserts each stated outcome.

mod common;
mod spec;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use cbfs_format::{
    Collection, Error, GroupId, GroupKey, Keyring, Lease, Lockbox, Manifest, ManifestBase,
    MemberId, RecordId, Relocation, RetentionRecord, RunRecord, SegmentId, SegmentReader,
    SnapshotId, StubPhase, StubRecord, Summary, layout, open_member, open_member_files,
};
use secrecy::SecretBox;
use serde_json::Value;
use sha2::{Digest, Sha256};
use umbral_pre::{CapsuleFrag, DefaultDeserialize, SecretKey, SecretKeyFactory, Signer};

struct Keys {
    scope: SecretKey,
    /// Key version 2 of the vector scope (lockbox version 2 vectors).
    scope_v2: SecretKey,
    user: SecretKey,
    writer: Signer,
    delegation: Signer,
    groups: BTreeMap<String, (GroupId, [u8; 32])>,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

fn load_keys(index: &Value) -> Keys {
    let k = &index["keys"];
    let seed = hex::decode(k["umbral_factory_seed"].as_str().unwrap()).unwrap();
    let factory = SecretKeyFactory::from_secure_randomness(&seed).unwrap();
    let key = |name: &str| factory.make_key(k[name].as_str().unwrap().as_bytes());
    let groups = k["groups"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, g)| {
            let id: GroupId = g["id"].as_str().unwrap().parse().unwrap();
            let bytes: [u8; 32] = hex::decode(g["key"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap();
            (name.clone(), (id, bytes))
        })
        .collect();
    Keys {
        scope: key("scope_label"),
        scope_v2: key("scope_v2_label"),
        user: key("user_label"),
        writer: Signer::new(key("writer_label")),
        delegation: Signer::new(key("delegation_signer_label")),
        groups,
    }
}

fn keyring(keys: &Keys, v: &Value) -> Keyring {
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let (id, bytes) = keys.groups[n.as_str().unwrap()];
            GroupKey::new(id, SecretBox::new(Box::new(bytes)))
        })
        .collect()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn read(name: &Value) -> Vec<u8> {
    fs::read(dir().join(name.as_str().unwrap())).unwrap()
}

/// Runs one vector; `Ok` carries the facts to compare for an `ok` vector.
fn run(keys: &Keys, v: &Value) -> Result<(), Error> {
    match v["kind"].as_str().unwrap() {
        "member" => {
            let member: MemberId = v["member_id"].as_str().unwrap().parse().unwrap();
            let ring = keyring(keys, v);
            let payload = read(&v["file"]);
            let (meta, mut content) = open_member(member, &payload[..], &ring)?;
            let mut data = Vec::new();
            content
                .read_to_end(&mut data)
                .map_err(|e| Error::from_io(e, "vector"))?;
            assert_eq!(
                hex::encode(&meta.path),
                v["path_hex"].as_str().unwrap(),
                "{}",
                v["name"]
            );
            assert_eq!(
                sha(&data),
                v["content_sha256"].as_str().unwrap(),
                "{}",
                v["name"]
            );
            Ok(())
        }
        "pack" => {
            let member: MemberId = v["member_id"].as_str().unwrap().parse().unwrap();
            let ring = keyring(keys, v);
            let payload = read(&v["file"]);
            let files = open_member_files(member, &payload[..], &ring)?;
            let all = common::read_all(files.content)?;
            let mut at = 0;
            let mut got = Vec::new();
            for meta in &files.entries {
                let end = at + meta.size as usize;
                got.push((hex::encode(&meta.path), sha(&all[at..end])));
                at = end;
            }
            let want: Vec<(String, String)> = v["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    (
                        f["path_hex"].as_str().unwrap().to_string(),
                        f["content_sha256"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            assert_eq!(got, want, "{}", v["name"]);
            Ok(())
        }
        "lockbox" => {
            let lb = Lockbox::from_bytes(&read(&v["file"]))?;
            let version = v["key_version"].as_u64().unwrap_or(1) as u32;
            assert_eq!(lb.key_version(), version, "{}", v["name"]);
            let key = match v["open_with"].as_str().unwrap() {
                "scope" if version >= 2 => lb.open(&keys.scope_v2)?,
                "scope" | "scope-v1" => lb.open(&keys.scope)?,
                "user-as-scope" => lb.open(&keys.user)?,
                "user" => {
                    let scope_pk = keys.scope.public_key();
                    let cfrags = v["cfrags"].as_array().unwrap().iter().map(|f| {
                        CapsuleFrag::from_bytes(&read(f))
                            .unwrap()
                            .verify(
                                lb.capsule(),
                                &keys.delegation.verifying_key(),
                                &scope_pk,
                                &keys.user.public_key(),
                            )
                            .unwrap()
                    });
                    lb.open_reencrypted(&keys.user, &scope_pk, cfrags)?
                }
                other => panic!("unknown open_with {other}"),
            };
            assert_eq!(key.id().to_string(), v["group_id"].as_str().unwrap());
            assert_eq!(
                sha(key.expose_secret()),
                v["group_key_sha256"].as_str().unwrap()
            );
            assert_eq!(
                lb.segment_id().to_string(),
                v["segment_id"].as_str().unwrap()
            );
            assert_eq!(lb.scope(), v["scope"].as_str().unwrap());
            Ok(())
        }
        "segment" => {
            let seg = read(&v["file"]);
            let summary = Summary::from_bytes(&read(&v["summary"]))?;
            assert_eq!(Summary::from_bytes(&summary.to_bytes())?, summary);
            summary.verify_segment(&seg[..])?;
            let ring = keyring(keys, v);
            let mut reader = SegmentReader::new(&seg[..])?;
            let mut got = Vec::new();
            while let Some(m) = reader.next_member()? {
                let (meta, content) = m.open(&ring)?;
                got.push((hex::encode(&meta.path), sha(&common::read_all(content)?)));
            }
            let want: Vec<(String, String)> = v["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    (
                        m["path_hex"].as_str().unwrap().to_string(),
                        m["content_sha256"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            assert_eq!(got, want, "{}", v["name"]);
            Ok(())
        }
        "manifest" => {
            let trusted = match v["trusted"].as_str().unwrap() {
                "writer" => keys.writer.verifying_key(),
                other => panic!("unknown trusted {other}"),
            };
            let bytes = read(&v["file"]);
            let m = Manifest::from_bytes(&bytes, &trusted)?;
            assert_eq!(m.to_bytes(), bytes);
            assert_eq!(
                hex::encode(m.merkle_root()),
                v["merkle_root"].as_str().unwrap()
            );
            assert_eq!(m.entries().len() as u64, v["entries"].as_u64().unwrap());
            assert_eq!(m.sequence(), v["sequence"].as_u64().unwrap());
            for e in m.entries() {
                assert!(
                    m.prove(&e.segment, &e.member)
                        .unwrap()
                        .verify(m.merkle_root(), e)
                );
            }
            Ok(())
        }
        "stub" => {
            let bytes = read(&v["file"]);
            let r = StubRecord::from_bytes(&bytes)?;
            assert_eq!(r.to_bytes().unwrap(), bytes, "{}", v["name"]);
            let want = &v["record"];
            let phase = match r.phase {
                StubPhase::Releasing => "releasing",
                StubPhase::Released => "released",
                _ => "recalling",
            };
            assert_eq!(want["phase"], phase, "{}", v["name"]);
            assert_eq!(want["fs"], r.fs.as_str());
            assert_eq!(want["snapshot"], r.snapshot.to_string().as_str());
            assert_eq!(want["sequence"], r.sequence);
            assert_eq!(want["segment"], r.segment.to_string().as_str());
            assert_eq!(want["member"], r.member.to_string().as_str());
            assert_eq!(want["slot"], r.slot);
            assert_eq!(want["size"], r.size);
            assert_eq!(want["sha256"], hex::encode(r.sha256).as_str());
            assert_eq!(want["mtime"][0], r.mtime.secs);
            assert_eq!(want["mtime"][1], r.mtime.nanos);
            assert_eq!(want["inode"], r.inode);
            assert_eq!(want["path_hex"], hex::encode(&r.path).as_str());
            Ok(())
        }
        "retention" => {
            let r = RetentionRecord::from_bytes(&read(&v["file"]))?;
            if r.signer() != &keys.writer.verifying_key() {
                return Err(Error::UntrustedSigner {
                    snapshot: cbfs_format::SnapshotId::from_bytes([0; 16]),
                    found: hex::encode(r.signer().to_compressed_bytes()),
                });
            }
            let seqs: Vec<u64> = r.forgotten().iter().map(|f| f.sequence).collect();
            let want: Vec<u64> = v["forgotten"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_u64().unwrap())
                .collect();
            assert_eq!(seqs, want, "{}", v["name"]);
            assert_eq!(r.policy(), v["policy"].as_str().unwrap());
            assert_eq!(r.to_bytes(), read(&v["file"]));
            Ok(())
        }
        "base" => {
            let base = ManifestBase::from_bytes(&read(&v["file"]))?;
            let bytes = read(&v["manifest"]);
            let m = Manifest::from_delta_with_base(&bytes, &keys.writer.verifying_key(), &base)?;
            assert_eq!(base.to_bytes(), read(&v["file"]));
            assert_eq!(m.entries().len() as u64, v["entries"].as_u64().unwrap());
            assert_eq!(m.sequence(), v["sequence"].as_u64().unwrap());
            assert_eq!(
                hex::encode(m.merkle_root()),
                v["merkle_root"].as_str().unwrap()
            );
            Ok(())
        }
        "relocation" => {
            let bytes = read(&v["file"]);
            let r = Relocation::from_bytes(&bytes)?;
            assert_eq!(r.to_bytes(), bytes);
            assert_eq!(
                r.old_segment().to_string(),
                v["old_segment"].as_str().unwrap()
            );
            assert_eq!(
                r.new_segment().to_string(),
                v["new_segment"].as_str().unwrap()
            );
            assert_eq!(r.entries().len() as u64, v["members"].as_u64().unwrap());
            Ok(())
        }
        "collection" => {
            let bytes = read(&v["file"]);
            let c = Collection::from_bytes(&bytes)?;
            assert_eq!(c.to_bytes(), bytes);
            assert_eq!(c.segments().len() as u64, v["segments"].as_u64().unwrap());
            assert_eq!(c.objects().len() as u64, v["objects"].as_u64().unwrap());
            Ok(())
        }
        "run" => {
            let r = RunRecord::from_bytes(&read(&v["file"]))?;
            assert_eq!(r.writer(), &keys.writer.verifying_key());
            assert_eq!(r.snapshot(), v["snapshot"].as_u64());
            for h in v["acknowledges"].as_array().unwrap() {
                let h: [u8; 32] = hex::decode(h.as_str().unwrap())
                    .unwrap()
                    .try_into()
                    .unwrap();
                assert!(r.acknowledges(&h));
            }
            Ok(())
        }
        "lease" => {
            let bytes = read(&v["file"]);
            let l = Lease::from_bytes(&bytes)?;
            assert_eq!(l.to_bytes(), bytes);
            assert_eq!(l.generation, v["generation"].as_u64().unwrap());
            assert_eq!(l.host, v["host"].as_str().unwrap());
            assert_eq!(u64::from(l.pid), v["pid"].as_u64().unwrap());
            assert_eq!(l.released, v["released"].as_bool().unwrap());
            Ok(())
        }
        "snapshot" => {
            // What a manifest entry's `sha256` is: the SHA-256 of the
            // member's stored bytes, the summary's value for the member.
            let m = Manifest::from_bytes(&read(&v["file"]), &keys.writer.verifying_key())?;
            let seg = read(&v["segment"]);
            let summary = Summary::from_bytes(&read(&v["summary"]))?;
            summary.verify_segment(&seg[..])?;
            assert_eq!(m.entries().len() as u64, v["entries"].as_u64().unwrap());
            let ring = keyring(keys, v);
            for e in m.entries() {
                assert_eq!(e.segment, summary.segment_id());
                let s = summary
                    .entries()
                    .iter()
                    .find(|s| s.member == e.member)
                    .expect("every member of the manifest is in the summary");
                let data = &seg[s.data_offset as usize..(s.data_offset + s.data_len) as usize];
                assert_eq!(Sha256::digest(data).as_slice(), e.sha256);
                assert_eq!(s.sha256, e.sha256);
                let files = open_member_files(e.member, data, &ring)?;
                common::read_all(files.content)?;
            }
            Ok(())
        }
        "lockbox-dem" => {
            lockbox_dem(keys, v);
            Ok(())
        }
        "names" => {
            for n in v["names"].as_array().unwrap() {
                object_name(n);
            }
            Ok(())
        }
        other => panic!("unknown vector kind {other}"),
    }
}

fn hex_of(v: &Value, field: &str) -> Vec<u8> {
    hex::decode(v[field].as_str().unwrap()).unwrap()
}

/// Opens a committed lockbox by the recipe of docs/FORMAT.md (tests/spec:
/// curve arithmetic, HKDF and XChaCha20-Poly1305, no Umbral code), compares
/// every step with the vector, and the result with what cbfs-format and
/// umbral-pre make of the same bytes.
fn lockbox_dem(keys: &Keys, v: &Value) {
    let name = v["name"].as_str().unwrap();
    let bytes = read(&v["file"]);
    let lb = spec::parse_lockbox(&bytes).expect("the documented lockbox layout");
    assert_eq!(
        u64::from(lb.key_version),
        v["key_version"].as_u64().unwrap()
    );
    assert_eq!(lb.capsule, hex_of(v, "capsule_msgpack"), "{name}");
    let capsule = spec::parse_capsule(&lb.capsule).expect("the documented capsule layout");
    assert!(capsule.self_check(), "{name}: capsule self-check");
    assert_eq!(capsule.simple(), hex_of(v, "capsule_simple"), "{name}");
    let sk = if lb.key_version >= 2 {
        &keys.scope_v2
    } else {
        &keys.scope
    };
    let scalar: [u8; 32] = sk.to_be_bytes().as_secret().as_slice().try_into().unwrap();
    let shared = capsule.shared_point(&scalar).unwrap();
    assert_eq!(shared.to_vec(), hex_of(v, "shared_point"), "{name}");
    let key = spec::dem_key(&shared);
    assert_eq!(key.to_vec(), hex_of(v, "dem_key"), "{name}");
    assert_eq!(lb.ciphertext[..24], hex_of(v, "nonce")[..], "{name}");
    let sealed = spec::dem_open(&key, &lb.ciphertext, &capsule.simple()).expect("the DEM opens");
    assert_eq!(sealed, hex_of(v, "sealed"), "{name}");
    assert_eq!(
        sealed[32..],
        spec::binding(&lb.label, lb.key_version, &lb.group, &lb.segment),
        "{name}: binding"
    );
    // The stored MessagePack bytes are not the associated data.
    assert!(spec::dem_open(&key, &lb.ciphertext, &lb.capsule).is_none());
    // The same bytes through cbfs-format and umbral-pre.
    let parsed = Lockbox::from_bytes(&bytes).unwrap();
    assert_eq!(
        &*umbral_pre::DefaultSerialize::to_bytes(parsed.capsule()).unwrap(),
        &lb.capsule[..]
    );
    assert_eq!(&*parsed.capsule().to_bytes_simple(), &capsule.simple()[..]);
    let opened = parsed.open(sk).unwrap();
    assert_eq!(opened.expose_secret()[..], sealed[..32], "{name}");
    assert_eq!(
        sha(opened.expose_secret()),
        v["group_key_sha256"].as_str().unwrap()
    );
    assert_eq!(opened.id().as_bytes(), &lb.group);
}

/// One object name: the layout function makes exactly the stated key, and
/// its parser (where there is one) reads the ids back.
fn object_name(n: &Value) {
    let key = n["key"].as_str().unwrap();
    let seg = |f: &str| n[f].as_str().unwrap().parse::<SegmentId>().unwrap();
    let snap = || {
        n["snapshot"]
            .as_str()
            .unwrap()
            .parse::<SnapshotId>()
            .unwrap()
    };
    let record = || n["record"].as_str().unwrap().parse::<RecordId>().unwrap();
    let num = |f: &str| n[f].as_u64().unwrap();
    let made = match n["object"].as_str().unwrap() {
        "keyset" => layout::keyset(num("serial")),
        "segment" => {
            assert_eq!(layout::parse_segment(key), Some(seg("segment")));
            layout::segment(&seg("segment"))
        }
        "summary" => layout::summary(&seg("segment")),
        "lockbox" => {
            let group: GroupId = n["group"].as_str().unwrap().parse().unwrap();
            let version = num("key_version") as u32;
            let name = key.rsplit('/').next().unwrap();
            assert_eq!(layout::parse_lockbox_name(name), Some((group, version)));
            assert!(key.starts_with(&layout::lockboxes_of(&seg("segment"))));
            layout::lockbox_at(&seg("segment"), &group, version)
        }
        "manifest" => {
            assert_eq!(layout::parse_manifest(key), Some((num("sequence"), snap())));
            layout::manifest(num("sequence"), &snap())
        }
        "retention" => {
            assert!(layout::is_retention(key));
            layout::retention(n["time"].as_i64().unwrap(), &record())
        }
        "base" => {
            assert_eq!(layout::parse_base(key), Some((num("sequence"), snap())));
            layout::base(num("sequence"), &snap())
        }
        "relocation" => {
            let pair = (seg("segment"), seg("new_segment"));
            assert_eq!(layout::parse_relocation(key), Some(pair));
            layout::relocation(&pair.0, &pair.1)
        }
        "collection" => {
            assert!(layout::is_collection(key));
            layout::collection(n["time"].as_i64().unwrap(), &record())
        }
        "run" => {
            assert!(layout::is_run_record(key));
            layout::run_record(n["time"].as_i64().unwrap(), &record())
        }
        "lease" => {
            assert_eq!(layout::parse_lease(key), Some(num("generation")));
            layout::lease(num("generation"))
        }
        other => panic!("unknown object {other}"),
    };
    assert_eq!(made, key);
}

#[test]
fn committed_vectors_give_their_stated_outcome() {
    let index: Value =
        serde_json::from_slice(&fs::read(dir().join("index.json")).expect("vectors/index.json"))
            .unwrap();
    let keys = load_keys(&index);
    let vectors = index["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 30, "only {} vectors", vectors.len());
    let mut failures = Vec::new();
    let mut classes = BTreeMap::new();
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let expect = v["expect"].as_str().unwrap();
        *classes.entry(expect.to_string()).or_insert(0) += 1;
        let outcome = match run(&keys, v) {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                // Error messages must never carry key bytes.
                for (_, bytes) in keys.groups.values() {
                    assert!(!format!("{e} {e:?}").contains(&hex::encode(bytes)));
                }
                e.code().to_string()
            }
        };
        if outcome != expect {
            failures.push(format!("{name}: expected {expect}, got {outcome}"));
        }
    }
    assert!(
        failures.is_empty(),
        "vector failures:\n{}",
        failures.join("\n")
    );
    for class in [
        "ok",
        "bad_brand",
        "unknown_version",
        "malformed",
        "member_header",
        "header_mac",
        "wrong_key",
        "payload_auth",
        "payload_truncated",
        "lockbox_open",
        "summary_mismatch",
        "tar",
        "bad_signature",
        "untrusted_signer",
        "merkle_mismatch",
    ] {
        assert!(classes.contains_key(class), "no vector covers {class}");
    }
}

/// The indexes: `index.json` (this crate's objects, checked here) and
/// `index-keys.json` (key derivation and the signed JSON documents of
/// cbfs-core, checked by `core/tests/key_vectors.rs`).
const INDEXES: [&str; 2] = ["index.json", "index-keys.json"];

#[test]
fn every_vector_file_is_listed() {
    let mut listed = std::collections::BTreeSet::new();
    for index in INDEXES {
        let index: Value = serde_json::from_slice(&fs::read(dir().join(index)).unwrap()).unwrap();
        for v in index["vectors"].as_array().unwrap() {
            for field in ["file", "summary", "manifest"] {
                if let Some(f) = v[field].as_str() {
                    listed.insert(f.to_string());
                }
            }
            for f in v["cfrags"].as_array().into_iter().flatten() {
                listed.insert(f.as_str().unwrap().to_string());
            }
        }
    }
    for entry in fs::read_dir(dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !INDEXES.contains(&name.as_str()) && name != "README.md" {
            assert!(listed.contains(&name), "{name} is not listed in index.json");
        }
    }
}
