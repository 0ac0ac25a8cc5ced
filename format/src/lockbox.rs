//! Lockboxes: a group key sealed with Umbral under a scope's public key.

use rand::{CryptoRng, RngCore};
use secrecy::SecretBox;
use sha2::{Digest, Sha256};
use umbral_pre::{
    Capsule, DefaultDeserialize, DefaultSerialize, PublicKey, SecretKey, VerifiedCapsuleFrag,
};

use crate::codec::{Dec, Enc};
use crate::error::{Error, ObjectKind};
use crate::ids::{GroupId, SegmentId};
use crate::kem::{self, OpeningKey, SealingKey};
use crate::keys::{GROUP_KEY_LEN, GroupKey};

const BRAND: &[u8; 8] = b"CBFSLOCK";
/// Version 1: no key version (the scope's original key, version 1).
pub(crate) const VERSION_1: u16 = 1;
/// Version 2: the scope key version follows the label.
pub(crate) const VERSION_2: u16 = 2;
/// Longest scope label, in bytes.
pub const MAX_SCOPE_LABEL_LEN: usize = 64;
const BINDING_DOMAIN: &[u8] = b"cbfs lockbox binding v1\0";
const BINDING_DOMAIN_V2: &[u8] = b"cbfs lockbox binding v2\0";
/// Sealed plaintext: the group key, then a hash binding the lockbox's header.
const SEALED_LEN: usize = GROUP_KEY_LEN + 32;
/// Umbral DEM ciphertext: 24-byte nonce, sealed plaintext, 16-byte tag.
const CIPHERTEXT_LEN: usize = 24 + SEALED_LEN + 16;

/// A group key sealed under a scope's Umbral public key, with the ids it belongs to.
///
/// Open it with the scope's secret key ([`open`](Self::open)), or with a user's
/// secret key and capsule fragments from delegation nodes
/// ([`open_reencrypted`](Self::open_reencrypted)).
#[derive(Clone, Debug, PartialEq)]
pub struct Lockbox {
    header: Header,
    capsule: Capsule,
    ciphertext: Box<[u8]>,
}

/// What a lockbox says it is: the scope and key version it is sealed
/// under, the group whose key it holds and the segment that group was made
/// for. The sealed binding hash covers all four.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    scope: String,
    /// 1 for a version 1 lockbox.
    key_version: u32,
    group: GroupId,
    segment: SegmentId,
}

impl Header {
    /// The header of a lockbox to seal: a label of 1 to 64 bytes, a key
    /// version from 1.
    fn new(
        scope: &str,
        key_version: u32,
        group: GroupId,
        segment: SegmentId,
    ) -> Result<Header, Error> {
        check_label(scope)?;
        if key_version == 0 {
            return Err(Error::InvalidInput {
                reason: "key versions start at 1".into(),
            });
        }
        Ok(Header {
            scope: scope.to_owned(),
            key_version,
            group,
            segment,
        })
    }

    /// The hash binding the sealed key to this header.
    fn binding(&self) -> [u8; 32] {
        binding(&self.scope, self.key_version, &self.group, &self.segment)
    }

    /// What a lockbox seals: the group key, then the binding.
    fn sealed(&self, key: &GroupKey) -> zeroize::Zeroizing<[u8; SEALED_LEN]> {
        let mut sealed = zeroize::Zeroizing::new([0u8; SEALED_LEN]);
        sealed[..GROUP_KEY_LEN].copy_from_slice(key.expose_secret());
        sealed[GROUP_KEY_LEN..].copy_from_slice(&self.binding());
        sealed
    }

    /// The scope label.
    pub fn scope(&self) -> &str {
        &self.scope
    }
    /// The scope key version it is sealed under (1 for the scope's
    /// original key, and for every version 1 lockbox).
    pub fn key_version(&self) -> u32 {
        self.key_version
    }
    /// The group whose key this lockbox holds.
    pub fn group_id(&self) -> GroupId {
        self.group
    }
    /// The segment the group was made for.
    pub fn segment_id(&self) -> SegmentId {
        self.segment
    }

