//! A user's signed re-encryption request, and the codecs of what it carries.
//!
//! The signed message is the domain `cbfs-reencrypt/v1`, a zero byte, then
//! the compact JSON of the `request` object exactly as [`ReencryptBody`]
//! serializes it (fixed field order), so the signature does not depend on
//! how the JSON was formatted in transit.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cbfs_core::umbral_pre::{
    Capsule, CapsuleFrag, DefaultDeserialize, DefaultSerialize, PublicKey, Signature, Signer,
    VerifiedCapsuleFrag,
};
use cbfs_core::{ScopeLabel, UserName, public_key_hex};
use serde::{Deserialize, Serialize};

/// `format` of a re-encryption request.
pub const REENCRYPT_FORMAT: &str = "cbfs-reencrypt";
/// Version of the re-encryption request.
pub const REENCRYPT_VERSION: u32 = 1;
/// Signature domain of re-encryption requests.
pub const REENCRYPT_DOMAIN: &str = "cbfs-reencrypt/v1";
/// Longest path prefix a request may name, in bytes.
pub const MAX_PATH_LEN: usize = 4096;

/// The signed part of a re-encryption request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReencryptBody {
    /// Always [`REENCRYPT_FORMAT`].
    pub format: String,
    /// Always [`REENCRYPT_VERSION`].
    pub version: u32,
    /// Hex of the public key of the node the request is for: a request cannot
    /// be replayed at another node.
    pub node: String,
    /// Who asks.
    pub user: UserName,
    /// The scope whose capsules are to be re-encrypted.
    pub scope: ScopeLabel,
    /// The path prefix the user wants to unlock (checked by policy).
    pub path: String,
    /// Seconds since the Unix epoch when the request was made.
    pub timestamp: i64,
    /// 16 random bytes, hex: a node refuses a nonce it has seen.
    pub nonce: String,
    /// The capsules, each standard base64 of its Umbral serialization.
    pub capsules: Vec<String>,
}

/// A re-encryption request with the user's signature.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedReencrypt {
    /// The signed body.
    pub request: ReencryptBody,
    /// Hex of the DER signature by the user's signing key.
    pub signature: String,
}

impl ReencryptBody {
    /// The message the user signs.
    pub fn message(&self) -> Vec<u8> {
        let mut msg = Vec::with_capacity(256 + self.capsules.len() * 140);
        msg.extend_from_slice(REENCRYPT_DOMAIN.as_bytes());
        msg.push(0);
        msg.extend_from_slice(&serde_json::to_vec(self).expect("requests serialize"));
        msg
    }

    /// Signs the body.
    pub fn sign(self, signer: &Signer) -> SignedReencrypt {
        let signature = hex::encode(signer.sign(&self.message()).to_der_bytes());
        SignedReencrypt {
            request: self,
            signature,
        }
    }

    /// A new body for `node` with a fresh nonce, dated `timestamp` (seconds
    /// since the Unix epoch, from the caller's clock).
    pub fn new(
        node: &PublicKey,
        user: &UserName,
        scope: &ScopeLabel,
        path: &str,
        capsules: &[Capsule],
        timestamp: i64,
    ) -> Self {
        let mut nonce = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        ReencryptBody {
            format: REENCRYPT_FORMAT.into(),
            version: REENCRYPT_VERSION,
            node: public_key_hex(node),
            user: user.clone(),
            scope: scope.clone(),
            path: path.to_owned(),
            timestamp,
            nonce: hex::encode(nonce),
            capsules: capsules.iter().map(encode_capsule).collect(),
        }
    }

    /// How far the request's timestamp is from `now`, in seconds, or `None`
    /// when the difference does not fit an `i64` (a timestamp near `i64::MIN`
    /// or `i64::MAX`): such a request is always stale.
    pub fn skew_from(&self, now: i64) -> Option<u64> {
        self.timestamp
            .checked_sub(now)
            .and_then(i64::checked_abs)
            .map(i64::unsigned_abs)
    }
}

impl SignedReencrypt {
    /// Whether `key` made the signature.
    pub fn verify(&self, key: &PublicKey) -> bool {
        let Ok(der) = hex::decode(&self.signature) else {
            return false;
        };
        let Ok(signature) = Signature::try_from_der_bytes(&der) else {
            return false;
        };
        signature.verify(key, &self.request.message())
    }
}

