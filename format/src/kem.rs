//! Umbral's key encapsulation on the curve directly, for the loop that
//! repeats it by the thousand: a scope rotation opens every lockbox of the
//! scope with the old key and seals its group key under the new one.
//!
//! The arithmetic is umbral-pre's own, as docs/FORMAT.md ("Lockbox") writes
//! it, on the same k256: a capsule is `E = r·G`, `V = u·G` and
//! `s = u + r·h` with `h = H("CAPSULE_POINTS", E, V)`; the shared point is
//! `pk·(r + u)`, which the scope's secret recovers as `(E + V)·sk`; the DEM
//! is XChaCha20-Poly1305 under HKDF-SHA-256 of the shared point, with the
//! capsule's simple form as associated data. What differs is the cost of
//! the multiplications by a point that does not change:
//! - `k·G` and `k·pk` (the new public key, the same for the whole
//!   rotation) use a table of the point's multiples made once ([`FixedBase`]):
//!   64 additions, no doubling; umbral-pre multiplies them as any point;
//! - decoding a capsule checks it (`s·G == V + h·E`) as umbral-pre's
//!   decoding does; a batch of capsules is checked at once with random
//!   weights ([`check_all`]), which costs a fraction of checking each.
//!
//! Secret scalars are multiplied in constant time: the table is read by a
//! masked select over every entry, and k256's own multiplication does the
//! variable point. The tests hold this module to umbral-pre both ways:
//! every capsule sealed here decodes (and so passes umbral-pre's check) and
//! opens with umbral-pre, and every capsule umbral-pre seals opens here.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use k256::elliptic_curve::PrimeField as _;
use k256::elliptic_curve::ops::ReduceNonZero;
use k256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
use k256::elliptic_curve::subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use k256::{AffinePoint, EncodedPoint, FieldBytes, NonZeroScalar, ProjectivePoint, Scalar, U256};
use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// A capsule's MessagePack form, as umbral-pre writes it: `93`, then
/// `c4 21` E, `c4 21` V, `c4 20` s.
pub(crate) const CAPSULE_LEN: usize = 105;
/// The DEM's nonce.
const NONCE_LEN: usize = 24;

/// Radix-16 windows of a 256-bit scalar with signed digits (-8..=7), plus
/// the carry out of the top one.
const WINDOWS: usize = 65;

/// `j·16^i·P` for `j` in 1..=8 and every window `i`, in affine form: a
/// multiplication by `P` is one mixed addition per window.
pub struct FixedBase {
    table: Box<[[AffinePoint; 8]; WINDOWS]>,
}

impl FixedBase {
    /// The table of `p` (about four multiplications' work, once).
    pub fn new(p: &ProjectivePoint) -> Self {
        let mut projective = Vec::with_capacity(WINDOWS * 8);
        let mut base = *p;
        for _ in 0..WINDOWS {
            let mut m = base;
            for _ in 0..8 {
                projective.push(m);
                m += base;
            }
            // 16·base: the next window's unit.
            for _ in 0..4 {
                base = base.double();
            }
        }
        let mut table = Box::new([[AffinePoint::IDENTITY; 8]; WINDOWS]);
        for (slot, p) in table.iter_mut().flatten().zip(&projective) {
            *slot = p.to_affine();
        }
        FixedBase { table }
    }

    /// The table of the curve's generator.
    pub fn generator() -> &'static FixedBase {
        static G: std::sync::OnceLock<FixedBase> = std::sync::OnceLock::new();
        G.get_or_init(|| FixedBase::new(&ProjectivePoint::GENERATOR))
    }

    /// `k·P`, in constant time in `k`.
    pub fn mul(&self, k: &Scalar) -> ProjectivePoint {
        let digits = Zeroizing::new(signed_radix16(k));
        let mut acc = ProjectivePoint::IDENTITY;
        for (row, &d) in self.table.iter().zip(digits.iter()) {
            // |d| and its sign without a branch.
            let sign = d >> 7;
            let magnitude = ((d ^ sign) - sign) as u8;
            let mut pick = AffinePoint::IDENTITY;
            for (j, point) in (1u8..).zip(row.iter()) {
                pick.conditional_assign(point, magnitude.ct_eq(&j));
            }
            pick = AffinePoint::conditional_select(&pick, &-pick, Choice::from((sign & 1) as u8));
            // k256's mixed addition is complete: the identity adds too.
            acc += &pick;
        }
        acc
    }
}

