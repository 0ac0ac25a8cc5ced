//! Checking a node's answer before any of it is used.
//!
//! Everything a client takes from an answer is proven by someone other than
//! the node: the delegation record by the administrator's signature (with
//! the key the client trusts), each cfrag by Umbral's verification against
//! the capsule, the administrator's key, the scope's key and the user's key.
//! Only the node's share (its kfrag id) tells the answers apart, so that one
//! node reached under two names counts once.

use cbfs_core::umbral_pre::{Capsule, PublicKey, VerifiedCapsuleFrag};
use cbfs_core::{Clock, DelegationRecord, FsName, Keyset, ScopeLabel, UserName, fingerprint};

use crate::answer::{CFRAGS_FORMAT, CFRAGS_VERSION, Cfrags, record_from_value};
use crate::request::decode_cfrag;

/// What a client knows about the delegation it asks for: all public, and
/// all from the keyset it trusts.
#[derive(Clone, Debug)]
pub struct Access {
    /// The file system.
    pub fs: FsName,
    /// The user's name, as the administrator delegated to it.
    pub user: UserName,
    /// The delegated scope.
    pub scope: ScopeLabel,
    /// The scope's public key (the delegating key).
    pub scope_key: PublicKey,
    /// The administrator's verifying key: it signed the kfrags and the
    /// delegation record.
    pub admin_key: PublicKey,
}

impl Access {
    /// The access of `user` to `scope` of the trusted `keyset`, under the
    /// scope's current key.
    pub fn from_keyset(keyset: &Keyset, user: UserName, scope: ScopeLabel) -> Result<Self, String> {
        let version = keyset
            .scope_version(&scope)
            .ok_or_else(|| format!("scope `{scope}` is not in the keyset of `{}`", keyset.fs()))?;
        Self::at_version(keyset, user, scope, version)
    }

    /// The access of `user` to key version `version` of `scope`: the
    /// delegation must be of that key (lockboxes not yet sealed again
    /// after a rotation are under an older one, which nodes refuse).
    pub fn at_version(
        keyset: &Keyset,
        user: UserName,
        scope: ScopeLabel,
        version: u32,
    ) -> Result<Self, String> {
        let scope_key = *keyset.scope_key(&scope, version).ok_or_else(|| {
            format!(
                "scope `{scope}` key version {version} is not in the keyset of `{}`",
                keyset.fs()
            )
        })?;
        Ok(Access {
            fs: keyset.fs().clone(),
            user,
            scope,
            scope_key,
            admin_key: *keyset.admin_verifying_key(),
        })
    }
}

/// Why an answer was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// The answer is provably wrong: a record that does not verify or is
    /// for someone else, a cfrag that does not verify.
    Lied(String),
    /// The answer is not the protocol.
    Protocol(String),
    /// The delegation the answer is for has expired.
    Expired(String),
    /// The delegation is of another key version of the scope than the
    /// capsules were sealed under (a rotation is under way): not a lie.
    OtherKeyVersion(String),
}

/// A node's answer that passed every check.
#[derive(Debug)]
pub struct VerifiedAnswer {
    /// The delegation that made the cfrags.
    pub record: DelegationRecord,
    /// Which share of it the node holds (1..=n).
    pub share: u32,
    /// The share's kfrag id: two answers with the same id come from the same
    /// share, whatever the URLs they came from.
    pub kfrag_id: [u8; 32],
    /// One verified cfrag per capsule, in order.
    pub cfrags: Vec<VerifiedCapsuleFrag>,
}

/// The kfrag id inside a cfrag (bytes 66..98 of its simple serialization:
/// point e1, point v1, then the id).
pub fn kfrag_id(cfrag: &VerifiedCapsuleFrag) -> [u8; 32] {
    let bytes = cfrag.to_bytes_simple();
    let mut id = [0u8; 32];
    id.copy_from_slice(&bytes[66..98]);
    id
}

