//! Delegation grants: one key fragment (kfrag) of a scope key for one user,
//! with the terms the administrator signed.
//!
//! A grant is made for one share of an m-of-n delegation and is meant for
//! one proxy node. It is never handed to the user: with Umbral, a user
//! holding threshold-many kfrags can compute the scope secret.
//!
//! - [`delegate`] binds every share to one node: the node's public key is
//!   part of what the administrator signs, and a node refuses a grant bound
//!   to another. [`Grant::seal_for_node`] encrypts the signed grant for that
//!   node ([`SealedGrant`]), so the kfrag travels and rests encrypted for the
//!   node alone. The public terms go beside it as a
//!   [`DelegationRecord`](crate::DelegationRecord).
//! - A [`Revocation`] is the administrator's signed order to delete a user's
//!   grants of one scope, and to refuse them from then on.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use umbral_pre::{
    Capsule, DefaultDeserialize, DefaultSerialize, KeyFrag, PublicKey, SecretKey, VerifiedKeyFrag,
};
use zeroize::Zeroizing;

use crate::clock::Clock;
use crate::delegation::DelegationRecord;
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
    /// The node this share is for (hex of its public key). Absent in grants
    /// that are not bound to a node, such as those of `delegate --out`
    /// before nodes were bound; such grants serialize exactly as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<String>,
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
///
/// Its `Debug` shows the terms, never the kfrag.
#[derive(Clone)]
pub struct Grant {
    body: Body,
    kfrag: VerifiedKeyFrag,
    scope_pk: PublicKey,
    user_pk: PublicKey,
    user_vk: PublicKey,
    admin_vk: PublicKey,
    node_pk: Option<PublicKey>,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("fs", &self.body.fs)
            .field("scope", &self.body.scope)
            .field("user", &self.body.user)
            .field("share", &self.body.share)
            .field("threshold", &self.body.threshold)
            .field("shares", &self.body.shares)
            .field("issued", &self.body.issued)
            .field("expires", &self.body.expires)
            .field("node", &self.body.node)
            .field("kfrag", &"[redacted]")
            .finish()
    }
}

/// An m-of-n delegation as the administrator makes it: the public record
/// of its terms, and one grant per node, each bound to its node.
#[derive(Debug)]
pub struct Delegation {
    /// The signed terms, without any key fragment: every node keeps a copy
    /// and returns it with its answers.
    pub record: DelegationRecord,
    /// Share i (1-based) for node i - 1 of the nodes given.
    pub grants: Vec<Grant>,
}

