//! The signature every signed record of garbage collection carries: an
//! Umbral (ECDSA/secp256k1) signature by the key written inside the record,
//! over a domain string and every byte before the signature.

use umbral_pre::{PublicKey, Signature, Signer};

use crate::codec::{Dec, Enc};
use crate::error::Error;

/// A compressed SEC1 public key.
pub(crate) const KEY_LEN: usize = 33;
/// `r || s`, big-endian, low-s.
pub(crate) const SIGNATURE_LEN: usize = 64;

/// Writes a signer's verifying key.
pub(crate) fn write_key(e: &mut Enc, key: &PublicKey) {
    e.raw(&key.to_compressed_bytes());
}

/// Reads a verifying key, refusing any spelling but the canonical one.
pub(crate) fn read_key(d: &mut Dec<'_>) -> Result<PublicKey, Error> {
    let at = d.pos();
    let bytes: [u8; KEY_LEN] = d.array()?;
    PublicKey::try_from_compressed_bytes(&bytes)
        .ok()
        .filter(|k| *k.to_compressed_bytes() == bytes)
        .ok_or_else(|| d.err_at(at, "invalid signer key"))
}

/// Appends the signature of `domain || body` to `body`.
pub(crate) fn seal(domain: &[u8], mut body: Vec<u8>, signer: &Signer) -> Vec<u8> {
    let signature = signer.sign(&[domain, &body].concat());
    body.extend_from_slice(&signature.to_be_bytes());
    body
}

/// Whether `signature` is `key`'s over `domain || body`.
pub(crate) fn verifies(
    domain: &[u8],
    body: &[u8],
    signature: &[u8; SIGNATURE_LEN],
    key: &PublicKey,
) -> bool {
    Signature::try_from_be_bytes(signature).is_ok_and(|s| s.verify(key, &[domain, body].concat()))
}
