//! Checks the key vectors in `format/vectors/index-keys.json` twice: by the
//! recipe `docs/FORMAT.md` writes down (HKDF, SHA-256 and the scalar
//! reduction done here; each document's signed message rebuilt here from
//! its documented field order and checked with umbral-pre's ECDSA alone),
//! and by cbfs-core's own derivation and parsers. A vector that passes one
//! and not the other means the document and the code have drifted apart.
#![cfg(feature = "secrets")]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cbfs_core::umbral_pre::{
    self, Capsule, DefaultDeserialize, KeyFrag, PublicKey, SecretKeyFactory, Signature,
};
use cbfs_core::{
    AdminSecret, DelegationRecord, Grant, Keyset, Revocation, ScopeLabel, SealedGrant, Seed,
    UserPublic, UserSecret, public_key_from_hex, public_key_hex,
};
use hkdf::Hkdf;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../format/vectors")
}

fn index() -> Value {
    serde_json::from_slice(&fs::read(dir().join("index-keys.json")).expect("index-keys.json"))
        .unwrap()
}

fn seeds(index: &Value) -> BTreeMap<String, [u8; 32]> {
    index["seeds"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(n, s)| {
            let bytes = hex::decode(s.as_str().unwrap()).unwrap();
            (n.clone(), bytes.try_into().unwrap())
        })
        .collect()
}

fn s<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {}", v["name"]))
}

// --- The derivation, as docs/FORMAT.md ("Key derivation") writes it ---

/// The order n of secp256k1, minus one, big-endian.
const ORDER_MINUS_ONE: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
    0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x40,
];

/// `(d mod (n - 1)) + 1` for a 256-bit big-endian `d` (one subtraction
/// suffices: d < 2^256 < 2(n - 1)).
fn reduce_nonzero(mut d: [u8; 32]) -> [u8; 32] {
    if d >= ORDER_MINUS_ONE {
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let x = i16::from(d[i]) - i16::from(ORDER_MINUS_ONE[i]) - borrow;
            borrow = i16::from(x < 0);
            d[i] = (x + 256 * borrow) as u8;
        }
    }
    for i in (0..32).rev() {
        let (sum, carry) = d[i].overflowing_add(1);
        d[i] = sum;
        if !carry {
            break;
        }
    }
    d
}

fn hkdf64(seed: &[u8; 32], info: &[u8]) -> [u8; 64] {
    let mut okm = [0u8; 64];
    Hkdf::<Sha256>::new(None, seed)
        .expand(info, &mut okm)
        .unwrap();
    okm
}

/// `make_key(label)`: HKDF-SHA-256(salt none, ikm seed, info
/// "KEY_DERIVATION/" || label) to 64 bytes, then the scalar of
/// SHA-256(u32 len(info) || info || those 64 bytes).
fn make_key(seed: &[u8; 32], label: &str) -> [u8; 32] {
    let info = [b"KEY_DERIVATION/".as_slice(), label.as_bytes()].concat();
    let okm = hkdf64(seed, &info);
    let mut h = Sha256::new();
    h.update((info.len() as u32).to_be_bytes());
    h.update(&info);
    h.update(okm);
    reduce_nonzero(h.finalize().into())
}

/// `make_secret(label)`: the first 32 of the 64 bytes of HKDF-SHA-256(salt
/// none, ikm seed, info "SECRET_DERIVATION/" || label).
fn make_secret_32(seed: &[u8; 32], label: &str) -> [u8; 32] {
    let info = [b"SECRET_DERIVATION/".as_slice(), label.as_bytes()].concat();
    hkdf64(seed, &info)[..32].try_into().unwrap()
}

fn versioned(base: &str, version: u32) -> String {
    if version == 1 {
        base.to_owned()
    } else {
        format!("{base}/v{version}")
    }
}

fn scalar_hex(key: &umbral_pre::SecretKey) -> String {
    hex::encode(key.to_be_bytes().as_secret())
}

fn copy(seed: &[u8; 32]) -> Seed {
    Seed::from_slice(seed, "vector").unwrap()
}

