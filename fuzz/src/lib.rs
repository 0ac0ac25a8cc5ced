//! Fixed keys and objects that the fuzz targets (`fuzz_targets/`) and the
//! seed builder (`examples/seeds.rs`) share.
//!
//! Every key comes from a fixed seed, so the seeds a builder run signs or
//! seals verify in every later fuzzing run: the keys of the committed test
//! vectors (`format/vectors/index.json`) for the store's objects, and seeds
//! of this crate's own for keysets, grants, delegation records and node
//! answers.

#![forbid(unsafe_code)]

use std::sync::{Arc, OnceLock};

use cbfs_core::umbral_pre::{Capsule, PublicKey, SecretKey, SecretKeyFactory, Signer};
use cbfs_core::{
    AdminSecret, FakeClock, FsName, Keyset, ScopeLabel, Seed, UserName, UserPublic, UserSecret,
};
use cbfs_format::{
    GroupId, GroupKey, Keyring, Lockbox, Manifest, ManifestBuilder, ManifestEntry, MemberId,
    SegmentId, SnapshotId,
};
use rand::SeedableRng;
use serde_json::Value;

/// The committed test vectors' index.
pub const VECTORS_INDEX: &str = include_str!("../../format/vectors/index.json");

/// The keys of the committed test vectors.
pub struct Vectors {
    /// The scope key their lockboxes are sealed for.
    pub scope: SecretKey,
    /// The user key their capsule fragments re-encrypt to.
    pub user: SecretKey,
    /// The writer that signed their manifests.
    pub writer: Signer,
    /// The group keys of their members (`g1`, `g2`).
    pub keyring: Keyring,
}

/// The keys of `format/vectors/index.json`.
pub fn vectors() -> &'static Vectors {
    static V: OnceLock<Vectors> = OnceLock::new();
    V.get_or_init(|| {
        let index: Value = serde_json::from_str(VECTORS_INDEX).expect("the index is JSON");
        let k = &index["keys"];
        let seed = hex::decode(k["umbral_factory_seed"].as_str().expect("a seed")).expect("hex");
        let factory = SecretKeyFactory::from_secure_randomness(&seed).expect("a 32-byte seed");
        let key = |name: &str| factory.make_key(k[name].as_str().expect("a label").as_bytes());
        let mut keyring = Keyring::new();
        for name in ["g1", "g2"] {
            let g = &k["groups"][name];
            let id: GroupId = g["id"]
                .as_str()
                .expect("an id")
                .parse()
                .expect("a group id");
            let bytes: [u8; 32] = hex::decode(g["key"].as_str().expect("a key"))
                .expect("hex")
                .try_into()
                .expect("32 bytes");
            keyring.insert(GroupKey::new(id, secrecy::SecretBox::new(Box::new(bytes))));
        }
        Vectors {
            scope: key("scope_label"),
            user: key("user_label"),
            writer: Signer::new(key("writer_label")),
            keyring,
        }
    })
}

/// The time every fixed clock of the targets shows.
pub const NOW: i64 = 1_700_000_000;

/// The administrator, user and node of the key documents and node answers.
pub struct Parties {
    /// The administrator (root secret from a fixed seed).
    pub admin: AdminSecret,
    /// The file system.
    pub fs: FsName,
    /// The delegated scope.
    pub scope: ScopeLabel,
    /// The user the scope is delegated to.
    pub user: UserSecret,
    /// The user's name.
    pub user_name: UserName,
    /// The user's public document.
    pub user_public: UserPublic,
    /// The delegation nodes' keys (three).
    pub nodes: Vec<UserSecret>,
    /// The keyset: scopes `default` and [`Parties::scope`].
    pub keyset: Keyset,
    /// A capsule sealed for the scope (a lockbox's), deterministic.
    pub capsule: Capsule,
    /// A clock standing at [`NOW`].
    pub clock: Arc<FakeClock>,
}

fn seed(byte: u8) -> Seed {
    Seed::from_slice(&[byte; 32], "a fixed fuzzing seed").expect("32 bytes")
}

