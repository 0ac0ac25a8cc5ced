//! The delegation record: the public, administrator-signed terms of one
//! m-of-n delegation, without any key fragment.
//!
//! Each node keeps the record beside its share and returns it with every
//! answer. A client learns m, n and the nodes' keys from it, checked against
//! the administrator key the client trusts, so a node cannot make a client
//! stop early by claiming a smaller m, nor count twice under two names.

use serde::{Deserialize, Serialize};
use umbral_pre::PublicKey;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::ids::{FsName, ScopeLabel, UserName};
#[cfg(feature = "secrets")]
use crate::keys::AdminSecret;
use crate::keys::{fingerprint, public_key_from_hex, public_key_hex};
use crate::signed;

const FORMAT: &str = "cbfs-delegation";
pub(crate) const VERSION: u32 = 1;
const DOMAIN: &str = "cbfs-delegation/v1";
const KIND: &str = "delegation record";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Body {
    pub format: String,
    pub version: u32,
    pub fs: FsName,
    pub scope: ScopeLabel,
    pub user: UserName,
    pub user_public_key: String,
    pub user_verifying_key: String,
    pub scope_public_key: String,
    pub admin_verifying_key: String,
    pub threshold: u32,
    pub shares: u32,
    pub issued: String,
    pub expires: Option<String>,
    /// Hex of each node's public key, in share order (share i is node i-1).
    pub nodes: Vec<String>,
}

/// A verified delegation record.
#[derive(Clone, Debug)]
pub struct DelegationRecord {
    body: Body,
    raw: Vec<u8>,
    scope_pk: PublicKey,
    user_pk: PublicKey,
    user_vk: PublicKey,
    admin_vk: PublicKey,
    nodes: Vec<PublicKey>,
}

impl DelegationRecord {
    #[cfg(feature = "secrets")]
    pub(crate) fn sign(body: Body, admin: &AdminSecret) -> Result<Self> {
        let raw = signed::sign(DOMAIN, &body, &admin.signer());
        Self::from_bytes(&raw, "new delegation record", &admin.verifying_key())
    }

    /// Parses a record and verifies its signature against `admin`, the
    /// administrator key the caller trusts.
    pub fn from_bytes(bytes: &[u8], location: &str, admin: &PublicKey) -> Result<Self> {
        let (body, signature): (Body, _) = signed::parse(KIND, location, bytes)?;
        if body.format != FORMAT || body.version != VERSION {
            return Err(Error::doc(
                KIND,
                location,
                format!(
                    "unsupported format `{}` version {}",
                    body.format, body.version
                ),
            ));
        }
        let key = |what: &str, hex: &str| {
            public_key_from_hex(hex).map_err(|e| Error::doc(KIND, location, format!("{what}: {e}")))
        };
        let admin_vk = key("admin_verifying_key", &body.admin_verifying_key)?;
        if &admin_vk != admin {
            return Err(Error::doc(
                KIND,
                location,
                format!(
                    "it was signed by administrator key {}, not the trusted {}",
                    fingerprint(&admin_vk),
                    fingerprint(admin)
                ),
            ));
        }
        signed::verify(KIND, location, DOMAIN, &body, &signature, admin)?;
        if body.threshold == 0 || body.threshold > body.shares || body.shares > 255 {
            return Err(Error::doc(
                KIND,
                location,
                format!(
                    "{} of {} shares is not a valid delegation",
                    body.threshold, body.shares
                ),
            ));
        }
        if body.nodes.len() != body.shares as usize {
            return Err(Error::doc(
                KIND,
                location,
                format!(
                    "it lists {} nodes for {} shares",
                    body.nodes.len(),
                    body.shares
                ),
            ));
        }
        signed::parse_time(&body.issued).map_err(|e| Error::doc(KIND, location, e))?;
        if let Some(e) = &body.expires {
            signed::parse_time(e).map_err(|e| Error::doc(KIND, location, e))?;
        }
        let nodes = body
            .nodes
            .iter()
            .enumerate()
            .map(|(i, hex)| key(&format!("node {}", i + 1), hex))
            .collect::<Result<Vec<_>>>()?;
        for (i, n) in nodes.iter().enumerate() {
            if nodes[..i].contains(n) {
                return Err(Error::doc(
                    KIND,
                    location,
                    format!("node {} is listed twice", fingerprint(n)),
                ));
            }
        }
        Ok(DelegationRecord {
            scope_pk: key("scope_public_key", &body.scope_public_key)?,
            user_pk: key("user_public_key", &body.user_public_key)?,
            user_vk: key("user_verifying_key", &body.user_verifying_key)?,
            admin_vk,
            nodes,
            body,
            raw: bytes.to_vec(),
        })
    }