    fn failure(&self, reason: &'static str) -> Error {
        Error::LockboxOpen {
            group: self.group,
            segment: self.segment,
            scope: self.scope.clone(),
            reason,
        }
    }

    /// The group key out of a lockbox's sealed bytes, once the binding
    /// hash after it matches the header.
    fn unseal(&self, plain: &[u8]) -> Result<GroupKey, Error> {
        if plain.len() != SEALED_LEN || plain[GROUP_KEY_LEN..] != self.binding() {
            return Err(self.failure("its header does not match the sealed contents (altered)"));
        }
        let key = SecretBox::init_with_mut(|k: &mut [u8; GROUP_KEY_LEN]| {
            k.copy_from_slice(&plain[..GROUP_KEY_LEN]);
        });
        Ok(GroupKey::new(self.group, key))
    }
}

fn binding(scope: &str, key_version: u32, group: &GroupId, segment: &SegmentId) -> [u8; 32] {
    let mut h = Sha256::new();
    if key_version <= 1 {
        h.update(BINDING_DOMAIN);
        h.update([scope.len() as u8]);
        h.update(scope.as_bytes());
    } else {
        h.update(BINDING_DOMAIN_V2);
        h.update([scope.len() as u8]);
        h.update(scope.as_bytes());
        h.update(key_version.to_be_bytes());
    }
    h.update(group.as_bytes());
    h.update(segment.as_bytes());
    h.finalize().into()
}

fn check_label(scope: &str) -> Result<(), Error> {
    if scope.is_empty() || scope.len() > MAX_SCOPE_LABEL_LEN {
        return Err(Error::InvalidInput {
            reason: format!("scope label must be 1 to {MAX_SCOPE_LABEL_LEN} bytes of UTF-8"),
        });
    }
    Ok(())
}

impl Lockbox {
    /// Makes a fresh group key (and group id) for `segment` and seals it for `scope`.
    pub fn seal(
        scope: &str,
        scope_pk: &PublicKey,
        segment: SegmentId,
    ) -> Result<(Lockbox, GroupKey), Error> {
        Self::seal_with_rng(&mut rand::rngs::OsRng, scope, scope_pk, segment)
    }

    /// [`seal`](Self::seal) with the given generator.
    pub fn seal_with_rng(
        rng: &mut (impl RngCore + CryptoRng),
        scope: &str,
        scope_pk: &PublicKey,
        segment: SegmentId,
    ) -> Result<(Lockbox, GroupKey), Error> {
        let key = GroupKey::generate_with_rng(rng);
        let lockbox = Self::seal_existing_with_rng(rng, scope, scope_pk, segment, &key)?;
        Ok((lockbox, key))
    }

    /// Makes a fresh group key for `segment` and seals it under key version
    /// `key_version` of `scope` (`scope_pk` is that version's public key).
    pub fn seal_at(
        scope: &str,
        key_version: u32,
        scope_pk: &PublicKey,
        segment: SegmentId,
    ) -> Result<(Lockbox, GroupKey), Error> {
        let key = GroupKey::generate_with_rng(&mut rand::rngs::OsRng);
        let lockbox = Self::seal_existing_at(scope, key_version, scope_pk, segment, &key)?;
        Ok((lockbox, key))
    }

    /// Seals an existing group key again, for example under a new scope key when the
    /// scope key is rotated. Segments are not touched.
    pub fn seal_existing(
        scope: &str,
        scope_pk: &PublicKey,
        segment: SegmentId,
        key: &GroupKey,
    ) -> Result<Lockbox, Error> {
        Self::seal_existing_with_rng(&mut rand::rngs::OsRng, scope, scope_pk, segment, key)
    }

    /// Seals an existing group key under key version `key_version` of
    /// `scope`: what `rotate-scope` does to every lockbox of the scope.
    pub fn seal_existing_at(
        scope: &str,
        key_version: u32,
        scope_pk: &PublicKey,
        segment: SegmentId,
        key: &GroupKey,
    ) -> Result<Lockbox, Error> {
        Self::seal_versioned(
            &mut rand::rngs::OsRng,
            scope,
            key_version,
            scope_pk,
            segment,
            key,
        )
    }