/// Makes an m-of-n delegation of `scope` to `user`, one share for each of
/// the n `nodes` (their public keys, in share order).
///
/// The scope key, never the root, is the delegating key: a user who gathers
/// threshold-many kfrags can compute the delegating secret, so the most a
/// delegation can ever expose is one scope. That is also why every share is
/// bound to a node: no grant exists that a user could hold.
pub fn delegate(
    admin: &AdminSecret,
    keyset: &Keyset,
    scope: &ScopeLabel,
    user: &UserPublic,
    terms: &DelegationTerms,
    nodes: &[PublicKey],
    clock: &dyn Clock,
) -> Result<Delegation> {
    keyset.check_admin(admin)?;
    let scope_pk = *keyset.scope(scope).ok_or_else(|| {
        Error::Usage(format!(
            "scope `{scope}` is not in keyset `{}`; add it first with `cbfs-keytool add-scope`",
            keyset.fs()
        ))
    })?;
    if terms.threshold == 0 || terms.threshold > terms.shares || terms.shares > 255 {
        return Err(Error::Usage(format!(
            "threshold {} of {} shares is not possible: need 1 <= threshold <= shares <= 255",
            terms.threshold, terms.shares
        )));
    }
    if nodes.len() != terms.shares as usize {
        return Err(Error::Usage(format!(
            "{} shares need {} nodes, one each; {} were given",
            terms.shares,
            terms.shares,
            nodes.len()
        )));
    }
    for (i, n) in nodes.iter().enumerate() {
        if nodes[..i].contains(n) {
            return Err(Error::Usage(format!(
                "node {} is given twice: each share needs a node of its own",
                fingerprint(n)
            )));
        }
    }
    if let Some(expires) = &terms.expires {
        let t = signed::parse_time(expires).map_err(Error::Usage)?;
        if t <= clock.now() {
            return Err(Error::Usage(format!(
                "--expires {expires} is in the past: the delegation would be dead on arrival"
            )));
        }
    }
    // The scope's current key version: a delegation of a retired key
    // would be refused by every node.
    let version = keyset.scope_version(scope).unwrap_or(1);
    let scope_secret = admin.scope_at(scope, version);
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
    let issued = clock.rfc3339();
    let record = DelegationRecord::sign(
        crate::delegation::body(
            keyset.fs(),
            scope,
            user,
            &scope_pk,
            admin,
            terms.threshold,
            terms.shares,
            &issued,
            terms.expires.as_deref(),
            nodes,
        ),
        admin,
    )?;
    let grants = kfrags
        .iter()
        .zip(nodes)
        .enumerate()
        .map(|(i, (kfrag, node))| {
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
                node: Some(public_key_hex(node)),
            };
            Grant {
                body,
                kfrag: kfrag.clone(),
                scope_pk,
                user_pk: *user.public_key(),
                user_vk: *user.verifying_key(),
                admin_vk: admin.verifying_key(),
                node_pk: Some(*node),
            }
        })
        .collect();
    Ok(Delegation { record, grants })
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

    /// Signs the grant and encrypts it for the node it is bound to: only
    /// that node's secret opens it.
    pub fn seal_for_node(&self, admin: &AdminSecret) -> Result<Vec<u8>> {
        let node = self.node_pk.ok_or_else(|| Error::KeyMismatch {
            what: "the grant is not bound to a node".into(),
        })?;
        let signed = Zeroizing::new(self.to_signed_bytes(admin)?);
        let (capsule, ciphertext) = umbral_pre::encrypt(&node, &signed).map_err(|e| {
            Error::Reencryption(format!("cannot encrypt the grant for the node: {e}"))
        })?;
        Ok(SealedGrant {
            node,
            capsule,
            ciphertext,
        }
        .to_bytes())
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
            .map_err(|(e, _)| {
                Error::doc(KIND, location, format!("the kfrag does not verify: {e}"))
            })?;
        let node_pk = body
            .node
            .as_deref()
            .map(|hex| key("node", hex))
            .transpose()?;
        Ok(Grant {
            body,
            kfrag,
            scope_pk,
            user_pk,
            user_vk,
            admin_vk,
            node_pk,
        })
    }

    /// Reads and verifies a grant file.
    pub fn load(path: &Path, admin: &PublicKey) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read grant", path, e))?;
        Self::from_bytes(&bytes, &path.display().to_string(), admin)
    }

    /// Whether the grant has expired at `now`. An expiry that does not
    /// parse counts as expired.
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
    /// The node this share is bound to, if it is bound to one.
    pub fn node(&self) -> Option<&PublicKey> {
        self.node_pk.as_ref()
    }
}

const SEALED_FORMAT: &str = "cbfs-sealed-grant";
const SEALED_KIND: &str = "sealed grant";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedBody {
    format: String,
    version: u32,
    node: String,
    capsule: String,
    ciphertext: String,
}

/// A signed grant encrypted for one node with Umbral `encrypt` under the
/// node's public key: what `delegate --node` sends, and what a node keeps at
/// rest.
///
/// The JSON object has `format` (`cbfs-sealed-grant`), `version` (1), `node`
/// (hex of the node's public key), `capsule` and `ciphertext` (standard
/// base64 of the Umbral capsule and of the ciphertext of the signed grant).
/// The outer fields are not signed; the grant inside is, node binding
/// included.
#[derive(Clone)]
pub struct SealedGrant {
    node: PublicKey,
    capsule: Capsule,
    ciphertext: Box<[u8]>,
}

