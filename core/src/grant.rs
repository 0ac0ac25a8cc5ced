//! Delegation grants: one key fragment (kfrag) of a scope key for one user,
//! with the terms the administrator signed.
//!
//! A grant is made for one share of an m-of-n delegation and is meant for
//! one proxy node. It is never handed to the user.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use umbral_pre::{DefaultDeserialize, DefaultSerialize, KeyFrag, PublicKey, VerifiedKeyFrag};

use crate::error::{Error, Result};
use crate::ids::{FsName, ScopeLabel, UserName};
use crate::keys::{AdminSecret, fingerprint, public_key_from_hex, public_key_hex};
use crate::keyset::Keyset;
use crate::signed;
use crate::user::UserPublic;

const FORMAT: &str = "cbfs-grant";
const VERSION: u32 = 1;
const DOMAIN: &str = "cbfs-grant/v1";
const KIND: &str = "delegation grant";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    format: String,
    version: u32,
    fs: FsName,
    scope: ScopeLabel,
    user: UserName,
    user_public_key: String,
    user_verifying_key: String,
    scope_public_key: String,
    admin_verifying_key: String,
    threshold: u32,
    shares: u32,
    share: u32,
    issued: String,
    expires: Option<String>,
    kfrag: String,
}

/// The terms of a delegation, as the administrator decides them.
#[derive(Clone, Debug)]
pub struct DelegationTerms {
    /// m: how many nodes must answer.
    pub threshold: u32,
    /// n: how many shares (nodes) there are.
    pub shares: u32,
    /// When the delegation stops being honoured (RFC 3339), if ever.
    pub expires: Option<String>,
}

/// One verified share of a delegation.
#[derive(Clone, Debug)]
pub struct Grant {
    body: Body,
    kfrag: VerifiedKeyFrag,
    scope_pk: PublicKey,
    user_pk: PublicKey,
    user_vk: PublicKey,
    admin_vk: PublicKey,
}

/// Makes the n grants of an m-of-n delegation of `scope` to `user`.
///
/// The scope key, never the root, is the delegating key: a user who gathers
/// threshold-many kfrags can compute the delegating secret, so the most a
/// delegation can ever expose is one scope.
pub fn delegate(
    admin: &AdminSecret,
    keyset: &Keyset,
    scope: &ScopeLabel,
    user: &UserPublic,
    terms: &DelegationTerms,
) -> Result<Vec<Grant>> {
    keyset.check_admin(admin)?;
    let scope_pk = *keyset.scope(scope).ok_or_else(|| Error::KeyMismatch {
        what: format!(
            "scope `{scope}` is not in keyset `{}`; add it first with `cbfs-keytool add-scope`",
            keyset.fs()
        ),
    })?;
    if terms.threshold == 0 || terms.threshold > terms.shares || terms.shares > 255 {
        return Err(Error::KeyMismatch {
            what: format!(
                "threshold {} of {} shares is not possible: need 1 <= threshold <= shares <= 255",
                terms.threshold, terms.shares
            ),
        });
    }
    if let Some(expires) = &terms.expires {
        signed::parse_time(expires).map_err(|what| Error::KeyMismatch { what })?;
    }
    let scope_secret = admin.scope(scope);
    let signer = admin.signer();
    let kfrags = umbral_pre::generate_kfrags(
        scope_secret.secret_key(),
        user.public_key(),
        &signer,
        terms.threshold as usize,
        terms.shares as usize,
        true,
        true,
    );
    let issued = signed::now_rfc3339();
    let grants = kfrags
        .iter()
        .enumerate()
        .map(|(i, kfrag)| {
            let bytes = kfrag.to_bytes().expect("kfrags serialize");
            let body = Body {
                format: FORMAT.into(),
                version: VERSION,
                fs: keyset.fs().clone(),
                scope: scope.clone(),
                user: user.name().clone(),
                user_public_key: public_key_hex(user.public_key()),
                user_verifying_key: public_key_hex(user.verifying_key()),
                scope_public_key: public_key_hex(&scope_pk),
                admin_verifying_key: public_key_hex(&admin.verifying_key()),
                threshold: terms.threshold,
                shares: terms.shares,
                share: i as u32 + 1,
                issued: issued.clone(),
                expires: terms.expires.clone(),
                kfrag: B64.encode(bytes),
            };
            Grant {
                body,
                kfrag: kfrag.clone(),
                scope_pk,
                user_pk: *user.public_key(),
                user_vk: *user.verifying_key(),
                admin_vk: admin.verifying_key(),
            }
        })
        .collect();
    Ok(grants)
}