    /// [`seal_existing`](Self::seal_existing) with the given generator.
    pub fn seal_existing_with_rng(
        rng: &mut (impl RngCore + CryptoRng),
        scope: &str,
        scope_pk: &PublicKey,
        segment: SegmentId,
        key: &GroupKey,
    ) -> Result<Lockbox, Error> {
        Self::seal_versioned(rng, scope, 1, scope_pk, segment, key)
    }

    /// [`seal_existing_at`](Self::seal_existing_at) with the given generator.
    pub fn seal_versioned(
        rng: &mut (impl RngCore + CryptoRng),
        scope: &str,
        key_version: u32,
        scope_pk: &PublicKey,
        segment: SegmentId,
        key: &GroupKey,
    ) -> Result<Lockbox, Error> {
        let header = Header::new(scope, key_version, key.id(), segment)?;
        let (capsule, ciphertext) =
            umbral_pre::encrypt_with_rng(rng, scope_pk, &header.sealed(key)[..]).map_err(|e| {
                Error::InvalidInput {
                    reason: format!("Umbral encryption failed: {e}"),
                }
            })?;
        Ok(Lockbox {
            header,
            capsule,
            ciphertext,
        })
    }

    /// What it says it is: scope, key version, group and segment.
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// The scope label.
    pub fn scope(&self) -> &str {
        self.header.scope()
    }
    /// The scope key version it is sealed under (1 for the scope's
    /// original key, and for every version 1 lockbox).
    pub fn key_version(&self) -> u32 {
        self.header.key_version
    }
    /// The group whose key this lockbox holds.
    pub fn group_id(&self) -> GroupId {
        self.header.group
    }
    /// The segment the group was made for.
    pub fn segment_id(&self) -> SegmentId {
        self.header.segment
    }
    /// The Umbral capsule, for delegation nodes to re-encrypt.
    pub fn capsule(&self) -> &Capsule {
        &self.capsule
    }

    fn failure(&self, reason: &'static str) -> Error {
        self.header.failure(reason)
    }

    fn unseal(&self, plain: Box<[u8]>) -> Result<GroupKey, Error> {
        self.header.unseal(&zeroize::Zeroizing::new(plain))
    }

    /// Opens with the scope's secret key.
    pub fn open(&self, scope_sk: &SecretKey) -> Result<GroupKey, Error> {
        let plain = umbral_pre::decrypt_original(scope_sk, &self.capsule, &self.ciphertext)
            .map_err(|_| self.failure("wrong scope key, or the lockbox was altered"))?;
        self.unseal(plain)
    }

    /// Opens with a user's secret key, the delegating (scope) public key and verified
    /// capsule fragments from at least threshold-many delegation nodes.
    pub fn open_reencrypted(
        &self,
        receiving_sk: &SecretKey,
        delegating_pk: &PublicKey,
        cfrags: impl IntoIterator<Item = VerifiedCapsuleFrag>,
    ) -> Result<GroupKey, Error> {
        let plain = umbral_pre::decrypt_reencrypted(
            receiving_sk,
            delegating_pk,
            &self.capsule,
            cfrags,
            &self.ciphertext,
        )
        .map_err(|e| match e {
            umbral_pre::ReencryptionError::OnOpen(_) => {
                self.failure("the capsule fragments do not open it for this key")
            }
            umbral_pre::ReencryptionError::OnDecryption(_) => {
                self.failure("wrong key, or the lockbox was altered")
            }
        })?;
        self.unseal(plain)
    }

    /// The canonical bytes (see `docs/FORMAT.md`, "Lockbox").
    pub fn to_bytes(&self) -> Vec<u8> {
        let capsule = self
            .capsule
            .to_bytes()
            .expect("a capsule always serializes");
        encode(&self.header, &capsule, &self.ciphertext)
    }

