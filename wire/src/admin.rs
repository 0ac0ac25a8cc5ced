//! What the administrator's key tool asks of a node besides grants and
//! revocations: taking a newer keyset (after a rotation), and listing the
//! delegations it holds of one scope (to re-issue them).
//!
//! A keyset carries its own proof (the administrator's signature, and the
//! chain of hand-overs after `rotate-admin`); a listing request is signed by
//! the administrator's key, so that a node tells who may unlock a scope to
//! the administrator only.

use cbfs_core::umbral_pre::{PublicKey, Signature, Signer};
use cbfs_core::{FsName, ScopeLabel, public_key_hex};
use serde::{Deserialize, Serialize};

/// `format` of a listing request.
pub const LIST_FORMAT: &str = "cbfs-list-delegations";
/// Its version.
pub const LIST_VERSION: u32 = 1;
/// Its signature domain.
pub const LIST_DOMAIN: &str = "cbfs-list-delegations/v1";
/// `format` of a listing answer.
pub const DELEGATIONS_FORMAT: &str = "cbfs-delegations";
/// `format` of the answer to a keyset upload.
pub const KEYSET_STORED_FORMAT: &str = "cbfs-keyset-stored";

/// The signed part of a listing request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListBody {
    /// Always [`LIST_FORMAT`].
    pub format: String,
    /// Always [`LIST_VERSION`].
    pub version: u32,
    /// Hex of the node's public key: the request cannot be replayed elsewhere.
    pub node: String,
    /// The file system.
    pub fs: FsName,
    /// The scope whose delegations to list.
    pub scope: ScopeLabel,
    /// Seconds since the Unix epoch (a node refuses one far from its clock).
    pub timestamp: i64,
}

/// A listing request with the administrator's signature.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedList {
    /// The signed body.
    pub request: ListBody,
    /// Hex of the DER signature by the administrator's key.
    pub signature: String,
}

impl ListBody {
    /// A request to `node` for the delegations of `scope`.
    pub fn new(node: &PublicKey, fs: &FsName, scope: &ScopeLabel, timestamp: i64) -> Self {
        ListBody {
            format: LIST_FORMAT.into(),
            version: LIST_VERSION,
            node: public_key_hex(node),
            fs: fs.clone(),
            scope: scope.clone(),
            timestamp,
        }
    }

    fn message(&self) -> Vec<u8> {
        let mut msg = LIST_DOMAIN.as_bytes().to_vec();
        msg.push(0);
        msg.extend_from_slice(&serde_json::to_vec(self).expect("requests serialize"));
        msg
    }

    /// Signs it with the administrator's key.
    pub fn sign(self, admin: &Signer) -> SignedList {
        let signature = hex::encode(admin.sign(&self.message()).to_der_bytes());
        SignedList {
            request: self,
            signature,
        }
    }
}

impl SignedList {
    /// Whether `admin` made the signature.
    pub fn verify(&self, admin: &PublicKey) -> bool {
        let Ok(der) = hex::decode(&self.signature) else {
            return false;
        };
        let Ok(sig) = Signature::try_from_der_bytes(&der) else {
            return false;
        };
        sig.verify(admin, &self.request.message())
    }
}

/// A node's delegations of one scope: the signed delegation record of every
/// share it holds (verify each with the administrator key you trust).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delegations {
    /// Always [`DELEGATIONS_FORMAT`].
    pub format: String,
    /// 1.
    pub version: u32,
    /// The records.
    pub delegations: Vec<serde_json::Value>,
    /// The signed revocations of the scope the node holds: a user revoked
    /// on any node must not get a delegation back by a re-issue.
    #[serde(default)]
    pub revocations: Vec<serde_json::Value>,
}

/// What a node answers when it took (or already had) a keyset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysetStored {
    /// Always [`KEYSET_STORED_FORMAT`].
    pub format: String,
    /// 1.
    pub version: u32,
    /// The serial the node now works with.
    pub serial: u64,
    /// Whether this upload changed it.
    pub updated: bool,
}