impl Grant {
    /// Serializes the grant, signed by the administrator.
    pub fn to_signed_bytes(&self, admin: &AdminSecret) -> Result<Vec<u8>> {
        if admin.verifying_key() != self.admin_vk {
            return Err(Error::KeyMismatch {
                what: "the administrator secret did not issue this grant".into(),
            });
        }
        Ok(signed::sign(DOMAIN, &self.body, &admin.signer()))
    }

    /// Parses a grant and verifies both the administrator's signature over its
    /// terms and the kfrag itself. `admin` is the administrator key the caller
    /// trusts (from its keyset), not the one written in the grant.
    pub fn from_bytes(bytes: &[u8], location: &str, admin: &PublicKey) -> Result<Self> {
        let (body, signature): (Body, _) = signed::parse(KIND, location, bytes)?;
        if body.format != FORMAT || body.version != VERSION {
            return Err(Error::doc(
                KIND,
                location,
                format!("unsupported format `{}` version {}", body.format, body.version),
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
                    "it was issued by administrator key {}, not the expected {}",
                    fingerprint(&admin_vk),
                    fingerprint(admin)
                ),
            ));
        }
        signed::verify(KIND, location, DOMAIN, &body, &signature, admin)?;
        let scope_pk = key("scope_public_key", &body.scope_public_key)?;
        let user_pk = key("user_public_key", &body.user_public_key)?;
        let user_vk = key("user_verifying_key", &body.user_verifying_key)?;
        let raw = B64
            .decode(&body.kfrag)
            .map_err(|_| Error::doc(KIND, location, "the kfrag is not base64"))?;
        let kfrag = KeyFrag::from_bytes(&raw)
            .map_err(|e| Error::doc(KIND, location, format!("malformed kfrag: {e}")))?
            .verify(admin, Some(&scope_pk), Some(&user_pk))
            .map_err(|(e, _)| Error::doc(KIND, location, format!("the kfrag does not verify: {e}")))?;
        Ok(Grant {
            body,
            kfrag,
            scope_pk,
            user_pk,
            user_vk,
            admin_vk,
        })
    }

    /// Reads and verifies a grant file.
    pub fn load(path: &Path, admin: &PublicKey) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read grant", path, e))?;
        Self::from_bytes(&bytes, &path.display().to_string(), admin)
    }

    /// Whether the grant has expired at `now`.
    pub fn is_expired(&self, now: time::OffsetDateTime) -> bool {
        match &self.body.expires {
            Some(t) => signed::parse_time(t).map(|t| t <= now).unwrap_or(true),
            None => false,
        }
    }

    /// The verified key fragment, for re-encryption.
    pub fn kfrag(&self) -> &VerifiedKeyFrag {
        &self.kfrag
    }
    /// The file system.
    pub fn fs(&self) -> &FsName {
        &self.body.fs
    }
    /// The delegated scope.
    pub fn scope(&self) -> &ScopeLabel {
        &self.body.scope
    }
    /// The user the scope is delegated to.
    pub fn user(&self) -> &UserName {
        &self.body.user
    }
    /// The scope's public key (the delegating key).
    pub fn scope_public_key(&self) -> &PublicKey {
        &self.scope_pk
    }
    /// The user's receiving key.
    pub fn user_public_key(&self) -> &PublicKey {
        &self.user_pk
    }
    /// The key that verifies the user's requests.
    pub fn user_verifying_key(&self) -> &PublicKey {
        &self.user_vk
    }
    /// The administrator key that signed the grant and the kfrag.
    pub fn admin_verifying_key(&self) -> &PublicKey {
        &self.admin_vk
    }
    /// m of the m-of-n.
    pub fn threshold(&self) -> u32 {
        self.body.threshold
    }
    /// n of the m-of-n.
    pub fn shares(&self) -> u32 {
        self.body.shares
    }
    /// Which share this is, from 1 to n.
    pub fn share(&self) -> u32 {
        self.body.share
    }
    /// When the grant was issued (RFC 3339).
    pub fn issued(&self) -> &str {
        &self.body.issued
    }
    /// When the grant expires (RFC 3339), if ever.
    pub fn expires(&self) -> Option<&str> {
        self.body.expires.as_deref()
    }
}
