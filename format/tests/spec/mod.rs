//! The lockbox, its Umbral capsule and its DEM as `docs/FORMAT.md` writes
//! them ("Lockbox", "The capsule and the DEM"), from the curve arithmetic
//! up: nothing here calls cbfs-format or umbral-pre, so a vector checked
//! with it checks the document against the code.
//!
//! Shared by `tests/vectors.rs` and `examples/gen_vectors_spec.rs`.
#![allow(dead_code)]

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use k256::elliptic_curve::PrimeField;
use k256::elliptic_curve::ops::ReduceNonZero;
use k256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
use k256::{AffinePoint, EncodedPoint, FieldBytes, ProjectivePoint, Scalar, U256};
use sha2::{Digest, Sha256};

/// A lockbox's fields, read by the documented layout.
pub struct LockboxFields {
    pub version: u16,
    pub label: Vec<u8>,
    pub key_version: u32,
    pub group: [u8; 16],
    pub segment: [u8; 16],
    pub capsule: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Some(head)
}

/// `"CBFSLOCK" u16 version, bytes8 label, [u32 key version], group (16),
/// segment (16), bytes16 capsule, bytes16 ciphertext`, nothing after.
pub fn parse_lockbox(mut b: &[u8]) -> Option<LockboxFields> {
    if take(&mut b, 8)? != b"CBFSLOCK" {
        return None;
    }
    let version = u16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?);
    let n = usize::from(take(&mut b, 1)?[0]);
    let label = take(&mut b, n)?.to_vec();
    let key_version = match version {
        1 => 1,
        2 => u32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?),
        _ => return None,
    };
    let group = take(&mut b, 16)?.try_into().ok()?;
    let segment = take(&mut b, 16)?.try_into().ok()?;
    let n = usize::from(u16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?));
    let capsule = take(&mut b, n)?.to_vec();
    let n = usize::from(u16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?));
    let ciphertext = take(&mut b, n)?.to_vec();
    b.is_empty().then_some(LockboxFields {
        version,
        label,
        key_version,
        group,
        segment,
        capsule,
        ciphertext,
    })
}

/// The capsule's three parts.
pub struct Capsule {
    pub e: [u8; 33],
    pub v: [u8; 33],
    pub s: [u8; 32],
}

/// The MessagePack form (105 bytes): `93`, then `c4 21` E, `c4 21` V,
/// `c4 20` s.
pub fn parse_capsule(b: &[u8]) -> Option<Capsule> {
    if b.len() != 105 || b[0] != 0x93 || b[1..3] != [0xc4, 33] {
        return None;
    }
    if b[36..38] != [0xc4, 33] || b[71..73] != [0xc4, 32] {
        return None;
    }
    Some(Capsule {
        e: b[3..36].try_into().ok()?,
        v: b[38..71].try_into().ok()?,
        s: b[73..105].try_into().ok()?,
    })
}

fn point(bytes: &[u8; 33]) -> Option<ProjectivePoint> {
    let encoded = EncodedPoint::from_bytes(bytes).ok()?;
    Option::<AffinePoint>::from(AffinePoint::from_encoded_point(&encoded))
        .map(ProjectivePoint::from)
}

fn scalar(bytes: &[u8; 32]) -> Option<Scalar> {
    Option::from(Scalar::from_repr(FieldBytes::clone_from_slice(bytes)))
}

fn compressed(p: ProjectivePoint) -> [u8; 33] {
    p.to_affine()
        .to_encoded_point(true)
        .as_bytes()
        .try_into()
        .expect("a compressed point is 33 bytes")
}

/// Umbral's hash to a non-zero scalar: `SHA-256(u32 len(dst) || dst ||
/// parts...)` as a big-endian integer `d`, then `(d mod (n - 1)) + 1`.
pub fn hash_to_scalar(dst: &[u8], parts: &[&[u8]]) -> Scalar {
    let mut h = Sha256::new();
    h.update((dst.len() as u32).to_be_bytes());
    h.update(dst);
    for p in parts {
        h.update(p);
    }
    let digest = FieldBytes::clone_from_slice(&h.finalize());
    <Scalar as ReduceNonZero<U256>>::reduce_nonzero_bytes(&digest)
}

impl Capsule {
    /// The simple form: `E || V || s`, 98 bytes: the DEM's associated data.
    pub fn simple(&self) -> Vec<u8> {
        [&self.e[..], &self.v[..], &self.s[..]].concat()
    }

    /// The self-check: `s·G == V + h·E`, `h = hash_to_scalar("CAPSULE_POINTS", E, V)`.
    pub fn self_check(&self) -> bool {
        let (Some(e), Some(v), Some(s)) = (point(&self.e), point(&self.v), scalar(&self.s)) else {
            return false;
        };
        let h = hash_to_scalar(b"CAPSULE_POINTS", &[&self.e, &self.v]);
        ProjectivePoint::GENERATOR * s == v + e * h
    }

    /// The shared point with the scope's secret scalar: `(E + V)·sk`,
    /// compressed (33 bytes).
    pub fn shared_point(&self, secret_scalar: &[u8; 32]) -> Option<[u8; 33]> {
        let sum = point(&self.e)? + point(&self.v)?;
        Some(compressed(sum * scalar(secret_scalar)?))
    }
}

/// The DEM key: HKDF-SHA-256 with no salt (RFC 5869: 32 zero bytes), the
/// compressed shared point as input keying material, empty info, 32 bytes.
pub fn dem_key(shared_point: &[u8; 33]) -> [u8; 32] {
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(None, shared_point)
        .expand(&[], &mut key)
        .expect("32 bytes is a valid HKDF length");
    key
}

/// XChaCha20-Poly1305: the first 24 bytes are the nonce, the rest the
/// ciphertext and its 16-byte tag; `aad` is the capsule's simple form.
pub fn dem_open(key: &[u8; 32], ciphertext: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    if ciphertext.len() < 24 {
        return None;
    }
    let cipher = XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(key));
    cipher
        .decrypt(
            XNonce::from_slice(&ciphertext[..24]),
            Payload {
                msg: &ciphertext[24..],
                aad,
            },
        )
        .ok()
}

/// The binding hash sealed after the group key.
pub fn binding(label: &[u8], key_version: u32, group: &[u8; 16], segment: &[u8; 16]) -> [u8; 32] {
    let mut h = Sha256::new();
    if key_version <= 1 {
        h.update(b"cbfs lockbox binding v1\0");
        h.update([label.len() as u8]);
        h.update(label);
    } else {
        h.update(b"cbfs lockbox binding v2\0");
        h.update([label.len() as u8]);
        h.update(label);
        h.update(key_version.to_be_bytes());
    }
    h.update(group);
    h.update(segment);
    h.finalize().into()
}
