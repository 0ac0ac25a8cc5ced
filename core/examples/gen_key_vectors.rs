//! Writes the key vectors to `format/vectors/index-keys.json` and the files
//! it lists: the key hierarchy derived from fixed seeds, and the signed JSON
//! documents of cbfs-core (keysets of both versions, a user public key, a
//! delegation record, a grant, a grant sealed for its node, a revocation),
//! each with an altered copy that must be refused.
//!
//! ```sh
//! cargo run --example gen_key_vectors [-- format/vectors]
//! ```
//!
//! The keys derive from the seeds in the index, so they are the same on
//! every run; signatures, kfrags, Umbral capsules and the keysets' and user
//! key's times are not: the committed files are the reference, and
//! `core/tests/key_vectors.rs` checks them. Rerun only when these formats
//! change, and keep the old files.

use std::fs;
use std::path::{Path, PathBuf};

use cbfs_core::{
    AdminSecret, DelegationTerms, FakeClock, FsName, Keyset, Revocation, ScopeLabel, Seed,
    UserName, UserPublic, UserSecret, delegate, public_key_hex,
};
use serde_json::{Value, json};

const ROOT: [u8; 32] = [0x11; 32];
const USER: [u8; 32] = [0x22; 32];
const WRITER: [u8; 32] = [0x33; 32];
const WRITER2: [u8; 32] = [0x34; 32];
const NODES: [[u8; 32]; 3] = [[0x44; 32], [0x55; 32], [0x66; 32]];

fn seed(bytes: &[u8; 32]) -> Seed {
    Seed::from_slice(bytes, "vector seed").unwrap()
}

fn admin() -> AdminSecret {
    AdminSecret::from_seed(seed(&ROOT))
}

fn user(bytes: &[u8; 32]) -> UserSecret {
    UserSecret::from_seed(seed(bytes))
}

/// Writes `bytes` to `dir/file` and gives its vector: `facts` with the
/// vector's name (the file's, without extension) and file.
fn vector(dir: &Path, file: &str, bytes: &[u8], mut facts: Value) -> Value {
    fs::write(dir.join(file), bytes).unwrap();
    let name = file.rsplit_once('.').map_or(file, |(stem, _)| stem);
    facts["name"] = name.into();
    facts["file"] = file.into();
    facts
}

/// `text` with `from` replaced by `to`, which must occur in it.
fn edit(text: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(text.to_vec()).unwrap();
    assert!(text.contains(from), "{from} is not in the document");
    text.replacen(from, to, 1).into_bytes()
}