impl std::fmt::Debug for SealedGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedGrant(for node {})", fingerprint(&self.node))
    }
}

impl SealedGrant {
    /// The canonical JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let body = SealedBody {
            format: SEALED_FORMAT.into(),
            version: VERSION,
            node: public_key_hex(&self.node),
            capsule: B64.encode(self.capsule.to_bytes().expect("capsules serialize")),
            ciphertext: B64.encode(&self.ciphertext),
        };
        serde_json::to_vec(&body).expect("sealed grants serialize")
    }

    /// Parses a sealed grant (it is opened by [`open`](Self::open)).
    pub fn from_bytes(bytes: &[u8], location: &str) -> Result<Self> {
        let body: SealedBody = serde_json::from_slice(bytes)
            .map_err(|e| Error::doc(SEALED_KIND, location, format!("not a sealed grant: {e}")))?;
        if body.format != SEALED_FORMAT || body.version != VERSION {
            return Err(Error::doc(
                SEALED_KIND,
                location,
                format!(
                    "unsupported format `{}` version {}",
                    body.format, body.version
                ),
            ));
        }
        let node = public_key_from_hex(&body.node)
            .map_err(|e| Error::doc(SEALED_KIND, location, format!("node: {e}")))?;
        let raw = B64
            .decode(&body.capsule)
            .map_err(|_| Error::doc(SEALED_KIND, location, "the capsule is not base64"))?;
        let capsule = Capsule::from_bytes(&raw)
            .map_err(|e| Error::doc(SEALED_KIND, location, format!("malformed capsule: {e}")))?;
        let ciphertext = B64
            .decode(&body.ciphertext)
            .map_err(|_| Error::doc(SEALED_KIND, location, "the ciphertext is not base64"))?
            .into_boxed_slice();
        Ok(SealedGrant {
            node,
            capsule,
            ciphertext,
        })
    }

    /// The node the grant was sealed for.
    pub fn node(&self) -> &PublicKey {
        &self.node
    }

    /// Decrypts with the node's secret key and verifies the grant inside:
    /// the administrator's signature (against `admin`, the key the node
    /// trusts), the kfrag, and that the administrator bound it to this node.
    pub fn open(&self, node_sk: &SecretKey, admin: &PublicKey, location: &str) -> Result<Grant> {
        let node_pk = node_sk.public_key();
        if node_pk != self.node {
            return Err(Error::doc(
                SEALED_KIND,
                location,
                format!(
                    "it was sealed for node {}, not for this node ({})",
                    fingerprint(&self.node),
                    fingerprint(&node_pk)
                ),
            ));
        }
        let signed = Zeroizing::new(
            umbral_pre::decrypt_original(node_sk, &self.capsule, &self.ciphertext).map_err(
                |_| {
                    Error::doc(
                        SEALED_KIND,
                        location,
                        "it does not decrypt with this node's key (altered?)",
                    )
                },
            )?,
        );
        let grant = Grant::from_bytes(&signed, location, admin)?;
        match grant.node() {
            Some(bound) if *bound == node_pk => Ok(grant),
            Some(bound) => Err(Error::doc(
                KIND,
                location,
                format!(
                    "the administrator bound it to node {}, not to this node ({})",
                    fingerprint(bound),
                    fingerprint(&node_pk)
                ),
            )),
            None => Err(Error::doc(
                KIND,
                location,
                "the administrator did not bind it to a node; make it with `cbfs-keytool delegate --node`",
            )),
        }
    }
}

const REVOCATION_FORMAT: &str = "cbfs-revocation";
const REVOCATION_DOMAIN: &str = "cbfs-revocation/v1";
const REVOCATION_KIND: &str = "revocation";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationBody {
    format: String,
    version: u32,
    scope: ScopeLabel,
    user: UserName,
    user_public_key: String,
    admin_verifying_key: String,
    revoked: String,
}