/// `k` as 65 signed radix-16 digits: `k = Σ d_i·16^i`, `-8 <= d_i <= 7`
/// (the last is the carry, 0 or 1). No branch depends on `k`.
fn signed_radix16(k: &Scalar) -> [i8; WINDOWS] {
    let bytes = Zeroizing::new(k.to_bytes());
    let mut d = [0i8; WINDOWS];
    for i in 0..32 {
        let b = bytes[31 - i];
        d[2 * i] = (b & 0x0f) as i8;
        d[2 * i + 1] = (b >> 4) as i8;
    }
    for i in 0..WINDOWS - 1 {
        let carry = (d[i] + 8) >> 4;
        d[i] -= carry << 4;
        d[i + 1] += carry;
    }
    d
}

/// Umbral's hash to a non-zero scalar: SHA-256 of the domain's length
/// (u32, big-endian), the domain and the parts, as a big-endian integer
/// `d`, then `(d mod (n - 1)) + 1`.
fn hash_capsule_points(e: &[u8; 33], v: &[u8; 33]) -> Scalar {
    const DST: &[u8] = b"CAPSULE_POINTS";
    let mut h = Sha256::new();
    h.update((DST.len() as u32).to_be_bytes());
    h.update(DST);
    h.update(e);
    h.update(v);
    let digest = FieldBytes::clone_from_slice(&h.finalize());
    *<NonZeroScalar as ReduceNonZero<U256>>::reduce_nonzero_bytes(&digest).as_ref()
}

fn compressed(p: &ProjectivePoint) -> [u8; 33] {
    let mut out = [0u8; 33];
    out.copy_from_slice(p.to_affine().to_encoded_point(true).as_bytes());
    out
}

/// The DEM's key: HKDF-SHA-256, no salt, the compressed shared point as
/// input keying material, no info.
fn dem(shared: &ProjectivePoint) -> XChaCha20Poly1305 {
    let shared = Zeroizing::new(compressed(shared));
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(None, &shared[..])
        .expand(&[], &mut key[..])
        .expect("32 bytes is a valid HKDF length");
    XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(&key[..]))
}

/// A decoded and checked capsule: its points, and its bytes.
pub(crate) struct Capsule {
    e: AffinePoint,
    v: AffinePoint,
    /// `E || V || s`, the DEM's associated data.
    simple: [u8; 98],
}

/// A capsule decoded but not yet checked.
pub(crate) struct Unchecked {
    e: AffinePoint,
    v: AffinePoint,
    s: Scalar,
    h: Scalar,
    simple: [u8; 98],
}

impl Unchecked {
    /// Decodes the MessagePack form strictly: one spelling per capsule,
    /// compressed points on the curve, a scalar below the group's order.
    pub(crate) fn decode(b: &[u8]) -> Option<Unchecked> {
        if b.len() != CAPSULE_LEN
            || b[0] != 0x93
            || b[1..3] != [0xc4, 33]
            || b[36..38] != [0xc4, 33]
            || b[71..73] != [0xc4, 32]
        {
            return None;
        }
        let point = |bytes: &[u8]| -> Option<AffinePoint> {
            // Compressed points only (tag 02 or 03).
            if bytes[0] != 0x02 && bytes[0] != 0x03 {
                return None;
            }
            let encoded = EncodedPoint::from_bytes(bytes).ok()?;
            Option::from(AffinePoint::from_encoded_point(&encoded))
        };
        let e = point(&b[3..36])?;
        let v = point(&b[38..71])?;
        let s =
            Option::<Scalar>::from(Scalar::from_repr(FieldBytes::clone_from_slice(&b[73..105])))?;
        let mut simple = [0u8; 98];
        simple[..33].copy_from_slice(&b[3..36]);
        simple[33..66].copy_from_slice(&b[38..71]);
        simple[66..].copy_from_slice(&b[73..105]);
        let h = hash_capsule_points(
            simple[..33].try_into().expect("33 bytes"),
            simple[33..66].try_into().expect("33 bytes"),
        );
        Some(Unchecked { e, v, s, h, simple })
    }