fn check_derive(seeds: &BTreeMap<String, [u8; 32]>, v: &Value) {
    let name = s(v, "name");
    let seed = &seeds[s(v, "seed")];
    let label = s(v, "label");
    let scalar = hex::encode(make_key(seed, label));
    assert_eq!(
        scalar,
        s(v, "secret_scalar"),
        "{name}: the documented recipe"
    );
    let factory = SecretKeyFactory::from_secure_randomness(seed).unwrap();
    let key = factory.make_key(label.as_bytes());
    assert_eq!(scalar_hex(&key), scalar, "{name}: umbral-pre make_key");
    let public = public_key_hex(&key.public_key());
    assert_eq!(public, s(v, "public_key"), "{name}");
    // The label is the one the hierarchy names, and cbfs-core derives that key.
    let core = match s(v, "role") {
        "admin-sign" => {
            let version = v["key_version"].as_u64().unwrap() as u32;
            assert_eq!(label, versioned("cbfs/v1/admin/sign", version));
            AdminSecret::from_seed(copy(seed)).verifying_key_at(version)
        }
        "user-encrypt" => {
            assert_eq!(label, "cbfs/v1/user/encrypt");
            let user = UserSecret::from_seed(copy(seed));
            assert_eq!(scalar_hex(&user.secret_key()), scalar);
            user.public_key()
        }
        "user-sign" => {
            assert_eq!(label, "cbfs/v1/user/sign");
            UserSecret::from_seed(copy(seed)).verifying_key()
        }
        other => panic!("{name}: unknown role {other}"),
    };
    assert_eq!(public_key_hex(&core), public, "{name}: cbfs-core");
}

fn check_derive_scope(seeds: &BTreeMap<String, [u8; 32]>, v: &Value) {
    let name = s(v, "name");
    let root = &seeds[s(v, "seed")];
    let scope = s(v, "scope");
    let version = v["key_version"].as_u64().unwrap() as u32;
    let label = versioned(&format!("cbfs/v1/scope/{scope}"), version);
    assert_eq!(label, s(v, "secret_label"), "{name}");
    assert_eq!(s(v, "key_label"), "cbfs/v1/scope/key");
    let scope_seed = make_secret_32(root, &label);
    assert_eq!(hex::encode(scope_seed), s(v, "scope_seed"), "{name}");
    let factory = SecretKeyFactory::from_secure_randomness(root).unwrap();
    assert_eq!(
        factory.make_secret(label.as_bytes()).as_secret()[..32],
        scope_seed
    );
    let scalar = hex::encode(make_key(&scope_seed, "cbfs/v1/scope/key"));
    assert_eq!(
        scalar,
        s(v, "secret_scalar"),
        "{name}: the documented recipe"
    );
    let core =
        AdminSecret::from_seed(copy(root)).scope_at(&ScopeLabel::new(scope).unwrap(), version);
    assert_eq!(core.seed().expose_secret_bytes(), &scope_seed, "{name}");
    assert_eq!(scalar_hex(core.secret_key()), scalar, "{name}: cbfs-core");
    assert_eq!(
        public_key_hex(&core.public_key()),
        s(v, "public_key"),
        "{name}"
    );
}

// --- Signed documents, as docs/FORMAT.md ("Signed JSON documents") writes them ---

type Ser<'a> = &'a dyn Fn(&Value) -> String;

/// A string, number, `null` or array of strings: serde_json's compact form.
fn plain(v: &Value) -> String {
    serde_json::to_string(v).unwrap()
}

