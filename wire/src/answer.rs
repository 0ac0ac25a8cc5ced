//! What nodes answer, and what the administrator uploads to them.

use cbfs_core::umbral_pre::PublicKey;
use cbfs_core::{DelegationRecord, SealedGrant};
use serde::{Deserialize, Serialize};

/// `format` of a re-encryption answer.
pub const CFRAGS_FORMAT: &str = "cbfs-cfrags";
/// Version of the re-encryption answer: 2 carries the delegation record
/// (version 1 carried a bare m, which a node could lie about).
pub const CFRAGS_VERSION: u32 = 2;
/// `format` of a node's description.
pub const NODE_FORMAT: &str = "cbfs-node";
/// Version of a node's description.
pub const NODE_VERSION: u32 = 1;
/// `format` of a grant upload.
pub const UPLOAD_FORMAT: &str = "cbfs-grant-upload";
/// Version of a grant upload.
pub const UPLOAD_VERSION: u32 = 1;

/// The answer to a re-encryption request: one cfrag per capsule, in order,
/// and the administrator-signed record of the delegation that made them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cfrags {
    /// Always [`CFRAGS_FORMAT`].
    pub format: String,
    /// Always [`CFRAGS_VERSION`].
    pub version: u32,
    /// The delegation record (a signed JSON document), as the node got it
    /// from the administrator. The client takes m and the nodes' keys from
    /// it, never from anything the node says on its own.
    pub delegation: serde_json::Value,
    /// Standard base64 of each cfrag, in the order of the request's capsules.
    pub cfrags: Vec<String>,
}

/// What `POST /v1/grants` carries: a grant sealed for the node and the
/// public record of its delegation.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantUpload {
    /// Always [`UPLOAD_FORMAT`].
    pub format: String,
    /// Always [`UPLOAD_VERSION`].
    pub version: u32,
    /// The sealed grant (`cbfs-sealed-grant`), as a JSON object.
    pub grant: serde_json::Value,
    /// The delegation record (`cbfs-delegation`), as a JSON object.
    pub delegation: serde_json::Value,
}

impl GrantUpload {
    /// The upload of one share.
    pub fn new(sealed: &[u8], record: &DelegationRecord) -> Self {
        GrantUpload {
            format: UPLOAD_FORMAT.into(),
            version: UPLOAD_VERSION,
            grant: serde_json::from_slice(sealed).expect("sealed grants are JSON"),
            delegation: serde_json::from_slice(record.to_bytes())
                .expect("delegation records are JSON"),
        }
    }

    /// The sealed grant inside, parsed (not yet opened).
    pub fn sealed_grant(&self) -> Result<(SealedGrant, Vec<u8>), String> {
        let bytes = serde_json::to_vec(&self.grant).expect("values serialize");
        SealedGrant::from_bytes(&bytes, "uploaded grant")
            .map(|g| (g, bytes))
            .map_err(|e| e.to_string())
    }
}

/// Parses and verifies a delegation record carried as a JSON value.
pub fn record_from_value(
    value: &serde_json::Value,
    location: &str,
    admin: &PublicKey,
) -> Result<DelegationRecord, String> {
    let bytes = serde_json::to_vec(value).expect("values serialize");
    DelegationRecord::from_bytes(&bytes, location, admin).map_err(|e| e.to_string())
}

/// What `GET /v1/node` says about a node.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeInfo {
    /// Always [`NODE_FORMAT`].
    pub format: String,
    /// Always [`NODE_VERSION`].
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
    /// The threshold (m) of the grant that was deleted, if one was: for
    /// people only; nothing trusts it (a node could say anything).
    pub threshold: Option<u32>,
    /// The number of shares (n) of the grant that was deleted, if one was:
    /// for people only.
    pub shares: Option<u32>,
    /// The delegation record (signed by the administrator, as the node got
    /// it) of the grant this revocation deleted, now or when it was sent
    /// before: where the key tool takes m and n from, after checking the
    /// signature with the administrator's key.
    #[serde(default)]
    pub delegation: Option<serde_json::Value>,
}

/// The body of every refusal.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable code: `bad_request`, `bad_signature`, `unknown_user`,
    /// `stale_request`, `replayed`, `no_delegation`, `expired`, `revoked`,
    /// `denied`, `too_large`, `rate_limited`, `wrong_node`, `bad_grant`,
    /// `timeout`, `internal`.
    pub error: String,
    /// What went wrong, for people.
    pub reason: String,
}

/// `format` of a node's public key file (`DATA/node.pub`).
pub const NODE_KEY_FORMAT: &str = "cbfs-node-key";

/// The contents of a node's public key file, `DATA/node.pub`: what an
/// administrator without a network path to the node seals shares for.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePublicFile {
    /// Always [`NODE_KEY_FORMAT`].
    pub format: String,
    /// Always 1.
    pub version: u32,
    /// Hex of the node's public key.
    pub public_key: String,
    /// Its fingerprint.
    pub fingerprint: String,
}

impl NodePublicFile {
    /// The file for the node whose public key is `key`.
    pub fn new(key: &PublicKey) -> Self {
        NodePublicFile {
            format: NODE_KEY_FORMAT.into(),
            version: 1,
            public_key: cbfs_core::public_key_hex(key),
            fingerprint: cbfs_core::fingerprint(key),
        }
    }

    /// Reads a `node.pub` file: the key, checked against its fingerprint.
    pub fn load(path: &std::path::Path) -> Result<PublicKey, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file: NodePublicFile = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not a node key file: {e}", path.display()))?;
        if file.format != NODE_KEY_FORMAT || file.version != 1 {
            return Err(format!(
                "{}: format `{}` version {} is not a node key file",
                path.display(),
                file.format,
                file.version
            ));
        }
        let key = cbfs_core::public_key_from_hex(&file.public_key)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if cbfs_core::fingerprint(&key) != file.fingerprint {
            return Err(format!(
                "{}: the key and its fingerprint disagree",
                path.display()
            ));
        }
        Ok(key)
    }
}