    /// Umbral's check of one capsule: `s·G == V + h·E`.
    pub(crate) fn check(self) -> Option<Capsule> {
        let holds = FixedBase::generator().mul(&self.s)
            == ProjectivePoint::from(self.v) + ProjectivePoint::from(self.e) * self.h;
        holds.then_some(Capsule {
            e: self.e,
            v: self.v,
            simple: self.simple,
        })
    }
}

/// Checks many capsules at once, as umbral-pre checks each: with random
/// 128-bit weights `z`, `(Σ z·s)·G == Σ z·V + Σ (z·h)·E` holds for all of
/// them at once, or else (but for a chance of about 2^-128) one of them
/// fails its own check. A batch that fails is checked one by one, so that
/// exactly the bad capsules are refused. One multi-scalar multiplication
/// costs about a third of the two per capsule it replaces.
pub(crate) fn check_all(capsules: Vec<Unchecked>) -> Vec<Option<Capsule>> {
    if capsules.len() < 2 || !holds_together(&capsules, &mut rand::thread_rng()) {
        return capsules.into_iter().map(Unchecked::check).collect();
    }
    capsules
        .into_iter()
        .map(|c| {
            Some(Capsule {
                e: c.e,
                v: c.v,
                simple: c.simple,
            })
        })
        .collect()
}

fn holds_together(capsules: &[Unchecked], rng: &mut impl RngCore) -> bool {
    let mut points = Vec::with_capacity(2 * capsules.len());
    let mut scalars = Vec::with_capacity(2 * capsules.len());
    let mut sum_s = Scalar::ZERO;
    for c in capsules {
        // Odd, so never zero: every capsule counts.
        let z = Scalar::from((u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())) | 1);
        sum_s += z * c.s;
        points.push(c.v);
        scalars.push(z);
        points.push(c.e);
        scalars.push(z * c.h);
    }
    FixedBase::generator().mul(&sum_s) == multi_mul(&points, &scalars)
}

/// `Σ k_i·P_i` by buckets (Pippenger), in variable time: for checks of
/// public values only.
fn multi_mul(points: &[AffinePoint], scalars: &[Scalar]) -> ProjectivePoint {
    let n = points.len();
    // The window that costs the fewest additions: 256/c windows of n
    // additions into buckets and about 2^(c+1) to sum the buckets.
    let c = (2..=12usize)
        .min_by_key(|c| 256usize.div_ceil(*c) * (n + (1 << (c + 1))))
        .expect("a window");
    let bytes: Vec<[u8; 32]> = scalars.iter().map(|k| k.to_bytes().into()).collect();
    let mut buckets = vec![ProjectivePoint::IDENTITY; (1 << c) - 1];
    let mut acc = ProjectivePoint::IDENTITY;
    for w in (0..256usize.div_ceil(c)).rev() {
        for _ in 0..c {
            acc = acc.double();
        }
        buckets.fill(ProjectivePoint::IDENTITY);
        for (p, k) in points.iter().zip(&bytes) {
            let d = digit(k, w * c, c);
            if d != 0 {
                buckets[d - 1] += p;
            }
        }
        // Σ j·B_j as running sums from the top bucket down.
        let mut running = ProjectivePoint::IDENTITY;
        let mut sum = ProjectivePoint::IDENTITY;
        for b in buckets.iter().rev() {
            running += b;
            sum += &running;
        }
        acc += &sum;
    }
    acc
}

/// Bits `at..at + c` of the big-endian integer `k` (c <= 16).
fn digit(k: &[u8; 32], at: usize, c: usize) -> usize {
    let byte = 31 - at / 8;
    let mut v = usize::from(k[byte]);
    if byte >= 1 {
        v |= usize::from(k[byte - 1]) << 8;
    }
    if byte >= 2 {
        v |= usize::from(k[byte - 2]) << 16;
    }
    (v >> (at % 8)) & ((1 << c) - 1)
}

