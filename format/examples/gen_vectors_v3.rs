//! Adds the vectors of lockbox version 2 (a group key sealed under scope key
//! version 2, as `rotate-scope` writes it) to `format/vectors/`, leaving
//! every existing vector as it is.
//!
//! ```sh
//! cargo run -p cbfs-format --example gen_vectors_v3 [-- format/vectors]
//! ```
//!
//! The keys are those of `gen_vectors` (same factory seed); key version 2
//! of the vector scope is `factory.make_key("vectors/scope/v2")` (the index
//! names it `scope_v2_label`). Umbral draws its capsule randomness from the
//! operating system, so a rerun gives other bytes: it replaces only the
//! vectors it makes.

mod common;

use std::fs;

use cbfs_format::{GroupId, GroupKey, Lockbox, SegmentId};
use secrecy::SecretBox;
use serde_json::json;
use sha2::{Digest, Sha256};
use umbral_pre::SecretKeyFactory;

const FACTORY_SEED: [u8; 32] = [0x42; 32];
const SCOPE: &str = "vectors/scope";
const SCOPE_V2_LABEL: &str = "vectors/scope/v2";

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn main() {
    let dir = common::vectors_dir();
    let mut index = common::read_index(&dir);
    let factory = SecretKeyFactory::from_secure_randomness(&FACTORY_SEED).unwrap();
    let v2 = factory.make_key(SCOPE_V2_LABEL.as_bytes());
    let group = GroupKey::new(
        GroupId::from_bytes([0x77; 16]),
        SecretBox::new(Box::new([0x5a; 32])),
    );
    let segment = SegmentId::from_bytes([0x5e; 16]);
    let lb = Lockbox::seal_existing_at(SCOPE, 2, &v2.public_key(), segment, &group).unwrap();
    let ok = lb.to_bytes();
    // The key version sits after the brand (8), version (2), label length (1)
    // and label.
    let at = 8 + 2 + 1 + SCOPE.len();
    let mut edited = ok.clone();
    edited[at + 3] = 3;
    let mut one = ok.clone();
    one[at..at + 4].copy_from_slice(&1u32.to_be_bytes());
    let base = json!({
        "kind": "lockbox",
        "group_id": group.id().to_string(),
        "group_key_sha256": sha(group.expose_secret()),
        "segment_id": segment.to_string(),
        "scope": SCOPE,
    });
    let mut new = Vec::new();
    for (name, bytes, open_with, key_version, expect, note) in [
        (
            "lockbox-v2-ok",
            &ok,
            "scope",
            2,
            "ok",
            "sealed under scope key version 2",
        ),
        (
            "lockbox-v2-version-edited",
            &edited,
            "scope",
            3,
            "lockbox_open",
            "the key version in the header changed from 2 to 3: the binding covers it",
        ),
        (
            "lockbox-v2-original-key",
            &ok,
            "scope-v1",
            2,
            "lockbox_open",
            "opened with key version 1 of the scope: a rotated lockbox needs its own version",
        ),
        (
            "lockbox-v2-says-version-one",
            &one,
            "scope",
            1,
            "malformed",
            "key version 1 is written as a version 1 lockbox only",
        ),
    ] {
        let file = format!("{name}.lockbox");
        fs::write(dir.join(&file), bytes).unwrap();
        let mut v = base.clone();
        v["name"] = name.into();
        v["file"] = file.into();
        v["open_with"] = open_with.into();
        v["key_version"] = key_version.into();
        v["expect"] = expect.into();
        v["note"] = note.into();
        new.push(v);
    }
    index["keys"]["scope_v2_label"] = SCOPE_V2_LABEL.into();
    common::add_vectors(&dir, index, new);
}