    /// Parses strictly.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let p = Parts::parse(bytes)?;
        let capsule = Capsule::from_bytes(p.capsule)
            .map_err(|_| p.capsule_error("invalid Umbral capsule"))?;
        if capsule.to_bytes().ok().as_deref() != Some(p.capsule) {
            return Err(p.capsule_error("capsule is not in canonical form"));
        }
        Ok(Lockbox {
            header: p.header,
            capsule,
            ciphertext: p.ciphertext.into(),
        })
    }

    /// The bytes of a lockbox sealing `key` under key version `key_version`
    /// of `scope`, whose public key `scope_pk` is made ready to seal many
    /// ([`SealingKey`]): what [`seal_existing_at`](Self::seal_existing_at)
    /// and [`to_bytes`](Self::to_bytes) make, at a fraction of the cost. A
    /// rotation seals every lockbox of a scope this way.
    pub fn sealed_bytes(
        scope: &str,
        key_version: u32,
        scope_pk: &SealingKey,
        segment: SegmentId,
        key: &GroupKey,
    ) -> Result<Vec<u8>, Error> {
        let header = Header::new(scope, key_version, key.id(), segment)?;
        let (capsule, ciphertext) = kem::seal(
            &mut rand::rngs::OsRng,
            scope_pk.table(),
            &header.sealed(key)[..],
        );
        Ok(encode(&header, &capsule, &ciphertext))
    }
}

/// The canonical bytes of a lockbox from its parts.
fn encode(header: &Header, capsule: &[u8], ciphertext: &[u8]) -> Vec<u8> {
    let version = if header.key_version <= 1 {
        VERSION_1
    } else {
        VERSION_2
    };
    let mut e = Enc::with_brand(BRAND, version);
    e.bytes8(header.scope.as_bytes());
    if version == VERSION_2 {
        e.u32(header.key_version);
    }
    e.raw(header.group.as_bytes());
    e.raw(header.segment.as_bytes());
    e.bytes16(capsule);
    e.bytes16(ciphertext);
    e.into_vec()
}

/// A lockbox's fields as parsed, its capsule not yet decoded.
struct Parts<'a> {
    header: Header,
    capsule: &'a [u8],
    /// Where the capsule's length prefix is, for errors.
    capsule_at: usize,
    ciphertext: &'a [u8],
}

impl<'a> Parts<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        let (mut d, version) = Dec::brand(bytes, BRAND, ObjectKind::Lockbox)?;
        if version != VERSION_1 && version != VERSION_2 {
            return Err(Dec::unknown_version(ObjectKind::Lockbox, version));
        }
        let at = d.pos();
        let scope = std::str::from_utf8(d.bytes8()?)
            .map_err(|_| d.err_at(at, "scope label is not UTF-8"))?;
        check_label(scope).map_err(|_| d.err_at(at, "scope label length out of range"))?;
        let key_version = if version == VERSION_2 {
            let at = d.pos();
            let v = d.u32()?;
            // Version 1 of a key is written as a version 1 lockbox: one
            // spelling per lockbox.
            if v < 2 {
                return Err(d.err_at(at, format!("key version {v} in a version 2 lockbox")));
            }
            v
        } else {
            1
        };
        let group = GroupId::from_bytes(d.array()?);
        let segment = SegmentId::from_bytes(d.array()?);
        let capsule_at = d.pos();
        let capsule = d.bytes16()?;
        let at = d.pos();
        let ciphertext = d.bytes16()?;
        if ciphertext.len() != CIPHERTEXT_LEN {
            return Err(d.err_at(
                at,
                format!(
                    "ciphertext is {} bytes, not {CIPHERTEXT_LEN}",
                    ciphertext.len()
                ),
            ));
        }
        d.finish()?;
        Ok(Parts {
            header: Header {
                scope: scope.to_owned(),
                key_version,
                group,
                segment,
            },
            capsule,
            capsule_at,
            ciphertext,
        })
    }

    fn capsule_error(&self, reason: &str) -> Error {
        Error::Malformed {
            object: ObjectKind::Lockbox,
            offset: self.capsule_at as u64,
            reason: reason.into(),
        }
    }
}

/// A lockbox as stored, parsed as strictly as [`Lockbox::from_bytes`]
/// does, its capsule decoded and checked on the curve directly: what a
/// rotation opens with a scope's secret ([`StoredLockbox::open`]) at a
/// fraction of the cost of the general path.
pub struct StoredLockbox {
    header: Header,
    capsule: kem::Capsule,
    ciphertext: Box<[u8]>,
}