impl Capsule {
    /// Decodes and checks one capsule (see [`Unchecked`] and [`check_all`]):
    /// `None` for anything umbral-pre's decoding refuses.
    pub(crate) fn decode(b: &[u8]) -> Option<Capsule> {
        Unchecked::decode(b)?.check()
    }

    /// Opens `ciphertext` (nonce, then the sealed bytes and their tag) with
    /// the scope's secret scalar.
    pub(crate) fn open(&self, sk: &Scalar, ciphertext: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if ciphertext.len() < NONCE_LEN {
            return None;
        }
        let shared = Zeroizing::new((ProjectivePoint::from(self.e) + self.v) * sk);
        dem(&shared)
            .decrypt(
                XNonce::from_slice(&ciphertext[..NONCE_LEN]),
                Payload {
                    msg: &ciphertext[NONCE_LEN..],
                    aad: &self.simple,
                },
            )
            .ok()
            .map(Zeroizing::new)
    }
}

/// Seals `plain` under the public key whose table is `pk`: the capsule's
/// MessagePack form and the DEM ciphertext (nonce first), as
/// `umbral_pre::encrypt` makes them.
pub(crate) fn seal(
    rng: &mut (impl RngCore + CryptoRng),
    pk: &FixedBase,
    plain: &[u8],
) -> ([u8; CAPSULE_LEN], Vec<u8>) {
    let g = FixedBase::generator();
    let r = Zeroizing::new(*NonZeroScalar::random(&mut *rng).as_ref());
    let u = Zeroizing::new(*NonZeroScalar::random(&mut *rng).as_ref());
    let e = compressed(&g.mul(&r));
    let v = compressed(&g.mul(&u));
    let h = hash_capsule_points(&e, &v);
    let s = *u + *r * h;
    let shared = Zeroizing::new(pk.mul(&Zeroizing::new(*r + *u)));
    let mut capsule = [0u8; CAPSULE_LEN];
    capsule[0] = 0x93;
    capsule[1..3].copy_from_slice(&[0xc4, 33]);
    capsule[3..36].copy_from_slice(&e);
    capsule[36..38].copy_from_slice(&[0xc4, 33]);
    capsule[38..71].copy_from_slice(&v);
    capsule[71..73].copy_from_slice(&[0xc4, 32]);
    capsule[73..].copy_from_slice(&s.to_bytes());
    let mut simple = [0u8; 98];
    simple[..33].copy_from_slice(&e);
    simple[33..66].copy_from_slice(&v);
    simple[66..].copy_from_slice(&capsule[73..]);
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let sealed = dem(&shared)
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: &simple,
            },
        )
        .expect("XChaCha20-Poly1305 seals any length a lockbox has");
    let mut ciphertext = Vec::with_capacity(NONCE_LEN + sealed.len());
    ciphertext.extend_from_slice(&nonce);
    ciphertext.extend_from_slice(&sealed);
    (capsule, ciphertext)
}

/// A scope's secret scalar, for [`Capsule::open`]; wiped when dropped.
pub struct OpeningKey(Zeroizing<Scalar>);

impl OpeningKey {
    /// The scalar of `sk`.
    pub fn new(sk: &umbral_pre::SecretKey) -> Self {
        let bytes = sk.to_be_bytes();
        let scalar = Scalar::from_repr(FieldBytes::clone_from_slice(bytes.as_secret().as_slice()));
        OpeningKey(Zeroizing::new(
            Option::from(scalar).expect("an Umbral secret key is a scalar"),
        ))
    }

    pub(crate) fn scalar(&self) -> &Scalar {
        &self.0
    }
}

impl std::fmt::Debug for OpeningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpeningKey(..)")
    }
}

/// A public key made ready to seal many lockboxes under ([`FixedBase`]).
pub struct SealingKey(FixedBase);

impl SealingKey {
    /// The table of `pk` (about four multiplications' work, once).
    pub fn new(pk: &umbral_pre::PublicKey) -> Self {
        let bytes = pk.to_compressed_bytes();
        let encoded = EncodedPoint::from_bytes(&bytes).expect("an Umbral public key is a point");
        let point = Option::<AffinePoint>::from(AffinePoint::from_encoded_point(&encoded))
            .expect("an Umbral public key is a point");
        SealingKey(FixedBase::new(&ProjectivePoint::from(point)))
    }