/// Checks the answer of the node whose public key is `node` to a request for
/// `capsules` by the user whose receiving key is `user`.
pub fn verify_answer(
    answer: &Cfrags,
    node: &PublicKey,
    access: &Access,
    user: &PublicKey,
    capsules: &[Capsule],
    clock: &dyn Clock,
) -> Result<VerifiedAnswer, Rejected> {
    if answer.format != CFRAGS_FORMAT || answer.version != CFRAGS_VERSION {
        return Err(Rejected::Protocol(format!(
            "answer format `{}` version {} (this client reads `{CFRAGS_FORMAT}` version {CFRAGS_VERSION})",
            answer.format, answer.version
        )));
    }
    if answer.cfrags.len() != capsules.len() {
        return Err(Rejected::Lied(format!(
            "{} cfrags for {} capsules",
            answer.cfrags.len(),
            capsules.len()
        )));
    }
    let record = record_from_value(
        &answer.delegation,
        "the answer's delegation record",
        &access.admin_key,
    )
    .map_err(|e| Rejected::Lied(e.to_string()))?;
    let mismatch = if record.fs() != &access.fs {
        Some(format!("file system `{}`", record.fs()))
    } else if record.scope() != &access.scope {
        Some(format!("scope `{}`", record.scope()))
    } else if record.user() != &access.user || record.user_public_key() != user {
        Some(format!("user `{}`", record.user()))
    } else if record.scope_public_key() != &access.scope_key {
        return Err(Rejected::OtherKeyVersion(
            "the node's delegation is of another key version of the scope than these lockboxes (issue it again after rotate-scope, or let the rotation finish)".into(),
        ));
    } else {
        None
    };
    if let Some(what) = mismatch {
        return Err(Rejected::Lied(format!(
            "its delegation record is for {what}, not what was asked"
        )));
    }
    let Some(share) = record.share_of(node) else {
        return Err(Rejected::Lied(format!(
            "its delegation record (issued {}) does not list this node ({})",
            record.issued(),
            fingerprint(node)
        )));
    };
    if record.is_expired(clock) {
        return Err(Rejected::Expired(format!(
            "the delegation issued {} expired at {}",
            record.issued(),
            record.expires().unwrap_or("?")
        )));
    }
    let cfrags = verify_cfrags(
        &answer.cfrags,
        capsules,
        &access.admin_key,
        &access.scope_key,
        user,
    )
    .map_err(Rejected::Lied)?;
    let id = cfrags.first().map_or([0u8; 32], kfrag_id);
    if cfrags.iter().any(|c| kfrag_id(c) != id) {
        return Err(Rejected::Lied(
            "its cfrags come from more than one share".into(),
        ));
    }
    Ok(VerifiedAnswer {
        record,
        share,
        kfrag_id: id,
        cfrags,
    })
}

/// Decodes and verifies every cfrag against its capsule, on every core.
pub fn verify_cfrags(
    encoded: &[String],
    capsules: &[Capsule],
    admin: &PublicKey,
    scope: &PublicKey,
    user: &PublicKey,
) -> Result<Vec<VerifiedCapsuleFrag>, String> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = encoded.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = encoded
            .chunks(chunk)
            .zip(capsules.chunks(chunk))
            .enumerate()
            .map(|(part, (texts, caps))| {
                s.spawn(move || {
                    texts
                        .iter()
                        .zip(caps)
                        .enumerate()
                        .map(|(j, (text, capsule))| {
                            let at = part * chunk + j;
                            let cfrag =
                                decode_cfrag(text).map_err(|e| format!("cfrag {at}: {e}"))?;
                            cfrag
                                .verify(capsule, admin, scope, user)
                                .map_err(|(e, _)| format!("cfrag {at} does not verify: {e}"))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(encoded.len());
        for h in handles {
            all.extend(h.join().expect("verification does not panic")?);
        }
        Ok(all)
    })
}