impl std::fmt::Debug for StoredLockbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredLockbox")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl StoredLockbox {
    /// Parses strictly: what [`Lockbox::from_bytes`] refuses, this refuses.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let p = Parts::parse(bytes)?;
        let capsule = kem::Capsule::decode(p.capsule)
            .ok_or_else(|| p.capsule_error("invalid Umbral capsule"))?;
        Ok(StoredLockbox {
            header: p.header,
            capsule,
            ciphertext: p.ciphertext.into(),
        })
    }

    /// Parses many lockboxes as [`from_bytes`](Self::from_bytes) parses
    /// each, and checks their capsules together ([`kem::check_all`]): the
    /// same results, one per input, at a fraction of the cost.
    pub fn from_many<'a>(all: impl IntoIterator<Item = &'a [u8]>) -> Vec<Result<Self, Error>> {
        let mut unchecked = Vec::new();
        let parts: Vec<Result<Parts<'a>, Error>> = all
            .into_iter()
            .map(|bytes| {
                let p = Parts::parse(bytes)?;
                let capsule = kem::Unchecked::decode(p.capsule)
                    .ok_or_else(|| p.capsule_error("invalid Umbral capsule"))?;
                unchecked.push(capsule);
                Ok(p)
            })
            .collect();
        let mut checked = kem::check_all(unchecked).into_iter();
        parts
            .into_iter()
            .map(|p| {
                let p = p?;
                let capsule = checked
                    .next()
                    .expect("one capsule per parsed lockbox")
                    .ok_or_else(|| p.capsule_error("invalid Umbral capsule"))?;
                Ok(StoredLockbox {
                    header: p.header,
                    capsule,
                    ciphertext: p.ciphertext.into(),
                })
            })
            .collect()
    }

    /// What it says it is: scope, key version, group and segment.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Opens with the scope's secret key (see [`Lockbox::open`]).
    pub fn open(&self, scope_sk: &OpeningKey) -> Result<GroupKey, Error> {
        let plain = self
            .capsule
            .open(scope_sk.scalar(), &self.ciphertext)
            .ok_or_else(|| {
                self.header
                    .failure("wrong scope key, or the lockbox was altered")
            })?;
        self.header.unseal(&plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use umbral_pre::{Signer, generate_kfrags, reencrypt};

    #[test]
    fn seal_open_and_bytes_round_trip() {
        let sk = SecretKey::random();
        let segment = SegmentId::random();
        let (lb, key) = Lockbox::seal("projects/x", &sk.public_key(), segment).unwrap();
        let bytes = lb.to_bytes();
        let back = Lockbox::from_bytes(&bytes).unwrap();
        assert_eq!(back, lb);
        assert_eq!(back.to_bytes(), bytes);
        let opened = back.open(&sk).unwrap();
        assert_eq!(opened.id(), key.id());
        assert_eq!(opened.expose_secret(), key.expose_secret());
        assert_eq!(back.segment_id(), segment);
        let err = back.open(&SecretKey::random()).unwrap_err();
        assert_eq!(err.code(), "lockbox_open");
    }

    #[test]
    fn delegated_open() {
        let scope_sk = SecretKey::random();
        let user_sk = SecretKey::random();
        let signer = Signer::new(SecretKey::random());
        let (lb, key) = Lockbox::seal("home", &scope_sk.public_key(), SegmentId::random()).unwrap();
        let kfrags = generate_kfrags(&scope_sk, &user_sk.public_key(), &signer, 2, 3, true, true);
        let cfrags: Vec<_> = kfrags
            .iter()
            .take(2)
            .map(|k| reencrypt(lb.capsule(), k.clone()))
            .collect();
        let opened = lb
            .open_reencrypted(&user_sk, &scope_sk.public_key(), cfrags.clone())
            .unwrap();
        assert_eq!(opened.expose_secret(), key.expose_secret());
        let err = lb
            .open_reencrypted(&SecretKey::random(), &scope_sk.public_key(), cfrags)
            .unwrap_err();
        assert_eq!(err.code(), "lockbox_open");
    }

    #[test]
    fn header_changes_are_caught_by_the_binding() {
        let sk = SecretKey::random();
        let (lb, _) = Lockbox::seal("s", &sk.public_key(), SegmentId::random()).unwrap();
        let mut bytes = lb.to_bytes();
        bytes[12] ^= 1; // first byte of the group id (brand 8, version 2, label 1+1)
        let moved = Lockbox::from_bytes(&bytes).unwrap();
        assert_eq!(moved.open(&sk).unwrap_err().code(), "lockbox_open");
        let long = "x".repeat(65);
        assert!(Lockbox::seal(&long, &sk.public_key(), SegmentId::random()).is_err());
    }

    #[test]
    fn key_versions_are_sealed_bound_and_round_trip() {
        let v1 = SecretKey::random();
        let v2 = SecretKey::random();
        let segment = SegmentId::random();
        let (old, key) = Lockbox::seal("proj", &v1.public_key(), segment).unwrap();
        assert_eq!(old.key_version(), 1);
        assert_eq!(
            old.to_bytes()[8..10],
            [0, 1],
            "version 1 bytes for key version 1"
        );
        let resealed =
            Lockbox::seal_existing_at("proj", 2, &v2.public_key(), segment, &key).unwrap();
        let bytes = resealed.to_bytes();
        assert_eq!(bytes[8..10], [0, 2]);
        let back = Lockbox::from_bytes(&bytes).unwrap();
        assert_eq!(back, resealed);
        assert_eq!(back.key_version(), 2);
        assert_eq!(back.group_id(), old.group_id());
        assert_eq!(back.open(&v2).unwrap().expose_secret(), key.expose_secret());
        assert_eq!(back.open(&v1).unwrap_err().code(), "lockbox_open");
        // The key version is bound: a header claiming another version does not open.
        let mut edited = bytes.clone();
        edited[8 + 2 + 1 + 4 + 3] ^= 1; // last byte of the u32 after "proj"
        let edited = Lockbox::from_bytes(&edited).unwrap();
        assert_eq!(edited.key_version(), 3);
        assert_eq!(edited.open(&v2).unwrap_err().code(), "lockbox_open");
        // Key version 1 is never spelled as a version 2 lockbox.
        let mut one = bytes.clone();
        one[8 + 2 + 1 + 4..8 + 2 + 1 + 4 + 4].copy_from_slice(&1u32.to_be_bytes());
        assert_eq!(Lockbox::from_bytes(&one).unwrap_err().code(), "malformed");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn round_trip(label in "\\PC{1,16}", seed in any::<u64>()) {
            prop_assume!(label.len() <= MAX_SCOPE_LABEL_LEN);
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
            let sk = SecretKey::random_with_rng(&mut rng);
            let segment = SegmentId::random_with_rng(&mut rng);
            let (lb, key) = Lockbox::seal_with_rng(&mut rng, &label, &sk.public_key(), segment).unwrap();
            let bytes = lb.to_bytes();
            let back = Lockbox::from_bytes(&bytes).unwrap();
            prop_assert_eq!(&back, &lb);
            prop_assert_eq!(back.to_bytes(), bytes);
            prop_assert_eq!(back.scope(), label.as_str());
            let opened = back.open(&sk).unwrap();
            prop_assert_eq!(opened.expose_secret(), key.expose_secret());
        }

        #[test]
        fn bit_flips_never_open_or_panic(at in any::<prop::sample::Index>(), bit in 0u8..8, label in "[a-z/]{1,64}") {
            let sk = SecretKey::random();
            let (lb, key) = Lockbox::seal(&label, &sk.public_key(), SegmentId::random()).unwrap();
            let mut bytes = lb.to_bytes();
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            if let Ok(parsed) = Lockbox::from_bytes(&bytes) {
                prop_assert_eq!(parsed.to_bytes(), bytes.clone());
                // The binding covers the label and ids; the DEM covers the rest.
                if let Ok(k) = parsed.open(&sk) {
                    prop_assert!(false, "flipped lockbox opened to group {} (sealed {})", k.id(), key.id());
                }
            }
            // The rotation's path refuses what the general path refuses.
            let stored = StoredLockbox::from_bytes(&bytes);
            prop_assert_eq!(stored.is_ok(), Lockbox::from_bytes(&bytes).is_ok());
            if let Ok(stored) = stored {
                prop_assert!(stored.open(&OpeningKey::new(&sk)).is_err());
            }
        }
    }

    #[test]
    fn many_parse_together_as_each_alone() {
        let sk = SecretKey::random();
        let segment = SegmentId::random();
        let mut all: Vec<Vec<u8>> = (0..40)
            .map(|_| {
                Lockbox::seal("a", &sk.public_key(), segment)
                    .unwrap()
                    .0
                    .to_bytes()
            })
            .collect();
        // Good ones opened together.
        let together = StoredLockbox::from_many(all.iter().map(Vec::as_slice));
        assert!(together.iter().all(Result::is_ok));
        // A capsule that fails its check (a valid scalar, not its own), a
        // truncated lockbox and a flipped point, among good ones: exactly
        // those are refused, with the error each alone gets.
        let capsule_at = all[3].len() - 2 - CIPHERTEXT_LEN - 32;
        all[3][capsule_at..capsule_at + 32].copy_from_slice(&[1; 32]);
        all[17].truncate(50);
        let point_at = all[30].len() - 2 - CIPHERTEXT_LEN - 2 - 105 + 10;
        all[30][point_at] ^= 4;
        let together = StoredLockbox::from_many(all.iter().map(Vec::as_slice));
        for (i, (t, bytes)) in together.iter().zip(&all).enumerate() {
            let alone = StoredLockbox::from_bytes(bytes);
            assert_eq!(t.is_ok(), alone.is_ok(), "lockbox {i}");
            assert_eq!(
                Lockbox::from_bytes(bytes).is_ok(),
                alone.is_ok(),
                "lockbox {i}"
            );
            if let (Err(a), Err(b)) = (t, &alone) {
                assert_eq!(a.to_string(), b.to_string());
            }
            assert_eq!(t.is_err(), [3, 17, 30].contains(&i), "lockbox {i}");
        }
        assert!(StoredLockbox::from_many([]).is_empty());
    }

    #[test]
    fn the_rotations_path_opens_and_seals_as_the_general_one() {
        let old = SecretKey::random();
        let new = SecretKey::random();
        let sealing = SealingKey::new(&new.public_key());
        let segment = SegmentId::random();
        for (label, version) in [("a", 1), ("team/x", 3)] {
            let (lb, key) = Lockbox::seal_at(label, version, &old.public_key(), segment).unwrap();
            let stored = StoredLockbox::from_bytes(&lb.to_bytes()).unwrap();
            let h = stored.header();
            assert_eq!(
                (h.scope(), h.key_version(), h.group_id(), h.segment_id()),
                (label, version, key.id(), segment)
            );
            assert_eq!(h, lb.header());
            let opened = stored.open(&OpeningKey::new(&old)).unwrap();
            assert_eq!(opened.expose_secret(), key.expose_secret());
            let wrong = stored.open(&OpeningKey::new(&new)).unwrap_err().to_string();
            assert!(wrong.contains(&key.id().to_string()), "{wrong}");
            // Sealed again under the next version: the general path reads it
            // (umbral-pre checks its capsule) and opens it with the new key.
            let bytes =
                Lockbox::sealed_bytes(label, version + 1, &sealing, segment, &opened).unwrap();
            let again = Lockbox::from_bytes(&bytes).unwrap();
            assert_eq!(again.to_bytes(), bytes);
            assert_eq!(again.key_version(), version + 1);
            assert_eq!(
                again.open(&new).unwrap().expose_secret(),
                key.expose_secret()
            );
            assert!(again.open(&old).is_err());
        }
        // The binding still holds: a header naming another version does not open.
        let (lb, _) = Lockbox::seal_at("a", 2, &old.public_key(), segment).unwrap();
        let mut bytes = lb.to_bytes();
        let at = bytes
            .windows(4)
            .position(|w| w == 2u32.to_be_bytes())
            .unwrap();
        bytes[at..at + 4].copy_from_slice(&5u32.to_be_bytes());
        let stored = StoredLockbox::from_bytes(&bytes).unwrap();
        let e = stored.open(&OpeningKey::new(&old)).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
    }
}