    pub(crate) fn table(&self) -> &FixedBase {
        &self.0
    }
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use umbral_pre::{DefaultDeserialize, DefaultSerialize, SecretKey};

    fn scalar(bytes: [u8; 32]) -> Scalar {
        <Scalar as k256::elliptic_curve::ops::Reduce<U256>>::reduce_bytes(&FieldBytes::from(bytes))
    }

    #[test]
    fn a_table_multiplies_as_k256_does_at_the_edges() {
        let p = ProjectivePoint::GENERATOR * scalar([7; 32]);
        let table = FixedBase::new(&p);
        let edges = [
            Scalar::ZERO,
            Scalar::ONE,
            -Scalar::ONE,
            Scalar::from(8u64),
            Scalar::from(0x8888_8888u64),
            -Scalar::from(0x7777u64),
            scalar([0xff; 32]),
            scalar([0x88; 32]),
            scalar([0x77; 32]),
        ];
        for k in edges {
            assert_eq!(table.mul(&k), p * k, "k = {k:?}");
            assert_eq!(
                FixedBase::generator().mul(&k),
                ProjectivePoint::GENERATOR * k
            );
        }
    }

    proptest! {
        #[test]
        fn a_table_multiplies_as_k256_does(k in any::<[u8; 32]>(), base in any::<[u8; 32]>()) {
            let p = ProjectivePoint::GENERATOR * scalar(base);
            let k = scalar(k);
            prop_assert_eq!(FixedBase::new(&p).mul(&k), p * k);
        }

        #[test]
        fn a_flipped_bit_is_refused_here_as_by_umbral(at in 0usize..CAPSULE_LEN, bit in 0u8..8) {
            let sk = SecretKey::random();
            let (capsule, _) = umbral_pre::encrypt(&sk.public_key(), b"x").expect("encrypt");
            let mut bytes = capsule.to_bytes().expect("serialize").to_vec();
            bytes[at] ^= 1 << bit;
            let umbral = umbral_pre::Capsule::from_bytes(&bytes)
                .is_ok_and(|c| c.to_bytes().ok().as_deref() == Some(&bytes[..]));
            prop_assert_eq!(Capsule::decode(&bytes).is_some(), umbral);
        }
    }

    #[test]
    fn what_is_sealed_here_opens_with_umbral() {
        let sk = SecretKey::random();
        let pk = SealingKey::new(&sk.public_key());
        for len in [0, 1, 64, 1000] {
            let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let (capsule, ciphertext) = seal(&mut rand::rngs::OsRng, pk.table(), &plain);
            // Umbral's decoding checks the capsule.
            let decoded = umbral_pre::Capsule::from_bytes(&capsule).expect("umbral decodes it");
            assert_eq!(&decoded.to_bytes().expect("serialize")[..], &capsule[..]);
            let opened = umbral_pre::decrypt_original(&sk, &decoded, &ciphertext).expect("opens");
            assert_eq!(&opened[..], &plain[..]);
            // And here.
            let here = Capsule::decode(&capsule).expect("decodes here");
            let opened = here
                .open(OpeningKey::new(&sk).scalar(), &ciphertext)
                .expect("opens here");
            assert_eq!(&opened[..], &plain[..]);
        }
    }