/// The administrator's signed order to revoke the delegation of one scope to
/// one user: a node deletes every grant of that (scope, user) issued at or
/// before `revoked`, and refuses such grants from then on.
///
/// Revocation stops new unlocks only. A file key that a user has already
/// unlocked cannot be taken back: re-key (new group keys) when that matters.
#[derive(Clone, Debug)]
pub struct Revocation {
    body: RevocationBody,
    revoked: time::OffsetDateTime,
}

impl Revocation {
    /// A revocation of `scope` for `user`, as of the clock's now.
    pub fn new(
        admin: &AdminSecret,
        scope: &ScopeLabel,
        user: &UserPublic,
        clock: &dyn Clock,
    ) -> Self {
        let revoked = clock.rfc3339();
        Revocation {
            revoked: signed::parse_time(&revoked).expect("we format valid times"),
            body: RevocationBody {
                format: REVOCATION_FORMAT.into(),
                version: VERSION,
                scope: scope.clone(),
                user: user.name().clone(),
                user_public_key: public_key_hex(user.public_key()),
                admin_verifying_key: public_key_hex(&admin.verifying_key()),
                revoked,
            },
        }
    }

    /// Serializes the revocation, signed by the administrator.
    pub fn to_signed_bytes(&self, admin: &AdminSecret) -> Result<Vec<u8>> {
        if public_key_hex(&admin.verifying_key()) != self.body.admin_verifying_key {
            return Err(Error::KeyMismatch {
                what: "the administrator secret did not make this revocation".into(),
            });
        }
        Ok(signed::sign(REVOCATION_DOMAIN, &self.body, &admin.signer()))
    }

    /// Parses a revocation and verifies the signature of `admin`, the
    /// administrator key the caller trusts.
    pub fn from_bytes(bytes: &[u8], location: &str, admin: &PublicKey) -> Result<Self> {
        let (body, signature): (RevocationBody, _) =
            signed::parse(REVOCATION_KIND, location, bytes)?;
        if body.format != REVOCATION_FORMAT || body.version != VERSION {
            return Err(Error::doc(
                REVOCATION_KIND,
                location,
                format!(
                    "unsupported format `{}` version {}",
                    body.format, body.version
                ),
            ));
        }
        if body.admin_verifying_key != public_key_hex(admin) {
            return Err(Error::doc(
                REVOCATION_KIND,
                location,
                format!(
                    "it was not made by the expected administrator key {}",
                    fingerprint(admin)
                ),
            ));
        }
        signed::verify(
            REVOCATION_KIND,
            location,
            REVOCATION_DOMAIN,
            &body,
            &signature,
            admin,
        )?;
        public_key_from_hex(&body.user_public_key)
            .map_err(|e| Error::doc(REVOCATION_KIND, location, format!("user_public_key: {e}")))?;
        let revoked = signed::parse_time(&body.revoked)
            .map_err(|e| Error::doc(REVOCATION_KIND, location, e))?;
        Ok(Revocation { body, revoked })
    }