/// Checks a requested path prefix: absolute, at most [`MAX_PATH_LEN`] bytes,
/// no control characters, no `..` component.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("the path prefix must start with '/'");
    }
    if path.len() > MAX_PATH_LEN {
        return Err("the path prefix is longer than 4096 bytes");
    }
    if path.chars().any(char::is_control) {
        return Err("the path prefix holds control characters");
    }
    if path.split('/').any(|c| c == "..") {
        return Err("the path prefix holds a `..` component");
    }
    Ok(())
}

/// Standard base64 of a capsule's Umbral serialization.
pub fn encode_capsule(capsule: &Capsule) -> String {
    B64.encode(capsule.to_bytes().expect("capsules serialize"))
}

/// The capsule in standard base64, or why it is not one.
pub fn decode_capsule(text: &str) -> Result<Capsule, String> {
    let raw = B64.decode(text).map_err(|_| "not base64".to_owned())?;
    Capsule::from_bytes(&raw).map_err(|e| format!("not an Umbral capsule: {e}"))
}

/// Standard base64 of a cfrag's Umbral serialization.
pub fn encode_cfrag(cfrag: &VerifiedCapsuleFrag) -> String {
    B64.encode(cfrag.to_bytes().expect("cfrags serialize"))
}

/// The (not yet verified) cfrag in standard base64, or why it is not one.
pub fn decode_cfrag(text: &str) -> Result<CapsuleFrag, String> {
    let raw = B64.decode(text).map_err(|_| "not base64".to_owned())?;
    CapsuleFrag::from_bytes(&raw).map_err(|e| format!("not an Umbral capsule fragment: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cbfs_core::UserSecret;

    fn body(timestamp: i64) -> (UserSecret, ReencryptBody) {
        let user = UserSecret::generate();
        let node = UserSecret::generate().public_key();
        let (capsule, _) = cbfs_core::umbral_pre::encrypt(&node, b"k").unwrap();
        let body = ReencryptBody::new(
            &node,
            &UserName::new("alice").unwrap(),
            &ScopeLabel::new("proj").unwrap(),
            "/a/b",
            &[capsule],
            timestamp,
        );
        (user, body)
    }

    #[test]
    fn signature_survives_reformatting_and_catches_changes() {
        let (user, body) = body(1_700_000_000);
        let signed = body.sign(&user.signer());
        assert!(signed.verify(&user.verifying_key()));
        let pretty = serde_json::to_string_pretty(&signed).unwrap();
        let back: SignedReencrypt = serde_json::from_str(&pretty).unwrap();
        assert!(back.verify(&user.verifying_key()));
        let mut changed = back.clone();
        changed.request.path = "/".into();
        assert!(!changed.verify(&user.verifying_key()));
        assert!(!back.verify(&UserSecret::generate().verifying_key()));
        let mut garbage = back;
        garbage.signature = "zz".into();
        assert!(!garbage.verify(&user.verifying_key()));
    }

    #[test]
    fn capsules_round_trip_and_nonces_differ() {
        let (_, a) = body(0);
        let (_, b) = body(0);
        assert_ne!(a.nonce, b.nonce);
        let capsule = decode_capsule(&a.capsules[0]).unwrap();
        assert_eq!(encode_capsule(&capsule), a.capsules[0]);
        assert!(decode_capsule("!!").is_err());
        assert!(decode_capsule("AAAA").is_err());
    }

    #[test]
    fn skew_never_overflows() {
        let now = 1_700_000_000;
        assert_eq!(body(now - 30).1.skew_from(now), Some(30));
        assert_eq!(body(now + 30).1.skew_from(now), Some(30));
        // i64::MIN - now overflows: such a timestamp is never within any skew.
        assert_eq!(body(i64::MIN).1.skew_from(now), None);
        assert_eq!(body(i64::MAX).1.skew_from(-now), None);
        assert_eq!(body(i64::MIN + 1).1.skew_from(0), Some(i64::MAX as u64));
    }

    #[test]
    fn paths_are_checked() {
        for ok in ["/", "/projects/apollo/", "/a b/c"] {
            check_path(ok).unwrap();
        }
        for bad in [
            "",
            "relative",
            "/a/../b",
            "/a\nb",
            &format!("/{}", "x".repeat(5000)),
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }
}