    /// The signed bytes.
    pub fn to_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// Whether the delegation has expired at the clock's now. An expiry
    /// that does not parse counts as expired.
    pub fn is_expired(&self, clock: &dyn Clock) -> bool {
        match &self.body.expires {
            Some(t) => signed::parse_time(t).map_or(true, |t| t <= clock.now()),
            None => false,
        }
    }

    /// The file system.
    pub fn fs(&self) -> &FsName {
        &self.body.fs
    }
    /// The delegated scope.
    pub fn scope(&self) -> &ScopeLabel {
        &self.body.scope
    }
    /// The user.
    pub fn user(&self) -> &UserName {
        &self.body.user
    }
    /// The user's receiving key.
    pub fn user_public_key(&self) -> &PublicKey {
        &self.user_pk
    }
    /// The key that verifies the user's requests.
    pub fn user_verifying_key(&self) -> &PublicKey {
        &self.user_vk
    }
    /// The scope's public key.
    pub fn scope_public_key(&self) -> &PublicKey {
        &self.scope_pk
    }
    /// The administrator key that signed it.
    pub fn admin_verifying_key(&self) -> &PublicKey {
        &self.admin_vk
    }
    /// m.
    pub fn threshold(&self) -> u32 {
        self.body.threshold
    }
    /// n.
    pub fn shares(&self) -> u32 {
        self.body.shares
    }
    /// When it was issued (RFC 3339); the grants of its shares carry the same.
    pub fn issued(&self) -> &str {
        &self.body.issued
    }
    /// When it expires (RFC 3339), if ever.
    pub fn expires(&self) -> Option<&str> {
        self.body.expires.as_deref()
    }
    /// The nodes' public keys, in share order.
    pub fn nodes(&self) -> &[PublicKey] {
        &self.nodes
    }
    /// Which share (1..=n) the node with key `node` holds, if it is listed.
    pub fn share_of(&self, node: &PublicKey) -> Option<u32> {
        self.nodes
            .iter()
            .position(|n| n == node)
            .map(|i| i as u32 + 1)
    }
}

/// Two records are the same delegation when their signed terms are equal,
/// however their JSON was spelled.
impl PartialEq for DelegationRecord {
    fn eq(&self, other: &Self) -> bool {
        self.body == other.body
    }
}

/// Shorthand for making a record's body from the pieces a delegation has.
#[allow(clippy::too_many_arguments)]
#[cfg(feature = "secrets")]
pub(crate) fn body(
    fs: &FsName,
    scope: &ScopeLabel,
    user: &crate::UserPublic,
    scope_pk: &PublicKey,
    admin: &AdminSecret,
    threshold: u32,
    shares: u32,
    issued: &str,
    expires: Option<&str>,
    nodes: &[PublicKey],
) -> Body {
    Body {
        format: FORMAT.into(),
        version: VERSION,
        fs: fs.clone(),
        scope: scope.clone(),
        user: user.name().clone(),
        user_public_key: public_key_hex(user.public_key()),
        user_verifying_key: public_key_hex(user.verifying_key()),
        scope_public_key: public_key_hex(scope_pk),
        admin_verifying_key: public_key_hex(&admin.verifying_key()),
        threshold,
        shares,
        issued: issued.to_owned(),
        expires: expires.map(str::to_owned),
        nodes: nodes.iter().map(public_key_hex).collect(),
    }
}