fn derivations() -> Vec<Value> {
    let admin = admin();
    let hexkey = |k: &cbfs_core::umbral_pre::SecretKey| {
        (
            hex::encode(k.to_be_bytes().as_secret()),
            public_key_hex(&k.public_key()),
        )
    };
    let mut out = Vec::new();
    for version in [1u32, 2] {
        let label = if version == 1 {
            "cbfs/v1/admin/sign".to_owned()
        } else {
            format!("cbfs/v1/admin/sign/v{version}")
        };
        let factory =
            cbfs_core::umbral_pre::SecretKeyFactory::from_secure_randomness(&ROOT).unwrap();
        let (secret, public) = hexkey(&factory.make_key(label.as_bytes()));
        assert_eq!(public, public_key_hex(&admin.verifying_key_at(version)));
        out.push(json!({
            "name": format!("derive-admin-sign-v{version}"), "kind": "derive", "seed": "root",
            "role": "admin-sign", "key_version": version, "label": label,
            "secret_scalar": secret, "public_key": public, "expect": "ok",
        }));
    }
    for (scope, version) in [("default", 1u32), ("alice", 1), ("alice", 2), ("alice", 3)] {
        let s = admin.scope_at(&ScopeLabel::new(scope).unwrap(), version);
        let (secret, public) = hexkey(s.secret_key());
        let label = if version == 1 {
            format!("cbfs/v1/scope/{scope}")
        } else {
            format!("cbfs/v1/scope/{scope}/v{version}")
        };
        out.push(json!({
            "name": format!("derive-scope-{scope}-v{version}"), "kind": "derive-scope",
            "seed": "root", "scope": scope, "key_version": version, "secret_label": label,
            "key_label": "cbfs/v1/scope/key",
            "scope_seed": hex::encode(s.seed().expose_secret_bytes()),
            "secret_scalar": secret, "public_key": public, "expect": "ok",
        }));
    }
    let seeds = [
        ("user", "alice", &USER),
        ("writer", "agent", &WRITER),
        ("writer2", "agent2", &WRITER2),
        ("node1", "node 1", &NODES[0]),
    ];
    for (seed_name, who, bytes) in seeds {
        let u = user(bytes);
        for (role, label, key) in [
            ("user-encrypt", "cbfs/v1/user/encrypt", u.public_key()),
            ("user-sign", "cbfs/v1/user/sign", u.verifying_key()),
        ] {
            let factory =
                cbfs_core::umbral_pre::SecretKeyFactory::from_secure_randomness(bytes).unwrap();
            let (secret, public) = hexkey(&factory.make_key(label.as_bytes()));
            assert_eq!(public, public_key_hex(&key));
            out.push(json!({
                "name": format!("derive-{seed_name}-{}", &role[5..]), "kind": "derive",
                "seed": seed_name, "role": role, "label": label, "who": who,
                "secret_scalar": secret, "public_key": public, "expect": "ok",
            }));
        }
    }
    out
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "format/vectors".into()),
    );
    let mut vectors = derivations();
    let admin = admin();
    let alice = ScopeLabel::new("alice").unwrap();
    let agent = UserName::new("agent").unwrap();

    // A version 1 keyset: the default scope, alice, one writer.
    let mut ks = Keyset::new(FsName::new("projects").unwrap(), &admin);
    ks.add_scope(&admin, &alice).unwrap();
    ks.add_writer(&admin, &agent, user(&WRITER).verifying_key())
        .unwrap();
    let v1 = ks.to_signed_bytes(&admin).unwrap();
    vectors.push(vector(
        &dir,
        "keyset-v1-ok.json",
        &v1,
        json!({"kind": "keyset", "expect": "ok", "version": 1, "serial": ks.serial(),
               "admin_key_version": 1, "scopes": {"default": [1], "alice": [1]},
               "writers": {"agent": "writer"}, "retired_writers": {}}),
    ));
    vectors.push(vector(
        &dir,
        "keyset-v1-edited.json",
        &edit(&v1, "\"serial\": 2", "\"serial\": 9"),
        json!({"kind": "keyset", "expect": "refused",
               "note": "serial 2 changed to 9 after signing"}),
    ));

    // Version 2: alice rotated twice, the writer rotated, the
    // administrator's key handed over to its version 2.
    let mut ks2 = ks.clone();
    ks2.rotate_scope(&admin, &alice).unwrap();
    ks2.rotate_scope(&admin, &alice).unwrap();
    ks2.rotate_writer(
        &admin,
        &agent,
        &UserName::new("agent2").unwrap(),
        user(&WRITER2).verifying_key(),
        41,
    )
    .unwrap();
    let admin2 = ks2.rotate_admin(self::admin()).unwrap();
    let v2 = ks2.to_signed_bytes(&admin2).unwrap();
    vectors.push(vector(
        &dir,
        "keyset-v2-ok.json",
        &v2,
        json!({"kind": "keyset", "expect": "ok", "version": 2, "serial": ks2.serial(),
               "admin_key_version": 2, "scopes": {"default": [1], "alice": [1, 2, 3]},
               "writers": {"agent2": "writer2"}, "retired_writers": {"agent": ["writer", 41]}}),
    ));
    let key3 = public_key_hex(&admin.scope_at(&alice, 3).public_key());
    let other = public_key_hex(&admin.scope_at(&alice, 4).public_key());
    vectors.push(vector(
        &dir,
        "keyset-v2-edited.json",
        &edit(&v2, &key3, &other),
        json!({"kind": "keyset", "expect": "refused",
               "note": "alice's current key replaced by another valid key after signing"}),
    ));

    // A user's public key file.
    let alice_user = UserName::new("alice").unwrap();
    let public = UserPublic::from_secret(alice_user, &user(&USER));
    let bytes = public.to_signed_bytes(&user(&USER)).unwrap();
    vectors.push(vector(
        &dir,
        "user-ok.pub",
        &bytes,
        json!({"kind": "user", "expect": "ok", "seed": "user", "user": "alice"}),
    ));
    vectors.push(vector(
        &dir,
        "user-renamed.pub",
        &edit(&bytes, "\"name\": \"alice\"", "\"name\": \"mallory\""),
        json!({"kind": "user", "expect": "refused", "seed": "user",
               "note": "the name changed after signing"}),
    ));

    // A 2-of-3 delegation of alice's scope to alice, at a fixed time.
    let clock = FakeClock::at(1_700_000_000);
    let nodes: Vec<_> = NODES.iter().map(|n| user(n).public_key()).collect();
    let terms = DelegationTerms {
        threshold: 2,
        shares: 3,
        expires: Some("2030-01-01T00:00:00Z".into()),
    };
    let d = delegate(&admin, &ks, &alice, &public, &terms, &nodes, clock.as_ref()).unwrap();
    let record = d.record.to_bytes().to_vec();
    let on_v1 = |mut facts: Value| {
        facts["keyset"] = "keyset-v1-ok.json".into();
        facts
    };
    vectors.push(vector(
        &dir,
        "delegation-ok.json",
        &record,
        on_v1(
            json!({"kind": "delegation", "expect": "ok", "threshold": 2, "shares": 3,
                     "nodes": ["node1", "node2", "node3"], "user": "user"}),
        ),
    ));
    vectors.push(vector(
        &dir,
        "delegation-threshold-edited.json",
        &edit(&record, "\"threshold\": 2", "\"threshold\": 1"),
        on_v1(json!({"kind": "delegation", "expect": "refused",
                     "note": "m changed from 2 to 1 after signing"})),
    ));
    let grant = d.grants[0].to_signed_bytes(&admin).unwrap();
    vectors.push(vector(
        &dir,
        "grant-ok.json",
        &grant,
        on_v1(
            json!({"kind": "grant", "expect": "ok", "share": 1, "node": "node1",
                     "user": "user"}),
        ),
    ));
    vectors.push(vector(
        &dir,
        "grant-share-edited.json",
        &edit(&grant, "\"share\": 1", "\"share\": 2"),
        on_v1(json!({"kind": "grant", "expect": "refused",
                     "note": "share 1 changed to 2 after signing"})),
    ));
    let sealed = d.grants[1].seal_for_node(&admin).unwrap();
    vectors.push(vector(
        &dir,
        "sealed-grant-ok.json",
        &sealed,
        on_v1(
            json!({"kind": "sealed-grant", "expect": "ok", "node": "node2", "share": 2,
                     "user": "user"}),
        ),
    ));
    vectors.push(vector(
        &dir,
        "sealed-grant-other-node.json",
        &sealed,
        on_v1(
            json!({"kind": "sealed-grant", "expect": "refused", "node": "node3",
                     "note": "a share sealed for node 2, opened by node 3"}),
        ),
    ));
    let revocation = Revocation::new(&admin, &alice, &public, clock.as_ref())
        .to_signed_bytes(&admin)
        .unwrap();
    vectors.push(vector(
        &dir,
        "revocation-ok.json",
        &revocation,
        on_v1(json!({"kind": "revocation", "expect": "ok",
                     "revoked": "2023-11-14T22:13:20Z", "user": "user"})),
    ));
    vectors.push(vector(
        &dir,
        "revocation-user-edited.json",
        &edit(&revocation, "\"user\": \"alice\"", "\"user\": \"bob\""),
        on_v1(json!({"kind": "revocation", "expect": "refused",
                     "note": "the user changed after signing"})),
    ));

    let seeds: serde_json::Map<String, Value> = [
        ("root", &ROOT),
        ("user", &USER),
        ("writer", &WRITER),
        ("writer2", &WRITER2),
        ("node1", &NODES[0]),
        ("node2", &NODES[1]),
        ("node3", &NODES[2]),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_owned(), Value::from(hex::encode(s))))
    .collect();
    let index = json!({
        "format": "cbfs key vectors v1",
        "about": "Key derivation from fixed seeds, and the signed JSON documents of \
                  cbfs-core (docs/FORMAT.md, Key derivation and Signed documents). \
                  'ok' vectors must verify by the documented recipe and by cbfs-core; \
                  'refused' ones must fail both. Checked by core/tests/key_vectors.rs; \
                  made by core/examples/gen_key_vectors.rs.",
        "seeds": seeds,
        "vectors": vectors,
    });
    fs::write(
        dir.join("index-keys.json"),
        serde_json::to_string_pretty(&index).unwrap() + "\n",
    )
    .unwrap();
    println!(
        "wrote {} key vectors to {}",
        index["vectors"].as_array().unwrap().len(),
        dir.display()
    );
}