    /// The revoked scope.
    pub fn scope(&self) -> &ScopeLabel {
        &self.body.scope
    }
    /// The user whose delegation is revoked.
    pub fn user(&self) -> &UserName {
        &self.body.user
    }
    /// When the revocation was made (RFC 3339).
    pub fn revoked(&self) -> &str {
        &self.body.revoked
    }
    /// When the revocation was made.
    pub fn revoked_at(&self) -> time::OffsetDateTime {
        self.revoked
    }
    /// Whether this revocation applies to `grant`: same scope and user, and
    /// issued at or before the revocation.
    pub fn covers(&self, grant: &Grant) -> bool {
        grant.scope() == self.scope()
            && grant.user() == self.user()
            // A grant whose issue time does not parse is covered: fail closed.
            && signed::parse_time(grant.issued()).map_or(true, |issued| issued <= self.revoked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UserSecret;

    fn setup() -> (AdminSecret, Keyset, ScopeLabel, UserSecret, UserPublic) {
        let admin = AdminSecret::generate();
        let mut keyset = Keyset::new(FsName::new("fs").unwrap(), &admin);
        let scope = ScopeLabel::new("proj").unwrap();
        keyset.add_scope(&admin, &scope).unwrap();
        let user = UserSecret::generate();
        let public = UserPublic::from_secret(UserName::new("alice").unwrap(), &user);
        (admin, keyset, scope, user, public)
    }

    fn terms() -> DelegationTerms {
        DelegationTerms {
            threshold: 2,
            shares: 3,
            expires: None,
        }
    }

    fn nodes() -> Vec<UserSecret> {
        (0..3).map(|_| UserSecret::generate()).collect()
    }

    fn keys(nodes: &[UserSecret]) -> Vec<PublicKey> {
        nodes.iter().map(UserSecret::public_key).collect()
    }

    fn make(
        admin: &AdminSecret,
        keyset: &Keyset,
        scope: &ScopeLabel,
        user: &UserPublic,
        nodes: &[UserSecret],
    ) -> Delegation {
        delegate(
            admin,
            keyset,
            scope,
            user,
            &terms(),
            &keys(nodes),
            &crate::SystemClock,
        )
        .unwrap()
    }

    #[test]
    fn every_share_is_bound_to_its_node_and_the_record_lists_them() {
        let (admin, keyset, scope, _, user) = setup();
        let nodes = nodes();
        let d = make(&admin, &keyset, &scope, &user, &nodes);
        assert_eq!(d.grants.len(), 3);
        for (i, g) in d.grants.iter().enumerate() {
            assert_eq!(g.node(), Some(&nodes[i].public_key()));
            assert_eq!(d.record.share_of(&nodes[i].public_key()), Some(g.share()));
            assert_eq!(g.issued(), d.record.issued());
        }
        assert_eq!(d.record.threshold(), 2);
        let back =
            DelegationRecord::from_bytes(d.record.to_bytes(), "t", &admin.verifying_key()).unwrap();
        assert_eq!(back, d.record);
        // The record holds no kfrag.
        let text = String::from_utf8_lossy(d.record.to_bytes()).to_string();
        for g in &d.grants {
            assert!(!text.contains(&g.body.kfrag));
        }
        // Another administrator's key refuses it; an edited m does not verify.
        let other = AdminSecret::generate().verifying_key();
        assert!(DelegationRecord::from_bytes(d.record.to_bytes(), "t", &other).is_err());
        let forged = text.replace("\"threshold\": 2", "\"threshold\": 1");
        assert_ne!(forged, text);
        assert!(
            DelegationRecord::from_bytes(forged.as_bytes(), "t", &admin.verifying_key()).is_err()
        );
    }

    #[test]
    fn delegating_needs_one_distinct_node_per_share() {
        let (admin, keyset, scope, _, user) = setup();
        let nodes = nodes();
        let clock = crate::SystemClock;
        let two = keys(&nodes[..2]);
        let err = delegate(&admin, &keyset, &scope, &user, &terms(), &two, &clock).unwrap_err();
        assert!(err.to_string().contains("need 3 nodes"), "{err}");
        let same = vec![nodes[0].public_key(); 3];
        let err = delegate(&admin, &keyset, &scope, &user, &terms(), &same, &clock).unwrap_err();
        assert!(err.to_string().contains("given twice"), "{err}");
    }

    #[test]
    fn grants_round_trip() {
        let (admin, keyset, scope, _, user) = setup();
        let grant = &make(&admin, &keyset, &scope, &user, &nodes()).grants[0];
        let bytes = grant.to_signed_bytes(&admin).unwrap();
        let back = Grant::from_bytes(&bytes, "t", &admin.verifying_key()).unwrap();
        assert_eq!(back.node(), grant.node());
        // Signatures are randomized: the signed bodies are what must agree.
        let unsigned = |b: &[u8]| {
            let mut v: serde_json::Value = serde_json::from_slice(b).unwrap();
            v.as_object_mut().unwrap().remove("signature");
            v
        };
        assert_eq!(
            unsigned(&back.to_signed_bytes(&admin).unwrap()),
            unsigned(&bytes)
        );
    }

    #[test]
    fn sealed_grant_opens_only_at_its_node() {
        let (admin, keyset, scope, _, user) = setup();
        let nodes = nodes();
        let (node, other) = (&nodes[1], &nodes[0]);
        let grant = make(&admin, &keyset, &scope, &user, &nodes).grants[1].clone();
        let sealed_bytes = grant.seal_for_node(&admin).unwrap();
        let text = String::from_utf8_lossy(&sealed_bytes).to_string();
        assert!(!text.contains(&B64.encode(grant.kfrag().to_bytes().unwrap())));
        let sealed = SealedGrant::from_bytes(&sealed_bytes, "t").unwrap();
        assert_eq!(sealed.to_bytes(), sealed_bytes);
        let opened = sealed
            .open(&node.secret_key(), &admin.verifying_key(), "t")
            .unwrap();
        assert_eq!(opened.share(), 2);
        assert_eq!(opened.node(), Some(&node.public_key()));
        let err = sealed
            .open(&other.secret_key(), &admin.verifying_key(), "t")
            .unwrap_err();
        assert!(err.to_string().contains("sealed for node"), "{err}");
        let wrong_admin = AdminSecret::generate().verifying_key();
        assert!(sealed.open(&node.secret_key(), &wrong_admin, "t").is_err());
        assert!(!format!("{grant:?}").contains(&grant.body.kfrag));
    }

    #[test]
    fn a_grant_bound_to_another_node_is_refused_even_if_sealed_for_this_one() {
        let (admin, keyset, scope, _, user) = setup();
        let nodes = nodes();
        let (node, other) = (&nodes[1], &nodes[0]);
        // Bound to `other`, but encrypted for `node` by someone replaying it.
        let grant = make(&admin, &keyset, &scope, &user, &nodes).grants[0].clone();
        assert_eq!(grant.node(), Some(&other.public_key()));
        let signed = grant.to_signed_bytes(&admin).unwrap();
        let (capsule, ciphertext) = umbral_pre::encrypt(&node.public_key(), &signed).unwrap();
        let sealed = SealedGrant {
            node: node.public_key(),
            capsule,
            ciphertext,
        };
        let err = sealed
            .open(&node.secret_key(), &admin.verifying_key(), "t")
            .unwrap_err();
        assert!(err.to_string().contains("bound it to node"), "{err}");
    }

    #[test]
    fn revocation_round_trip_and_coverage() {
        let (admin, keyset, scope, _, user) = setup();
        let grant = make(&admin, &keyset, &scope, &user, &nodes())
            .grants
            .remove(0);
        let revocation = Revocation::new(&admin, &scope, &user, &crate::SystemClock);
        let bytes = revocation.to_signed_bytes(&admin).unwrap();
        let back = Revocation::from_bytes(&bytes, "t", &admin.verifying_key()).unwrap();
        assert_eq!(back.scope(), &scope);
        assert_eq!(back.user().as_str(), "alice");
        assert!(back.covers(&grant));
        let other_scope = ScopeLabel::new("other").unwrap();
        let other = Revocation::new(&admin, &other_scope, &user, &crate::SystemClock);
        assert!(!other.covers(&grant));
        assert!(
            Revocation::from_bytes(&bytes, "t", &AdminSecret::generate().verifying_key()).is_err()
        );
        let tampered = String::from_utf8(bytes).unwrap().replace("alice", "bob");
        assert!(Revocation::from_bytes(tampered.as_bytes(), "t", &admin.verifying_key()).is_err());
    }

    #[test]
    fn a_revocation_covers_a_grant_whose_issue_time_does_not_parse() {
        let (admin, keyset, scope, _, user) = setup();
        let mut grant = make(&admin, &keyset, &scope, &user, &nodes())
            .grants
            .remove(0);
        let clock = crate::FakeClock::at(0);
        let revocation = Revocation::new(&admin, &scope, &user, clock.as_ref());
        assert!(!revocation.covers(&grant), "issued after the revocation");
        grant.body.issued = "not a time".into();
        assert!(
            revocation.covers(&grant),
            "an unparsable issue time fails closed"
        );
    }
}
