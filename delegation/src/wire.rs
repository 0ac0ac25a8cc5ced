//! What travels between clients, the keytool and nodes, as JSON over HTTP.
//!
//! | endpoint | request | answer |
//! |---|---|---|
//! | `GET /v1/node` | — | [`NodeInfo`] |
//! | `POST /v1/grants` | a `cbfs_core::SealedGrant` | [`GrantStored`] |
//! | `POST /v1/revoke` | a signed `cbfs_core::Revocation` | [`RevokeDone`] |
//! | `POST /v1/reencrypt` | [`SignedReencrypt`] | [`Cfrags`] |
//!
//! Every refusal is an [`ErrorBody`] with a stable `error` code and a
//! `reason` for people. No body ever carries a secret.
//!
//! A re-encryption request is signed by the user's signing key (the grant
//! carries its verifying key). The signed message is the domain
//! `cbfs-reencrypt/v1`, a zero byte, then the compact JSON of the `request`
//! object exactly as [`ReencryptBody`] serializes it (fixed field order), so
//! the signature does not depend on how the JSON was formatted in transit.

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
/// `format` of a re-encryption answer.
pub const CFRAGS_FORMAT: &str = "cbfs-cfrags";
/// `format` of a node's description.
pub const NODE_FORMAT: &str = "cbfs-node";
/// The version of every format in this module.
pub const WIRE_VERSION: u32 = 1;
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
    /// Always [`WIRE_VERSION`].
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

    /// A new body for `node` with a fresh nonce and the current time.
    pub fn new(
        node: &PublicKey,
        user: &UserName,
        scope: &ScopeLabel,
        path: &str,
        capsules: &[Capsule],
    ) -> Self {
        let mut nonce = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        ReencryptBody {
            format: REENCRYPT_FORMAT.into(),
            version: WIRE_VERSION,
            node: public_key_hex(node),
            user: user.clone(),
            scope: scope.clone(),
            path: path.to_owned(),
            timestamp: time::OffsetDateTime::now_utc().unix_timestamp(),
            nonce: hex::encode(nonce),
            capsules: capsules.iter().map(encode_capsule).collect(),
        }
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

/// The answer to a re-encryption request: one cfrag per capsule, in order.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cfrags {
    /// Always [`CFRAGS_FORMAT`].
    pub format: String,
    /// Always [`WIRE_VERSION`].
    pub version: u32,
    /// When the grant that made them was issued (RFC 3339). Cfrags of
    /// different delegations of the same scope (an older share left on one
    /// node) each verify but do not combine; the client groups answers by this.
    pub grant_issued: String,
    /// m, as that grant says: how many nodes' cfrags open a capsule. A
    /// client that was not told m learns it here; a wrong m only makes the
    /// opening fail, it never opens anything the cfrags would not.
    pub threshold: u32,
    /// Standard base64 of each cfrag, in the order of the request's capsules.
    pub cfrags: Vec<String>,
}

/// What `GET /v1/node` says about a node.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeInfo {
    /// Always [`NODE_FORMAT`].
    pub format: String,
    /// Always [`WIRE_VERSION`].
    pub version: u32,
    /// Hex of the node's public key: grants for the node are bound to it and
    /// encrypted under it, and requests name it.
    pub public_key: String,
    /// The fingerprint of that key, to compare with `node.pub`.
    pub fingerprint: String,
    /// The file system whose keyset the node trusts.
    pub fs: String,
    /// The fingerprint of that file system's administrator key.
    pub admin_fingerprint: String,
}

/// The answer to a grant upload.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantStored {
    /// The scope.
    pub scope: String,
    /// The user.
    pub user: String,
    /// Which share the node now holds.
    pub share: u32,
    /// m.
    pub threshold: u32,
    /// n.
    pub shares: u32,
    /// When the delegation ends, if ever (RFC 3339).
    pub expires: Option<String>,
}

/// The answer to a revocation.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeDone {
    /// The revocation is recorded: the node refuses the user's grants of the
    /// scope issued at or before it.
    pub revoked: bool,
    /// Whether the node held a kfrag for the (scope, user) and deleted it.
    pub deleted: bool,
    /// The threshold (m) of the grant that was deleted, if one was.
    pub threshold: Option<u32>,
    /// The number of shares (n) of the grant that was deleted, if one was.
    pub shares: Option<u32>,
}

/// The body of every refusal.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable code: `bad_request`, `bad_signature`, `stale_request`,
    /// `replayed`, `no_delegation`, `expired`, `revoked`, `denied`,
    /// `too_large`, `rate_limited`, `wrong_node`, `bad_grant`, `internal`.
    pub error: String,
    /// What went wrong, for people.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use cbfs_core::UserSecret;

    fn body() -> (UserSecret, ReencryptBody) {
        let user = UserSecret::generate();
        let node = UserSecret::generate().public_key();
        let (capsule, _) = cbfs_core::umbral_pre::encrypt(&node, b"k").unwrap();
        let body = ReencryptBody::new(
            &node,
            &UserName::new("alice").unwrap(),
            &ScopeLabel::new("proj").unwrap(),
            "/a/b",
            &[capsule],
        );
        (user, body)
    }

    #[test]
    fn signature_survives_reformatting_and_catches_changes() {
        let (user, body) = body();
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
        let (_, a) = body();
        let (_, b) = body();
        assert_ne!(a.nonce, b.nonce);
        let capsule = decode_capsule(&a.capsules[0]).unwrap();
        assert_eq!(encode_capsule(&capsule), a.capsules[0]);
        assert!(decode_capsule("!!").is_err());
        assert!(decode_capsule("AAAA").is_err());
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