    #[test]
    fn what_umbral_seals_opens_here_and_only_with_its_key() {
        let sk = SecretKey::random();
        let other = OpeningKey::new(&SecretKey::random());
        for len in [0, 1, 64, 1000] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let (capsule, ciphertext) =
                umbral_pre::encrypt(&sk.public_key(), &plain).expect("encrypt");
            let here = Capsule::decode(&capsule.to_bytes().expect("serialize")).expect("decodes");
            let opened = here
                .open(OpeningKey::new(&sk).scalar(), &ciphertext)
                .expect("opens");
            assert_eq!(&opened[..], &plain[..]);
            assert!(here.open(other.scalar(), &ciphertext).is_none());
            let mut altered = ciphertext.to_vec();
            let last = altered.len() - 1;
            altered[last] ^= 1;
            assert!(here.open(OpeningKey::new(&sk).scalar(), &altered).is_none());
            assert!(
                here.open(OpeningKey::new(&sk).scalar(), &ciphertext[..10])
                    .is_none()
            );
        }
    }

    #[test]
    fn a_capsule_whose_signature_does_not_match_is_refused() {
        let sk = SecretKey::random();
        let (capsule, _) = umbral_pre::encrypt(&sk.public_key(), b"x").expect("encrypt");
        let mut bytes = capsule.to_bytes().expect("serialize").to_vec();
        // A valid scalar, but not the capsule's.
        bytes[73..].copy_from_slice(&Scalar::ONE.to_bytes());
        assert!(umbral_pre::Capsule::from_bytes(&bytes).is_err());
        assert!(Capsule::decode(&bytes).is_none());
        // E and V swapped: both are points, the check fails.
        let mut swapped = capsule.to_bytes().expect("serialize").to_vec();
        let (e, v) = (swapped[3..36].to_vec(), swapped[38..71].to_vec());
        swapped[3..36].copy_from_slice(&v);
        swapped[38..71].copy_from_slice(&e);
        assert!(Capsule::decode(&swapped).is_none());
    }

    #[test]
    fn a_batch_holds_only_if_every_capsule_does() {
        let sk = SecretKey::random();
        let mut all: Vec<Vec<u8>> = (0..33)
            .map(|_| {
                let (c, _) = umbral_pre::encrypt(&sk.public_key(), b"x").expect("encrypt");
                c.to_bytes().expect("serialize").to_vec()
            })
            .collect();
        let decode = |all: &[Vec<u8>]| -> Vec<Unchecked> {
            all.iter()
                .map(|b| Unchecked::decode(b).expect("decodes"))
                .collect()
        };
        assert!(holds_together(&decode(&all), &mut rand::thread_rng()));
        assert!(check_all(decode(&all)).iter().all(Option::is_some));
        // One signature that is a valid scalar but not its capsule's.
        all[20][73..].copy_from_slice(&Scalar::from(5u64).to_bytes());
        assert!(!holds_together(&decode(&all), &mut rand::thread_rng()));
        let checked = check_all(decode(&all));
        for (i, c) in checked.iter().enumerate() {
            assert_eq!(c.is_none(), i == 20, "capsule {i}");
        }
        // Two wrong ones whose errors would cancel with equal weights.
        let mut two = all.clone();
        two[20] = two[0].clone();
        let (s0, s1) = (two[0][73..].to_vec(), two[1][73..].to_vec());
        let d = |b: &[u8]| {
            Option::<Scalar>::from(Scalar::from_repr(FieldBytes::clone_from_slice(b))).unwrap()
        };
        let delta = Scalar::from(9u64);
        two[0][73..].copy_from_slice(&(d(&s0) + delta).to_bytes());
        two[1][73..].copy_from_slice(&(d(&s1) - delta).to_bytes());
        let checked = check_all(decode(&two));
        assert!(checked[0].is_none() && checked[1].is_none());
        assert!(checked[2..].iter().all(Option::is_some));
    }

    proptest! {
        #[test]
        fn many_points_multiply_as_each_does(seeds in prop::collection::vec((any::<[u8; 32]>(), any::<[u8; 32]>()), 1..40)) {
            let points: Vec<AffinePoint> = seeds.iter().map(|(p, _)| (ProjectivePoint::GENERATOR * scalar(*p)).to_affine()).collect();
            let scalars: Vec<Scalar> = seeds.iter().map(|(_, k)| scalar(*k)).collect();
            let naive = points.iter().zip(&scalars).fold(ProjectivePoint::IDENTITY, |acc, (p, k)| acc + ProjectivePoint::from(*p) * k);
            prop_assert_eq!(multi_mul(&points, &scalars), naive);
        }
    }

    #[test]
    fn keys_print_no_secret() {
        let sk = SecretKey::random();
        assert_eq!(format!("{:?}", OpeningKey::new(&sk)), "OpeningKey(..)");
        assert_eq!(
            format!("{:?}", SealingKey::new(&sk.public_key())),
            "SealingKey(..)"
        );
    }
}