/// An object's fields in the documented order, compact; no field may be
/// unknown, and absent ones (optional, skipped when empty) are left out.
fn fields(v: &Value, order: &[(&str, Ser)]) -> String {
    let obj = v.as_object().expect("an object");
    for k in obj.keys() {
        assert!(
            order.iter().any(|(n, _)| *n == k.as_str()),
            "unknown field {k}"
        );
    }
    let parts: Vec<String> = order
        .iter()
        .filter_map(|(n, ser)| {
            obj.get(*n)
                .map(|x| format!("{}:{}", plain(&(*n).into()), ser(x)))
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// A map: entries sorted by key, bytewise.
fn sorted(v: &Value, ser: Ser) -> String {
    let obj = v.as_object().expect("a map");
    let mut keys: Vec<&String> = obj.keys().collect();
    keys.sort();
    let parts: Vec<String> = keys
        .iter()
        .map(|k| format!("{}:{}", plain(&(*k).as_str().into()), ser(&obj[*k])))
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// An object whose fields are all strings, numbers, `null` or lists of strings.
fn flat(v: &Value, order: &[&str]) -> String {
    let order: Vec<(&str, Ser)> = order.iter().map(|n| (*n, &plain as Ser)).collect();
    fields(v, &order)
}

fn list(v: &Value, ser: Ser) -> String {
    let parts: Vec<String> = v.as_array().expect("a list").iter().map(ser).collect();
    format!("[{}]", parts.join(","))
}

/// The file's JSON object without its `signature`, and the signature.
fn split(bytes: &[u8]) -> (Value, Signature) {
    let mut doc: Value = serde_json::from_slice(bytes).unwrap();
    let sig = doc.as_object_mut().unwrap().remove("signature").unwrap();
    let der = hex::decode(sig.as_str().unwrap()).unwrap();
    (doc, Signature::try_from_der_bytes(&der).unwrap())
}

/// Whether `key` signed `domain || 0x00 || compact body`.
fn verifies(domain: &str, body: &str, signature: &Signature, key: &PublicKey) -> bool {
    let msg = [domain.as_bytes(), b"\0", body.as_bytes()].concat();
    signature.verify(key, &msg)
}

fn key_at(v: &Value) -> PublicKey {
    public_key_from_hex(v.as_str().unwrap()).unwrap()
}

fn keyset_body(doc: &Value) -> (String, String) {
    let version = doc["version"].as_u64().unwrap();
    let retired_key = |r: &Value| flat(r, &["version", "key"]);
    let scope_v2 = |sc: &Value| {
        let retired = |l: &Value| list(l, &retired_key);
        fields(
            sc,
            &[("version", &plain), ("key", &plain), ("retired", &retired)],
        )
    };
    let retired_writer = |w: &Value| flat(w, &["key", "retired", "last_sequence"]);
    let handover = |h: &Value| {
        let order = [
            "from",
            "from_key_version",
            "to",
            "to_key_version",
            "serial",
            "signature",
        ];
        flat(h, &order)
    };
    let plain_map = |m: &Value| sorted(m, &plain);
    let scopes_v2 = |m: &Value| sorted(m, &scope_v2);
    let retired_writers = |m: &Value| sorted(m, &retired_writer);
    let handovers = |l: &Value| list(l, &handover);
    // Both versions start alike; version 2 adds the key version and the
    // rotation's fields, and its scopes are objects.
    let head = [
        "format",
        "version",
        "fs",
        "serial",
        "updated",
        "admin_verifying_key",
    ];
    let mut order: Vec<(&str, Ser)> = head.iter().map(|n| (*n, &plain as Ser)).collect();
    if version == 1 {
        let rest: [(&str, Ser); 2] = [("scopes", &plain_map), ("writers", &plain_map)];
        order.extend(rest);
    } else {
        let rest: [(&str, Ser); 5] = [
            ("admin_key_version", &plain),
            ("scopes", &scopes_v2),
            ("writers", &plain_map),
            ("retired_writers", &retired_writers),
            ("handovers", &handovers),
        ];
        order.extend(rest);
    }
    (format!("cbfs-keyset/v{version}"), fields(doc, &order))
}

/// The keyset by the recipe: its signature, each hand-over's, and its keys
/// against the ones the root seed derives. Returns whether it verified.
fn keyset_by_recipe(seeds: &BTreeMap<String, [u8; 32]>, bytes: &[u8]) -> bool {
    let (doc, signature) = split(bytes);
    let (domain, body) = keyset_body(&doc);
    let admin = key_at(&doc["admin_verifying_key"]);
    let mut ok = verifies(&domain, &body, &signature, &admin);
    for h in doc["handovers"].as_array().into_iter().flatten() {
        // The statement: the hand-over's fields but its signature, with
        // the keyset's `fs` first.
        let mut h = h.clone();
        let sig = h.as_object_mut().unwrap().remove("signature").unwrap();
        h["fs"] = doc["fs"].clone();
        let statement = flat(
            &h,
            &[
                "fs",
                "from",
                "from_key_version",
                "to",
                "to_key_version",
                "serial",
            ],
        );
        let der = hex::decode(sig.as_str().unwrap()).unwrap();
        let sig = Signature::try_from_der_bytes(&der).unwrap();
        ok &= verifies(
            "cbfs-admin-handover/v1",
            &statement,
            &sig,
            &key_at(&h["from"]),
        );
    }
    // The administrator key is the root's signing key of the stated version.
    let root = &seeds["root"];
    let version = doc["admin_key_version"].as_u64().unwrap_or(1) as u32;
    let derived = SecretKeyFactory::from_secure_randomness(root)
        .unwrap()
        .make_key(versioned("cbfs/v1/admin/sign", version).as_bytes())
        .public_key();
    ok && derived == admin
}

fn check_keyset(seeds: &BTreeMap<String, [u8; 32]>, v: &Value, bytes: &[u8]) -> bool {
    let by_recipe = keyset_by_recipe(seeds, bytes);
    let Ok(ks) = Keyset::from_bytes(bytes, s(v, "name")) else {
        assert!(
            !by_recipe,
            "{}: the recipe accepts what cbfs-core refuses",
            v["name"]
        );
        return false;
    };
    assert!(
        by_recipe,
        "{}: cbfs-core accepts what the recipe refuses",
        v["name"]
    );
    let (doc, _) = split(bytes);
    assert_eq!(ks.serial(), v["serial"].as_u64().unwrap());
    assert_eq!(
        u64::from(ks.admin_key_version()),
        v["admin_key_version"].as_u64().unwrap()
    );
    // Every key version of every scope derives from the root.
    let root = AdminSecret::from_seed(copy(&seeds["root"]));
    for (scope, versions) in v["scopes"].as_object().unwrap() {
        let label = ScopeLabel::new(scope.as_str()).unwrap();
        let want: Vec<(u32, PublicKey)> = versions
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let n = n.as_u64().unwrap() as u32;
                (n, root.scope_at(&label, n).public_key())
            })
            .collect();
        assert_eq!(ks.scope_versions(&label), want, "{} {scope}", v["name"]);
    }
    assert_eq!(ks.scopes().len(), v["scopes"].as_object().unwrap().len());
    // The trusted writer keys are exactly the `writers` map.
    let writers: BTreeMap<String, String> = ks
        .writers()
        .iter()
        .map(|(n, k)| (n.to_string(), public_key_hex(k)))
        .collect();
    let in_file: BTreeMap<String, String> = doc["writers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(n, k)| (n.clone(), k.as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(writers, in_file);
    let derived: BTreeMap<String, String> = v["writers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(n, seed)| {
            let w = UserSecret::from_seed(copy(&seeds[seed.as_str().unwrap()]));
            (n.clone(), public_key_hex(&w.verifying_key()))
        })
        .collect();
    assert_eq!(writers, derived, "{}", v["name"]);
    for (n, r) in v["retired_writers"].as_object().unwrap() {
        let w = UserSecret::from_seed(copy(&seeds[r[0].as_str().unwrap()]));
        let got = &ks.retired_writers()[&cbfs_core::UserName::new(n.as_str()).unwrap()];
        assert_eq!(got.key, w.verifying_key());
        assert_eq!(got.last_sequence, r[1].as_u64().unwrap());
    }
    true
}

fn check_user(seeds: &BTreeMap<String, [u8; 32]>, v: &Value, bytes: &[u8]) -> bool {
    let (doc, signature) = split(bytes);
    let body = flat(
        &doc,
        &[
            "format",
            "version",
            "name",
            "created",
            "public_key",
            "verifying_key",
        ],
    );
    let user = UserSecret::from_seed(copy(&seeds[s(v, "seed")]));
    let by_recipe = verifies("cbfs-user/v1", &body, &signature, &user.verifying_key())
        && key_at(&doc["public_key"]) == user.public_key()
        && key_at(&doc["verifying_key"]) == user.verifying_key();
    let by_core = UserPublic::from_bytes(bytes, s(v, "name")).is_ok();
    assert_eq!(by_recipe, by_core, "{}", v["name"]);
    by_core
}

/// A delegation record's body fields, in order.
const DELEGATION_FIELDS: [&str; 14] = [
    "format",
    "version",
    "fs",
    "scope",
    "user",
    "user_public_key",
    "user_verifying_key",
    "scope_public_key",
    "admin_verifying_key",
    "threshold",
    "shares",
    "issued",
    "expires",
    "nodes",
];

fn delegation_body(doc: &Value) -> String {
    flat(doc, &DELEGATION_FIELDS)
}

/// A grant's body: the delegation record's fields up to `shares`, then its own.
fn grant_body(doc: &Value) -> String {
    let mut order = DELEGATION_FIELDS[..11].to_vec();
    order.extend(["share", "issued", "expires", "kfrag", "node"]);
    flat(doc, &order)
}

/// A signed grant by the recipe: the signature, then the kfrag against the
/// administrator, scope and user keys the grant names.
fn grant_by_recipe(bytes: &[u8], admin: &PublicKey) -> bool {
    let (doc, signature) = split(bytes);
    if !verifies("cbfs-grant/v1", &grant_body(&doc), &signature, admin) {
        return false;
    }
    let kfrag = KeyFrag::from_bytes(&B64.decode(s(&doc, "kfrag")).unwrap()).unwrap();
    kfrag
        .verify(
            admin,
            Some(&key_at(&doc["scope_public_key"])),
            Some(&key_at(&doc["user_public_key"])),
        )
        .is_ok()
}

fn keyset_of(v: &Value) -> Keyset {
    let file = s(v, "keyset");
    Keyset::from_bytes(&fs::read(dir().join(file)).unwrap(), file).unwrap()
}

fn check_delegation(seeds: &BTreeMap<String, [u8; 32]>, v: &Value, bytes: &[u8]) -> bool {
    let ks = keyset_of(v);
    let admin = ks.admin_verifying_key();
    let (doc, signature) = split(bytes);
    let by_recipe = verifies(
        "cbfs-delegation/v1",
        &delegation_body(&doc),
        &signature,
        admin,
    );
    let by_core = DelegationRecord::from_bytes(bytes, s(v, "name"), admin);
    assert_eq!(by_recipe, by_core.is_ok(), "{}", v["name"]);
    let Ok(record) = by_core else { return false };
    assert_eq!(
        u64::from(record.threshold()),
        v["threshold"].as_u64().unwrap()
    );
    assert_eq!(u64::from(record.shares()), v["shares"].as_u64().unwrap());
    let nodes: Vec<PublicKey> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| UserSecret::from_seed(copy(&seeds[n.as_str().unwrap()])).public_key())
        .collect();
    assert_eq!(record.nodes(), &nodes[..]);
    let user = UserSecret::from_seed(copy(&seeds[s(v, "user")]));
    assert_eq!(record.user_public_key(), &user.public_key());
    assert_eq!(
        Some(record.scope_public_key()),
        ks.scope(record.scope()),
        "the record names the scope's current key"
    );
    true
}

fn check_grant(seeds: &BTreeMap<String, [u8; 32]>, v: &Value, bytes: &[u8]) -> bool {
    let ks = keyset_of(v);
    let admin = ks.admin_verifying_key();
    let by_recipe = grant_by_recipe(bytes, admin);
    let by_core = Grant::from_bytes(bytes, s(v, "name"), admin);
    assert_eq!(by_recipe, by_core.is_ok(), "{}", v["name"]);
    let Ok(grant) = by_core else { return false };
    assert_eq!(u64::from(grant.share()), v["share"].as_u64().unwrap());
    let node = UserSecret::from_seed(copy(&seeds[s(v, "node")])).public_key();
    assert_eq!(grant.node(), Some(&node));
    true
}

fn check_sealed_grant(seeds: &BTreeMap<String, [u8; 32]>, v: &Value, bytes: &[u8]) -> bool {
    let ks = keyset_of(v);
    let admin = ks.admin_verifying_key();
    let node = UserSecret::from_seed(copy(&seeds[s(v, "node")]));
    // The recipe: the compact JSON object, Umbral `decrypt_original` with
    // the node's encryption key, a signed grant inside bound to that node.
    let doc: Value = serde_json::from_slice(bytes).unwrap();
    let canonical = flat(
        &doc,
        &["format", "version", "node", "capsule", "ciphertext"],
    );
    assert_eq!(
        canonical.as_bytes(),
        bytes,
        "a sealed grant is its compact JSON"
    );
    let capsule = Capsule::from_bytes(&B64.decode(s(&doc, "capsule")).unwrap()).unwrap();
    let ct = B64.decode(s(&doc, "ciphertext")).unwrap();
    let by_recipe = match umbral_pre::decrypt_original(&node.secret_key(), &capsule, &ct) {
        Ok(signed) => {
            let (inner, _) = split(&signed);
            grant_by_recipe(&signed, admin)
                && key_at(&inner["node"]) == node.public_key()
                && key_at(&doc["node"]) == node.public_key()
        }
        Err(_) => false,
    };
    let sealed = SealedGrant::from_bytes(bytes, s(v, "name")).unwrap();
    let by_core = sealed.open(&node.secret_key(), admin, s(v, "name"));
    assert_eq!(by_recipe, by_core.is_ok(), "{}", v["name"]);
    let Ok(grant) = by_core else { return false };
    assert_eq!(u64::from(grant.share()), v["share"].as_u64().unwrap());
    true
}

fn check_revocation(v: &Value, bytes: &[u8]) -> bool {
    let ks = keyset_of(v);
    let admin = ks.admin_verifying_key();
    let (doc, signature) = split(bytes);
    let body = flat(
        &doc,
        &[
            "format",
            "version",
            "scope",
            "user",
            "user_public_key",
            "admin_verifying_key",
            "revoked",
        ],
    );
    let by_recipe = verifies("cbfs-revocation/v1", &body, &signature, admin);
    let by_core = Revocation::from_bytes(bytes, s(v, "name"), admin);
    assert_eq!(by_recipe, by_core.is_ok(), "{}", v["name"]);
    let Ok(r) = by_core else { return false };
    assert_eq!(r.revoked(), s(v, "revoked"));
    true
}

#[test]
fn key_vectors_give_their_stated_outcome() {
    let index = index();
    assert_eq!(index["format"], "cbfs key vectors v1");
    let seeds = seeds(&index);
    let vectors = index["vectors"].as_array().unwrap();
    let mut kinds = BTreeMap::new();
    for v in vectors {
        let name = s(v, "name");
        let kind = s(v, "kind");
        let expect = s(v, "expect");
        *kinds
            .entry((kind.to_owned(), expect.to_owned()))
            .or_insert(0) += 1;
        let file = || fs::read(dir().join(s(v, "file"))).unwrap();
        let ok = match kind {
            "derive" => {
                check_derive(&seeds, v);
                true
            }
            "derive-scope" => {
                check_derive_scope(&seeds, v);
                true
            }
            "keyset" => check_keyset(&seeds, v, &file()),
            "user" => check_user(&seeds, v, &file()),
            "delegation" => check_delegation(&seeds, v, &file()),
            "grant" => check_grant(&seeds, v, &file()),
            "sealed-grant" => check_sealed_grant(&seeds, v, &file()),
            "revocation" => check_revocation(v, &file()),
            other => panic!("{name}: unknown kind {other}"),
        };
        let outcome = if ok { "ok" } else { "refused" };
        assert_eq!(outcome, expect, "{name}");
    }
    // Every document kind has a vector that verifies and one that must not.
    for kind in [
        "keyset",
        "user",
        "delegation",
        "grant",
        "sealed-grant",
        "revocation",
    ] {
        for expect in ["ok", "refused"] {
            assert!(
                kinds.contains_key(&(kind.to_owned(), expect.to_owned())),
                "no {expect} vector of kind {kind}"
            );
        }
    }
    assert!(kinds.contains_key(&("derive-scope".to_owned(), "ok".to_owned())));
}

#[test]
fn scalar_reduction_matches_the_definition() {
    // Below n - 1: unchanged, plus one.
    let mut one = [0u8; 32];
    one[31] = 1;
    assert_eq!(reduce_nonzero([0u8; 32]), one);
    // n - 1 itself reduces to 0, plus one.
    assert_eq!(reduce_nonzero(ORDER_MINUS_ONE), one);
    // 2^256 - 1 reduces to 2^256 - 1 - (n - 1), plus one.
    let top = reduce_nonzero([0xff; 32]);
    let mut want = [0u8; 32];
    // 2^256 - n = 0x014551231950b75fc4402da1732fc9bebf, plus one.
    let tail = hex::decode("014551231950b75fc4402da1732fc9bec0").unwrap();
    want[15..].copy_from_slice(&tail);
    assert_eq!(top, want);
}