/// The fixed parties.
pub fn parties() -> &'static Parties {
    static P: OnceLock<Parties> = OnceLock::new();
    P.get_or_init(|| {
        let admin = AdminSecret::from_seed(seed(0xa1));
        let fs = FsName::new("fuzzfs").expect("a name");
        let scope = ScopeLabel::new("proj").expect("a label");
        let mut keyset = Keyset::new(fs.clone(), &admin);
        keyset
            .add_scope(&admin, &scope)
            .expect("the admin's keyset");
        let user = UserSecret::from_seed(seed(0xb2));
        let user_name = UserName::new("alice").expect("a name");
        let user_public = UserPublic::from_secret(user_name.clone(), &user);
        let nodes = (0..3u8)
            .map(|i| UserSecret::from_seed(seed(0xc0 + i)))
            .collect();
        let scope_pk = admin.scope(&scope).public_key();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (lockbox, _) =
            Lockbox::seal_with_rng(&mut rng, "proj", &scope_pk, SegmentId::from_bytes([7; 16]))
                .expect("sealing");
        Parties {
            admin,
            fs,
            scope,
            user,
            user_name,
            user_public,
            nodes,
            keyset,
            capsule: lockbox.capsule().clone(),
            clock: FakeClock::at(NOW),
        }
    })
}

/// The full manifest that delta manifests are read against: sequence 1,
/// 24 members of two segments (two of them packs), by the vectors' writer.
pub fn delta_base() -> &'static Manifest {
    static M: OnceLock<Manifest> = OnceLock::new();
    M.get_or_init(|| {
        let mut b = ManifestBuilder::new(SnapshotId::from_bytes([0x51; 16]), 1, None, NOW);
        b.extend(base_entries());
        b.sign(&vectors().writer).expect("signing")
    })
}

/// The entries of [`delta_base`].
pub fn base_entries() -> Vec<ManifestEntry> {
    (0..24u8)
        .map(|i| {
            let mut e = ManifestEntry::single(
                SegmentId::from_bytes([1 + i / 12; 16]),
                MemberId::from_bytes([i + 1; 16]),
                [i; 32],
            );
            if i % 11 == 3 {
                e.slots = cbfs_format::Slots::from_bitmap(&[0b1011, 1]).expect("a bitmap");
            }
            e
        })
        .collect()
}

/// Where the writer key starts in a full or delta manifest: brand (8),
/// version (2), snapshot id (16), sequence (8), previous (32), created (8).
pub const WRITER_KEY_AT: usize = 74;
/// Where the previous manifest's hash starts.
pub const PREVIOUS_AT: usize = 34;
/// The length of a manifest's signature, its last bytes.
pub const SIGNATURE_LEN: usize = 64;

/// Signs a manifest object's body again with `signer`, as a writer would:
/// the signature replaces the last [`SIGNATURE_LEN`] bytes. Lets a fuzzer
/// reach what a reader checks after the signature.
pub fn resign(bytes: &mut [u8], signer: &Signer) {
    if bytes.len() < SIGNATURE_LEN {
        return;
    }
    let body = bytes.len() - SIGNATURE_LEN;
    let mut message = b"cbfs manifest signature v1\0".to_vec();
    message.extend_from_slice(&bytes[..body]);
    let signature = signer.sign(&message).to_be_bytes();
    bytes[body..].copy_from_slice(&signature);
}

/// Checks what every accepted manifest, full or delta, promises about its
/// entries: sorted and unique by (segment, member), under its Merkle root.
pub fn check_entries(m: &Manifest) {
    let entries = m.entries();
    assert!(
        entries
            .windows(2)
            .all(|w| (w[0].segment, w[0].member) < (w[1].segment, w[1].member)),
        "entries sorted and unique"
    );
    assert_eq!(&cbfs_format::merkle_root(entries), m.merkle_root());
}

/// The verifying key of the vectors' writer.
pub fn writer_key() -> PublicKey {
    vectors().writer.verifying_key()
}
