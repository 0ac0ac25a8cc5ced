//! Opening lockboxes as a user: a user key plus delegation grants, with the
//! re-encryption done in this process and every capsule fragment verified.
//!
//! A later opener that gathers capsule fragments from delegation nodes over
//! the network fits the same [`LockboxOpener`] trait: it fetches
//! [`CapsuleFrag`]s, checks them with [`verify_cfrags`] and opens the lockbox
//! with [`Lockbox::open_reencrypted`], exactly as [`GrantOpener`] does.

use std::collections::BTreeMap;
use std::path::Path;

use cbfs_core::umbral_pre::{
    self, Capsule, CapsuleFrag, PublicKey, SecretKey, VerifiedCapsuleFrag, VerifiedKeyFrag,
};
use cbfs_core::{Grant, Keyset, UserSecret, fingerprint};
use cbfs_format::{GroupKey, Lockbox};

use crate::error::{Error, Result};
use crate::opener::LockboxOpener;

/// The keys a capsule fragment is checked against.
#[derive(Clone, Copy, Debug)]
pub struct CfragCheck<'a> {
    /// The lockbox's capsule.
    pub capsule: &'a Capsule,
    /// The key that signed the key fragments: the administrator's verifying key.
    pub verifying_key: &'a PublicKey,
    /// The delegating key: the scope's public key.
    pub delegating_key: &'a PublicKey,
    /// The receiving key: the user's public key.
    pub receiving_key: &'a PublicKey,
}

/// Verifies capsule fragments, wherever they came from. `origin` names each
/// one in errors (a grant share, a node's address).
///
/// Fails on the first fragment that does not verify, or that repeats the key
/// fragment of an earlier one, with [`Error::BadCfrag`] giving its index.
/// Only this function makes the verified type the lockbox needs.
pub fn verify_cfrags(
    check: &CfragCheck<'_>,
    cfrags: Vec<(String, CapsuleFrag)>,
) -> Result<Vec<VerifiedCapsuleFrag>> {
    let mut verified = Vec::with_capacity(cfrags.len());
    let mut seen_ids: Vec<Vec<u8>> = Vec::new();
    for (index, (origin, cfrag)) in cfrags.into_iter().enumerate() {
        // Bytes 66..98 of the simple encoding are the key fragment's id.
        let kfrag_id = cfrag.to_bytes_simple()[66..98].to_vec();
        if seen_ids.contains(&kfrag_id) {
            return Err(Error::BadCfrag {
                index,
                origin,
                reason: "it repeats the key fragment of an earlier capsule fragment".into(),
            });
        }
        let v = cfrag
            .verify(
                check.capsule,
                check.verifying_key,
                check.delegating_key,
                check.receiving_key,
            )
            .map_err(|(e, _)| Error::BadCfrag {
                index,
                origin: origin.clone(),
                reason: e.to_string(),
            })?;
        seen_ids.push(kfrag_id);
        verified.push(v);
    }
    Ok(verified)
}

/// Reads and verifies every `*.grant` file in `dir` against the keyset's
/// administrator key.
pub fn load_grants(dir: &Path, keyset: &Keyset) -> Result<Vec<Grant>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::read(dir.display().to_string(), e))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::read(dir.display().to_string(), e))?;
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "grant") {
            paths.push(path);
        }
    }
    paths.sort();
    if paths.is_empty() {
        return Err(Error::Delegation(format!(
            "no *.grant file in {}",
            dir.display()
        )));
    }
    paths
        .iter()
        .map(|p| {
            Grant::load(p, keyset.admin_verifying_key())
                .map_err(|e| Error::key(format!("grant {}", p.display()), e))
        })
        .collect()
}

enum ScopeState {
    Usable {
        scope_pk: PublicKey,
        threshold: usize,
        kfrags: Vec<(u32, VerifiedKeyFrag)>,
    },
    Expired {
        expires: String,
    },
    TooFew {
        have: usize,
        need: u32,
    },
}

/// Opens the lockboxes of the scopes delegated to one user, from that user's
/// secret and the delegation grants (m of n key fragments per scope).
///
/// For each lockbox it re-encrypts the capsule with `threshold` key
/// fragments, verifies every capsule fragment ([`verify_cfrags`]) and opens
/// the lockbox with the user's key. Lockboxes of other scopes give `None`.
pub struct GrantOpener {
    user_sk: SecretKey,
    user_pk: PublicKey,
    admin_vk: PublicKey,
    scopes: BTreeMap<String, ScopeState>,
    notes: Vec<String>,
}

type DelegationKey = (String, String, u32, u32, Vec<u8>);

impl GrantOpener {
    /// With the user's secret and grants, now.
    pub fn new(user: &UserSecret, grants: Vec<Grant>, keyset: &Keyset) -> Result<Self> {
        Self::at_time(user, grants, keyset, time::OffsetDateTime::now_utc())
    }

    /// With the user's secret and grants, judging expiry at `now`.
    ///
    /// Grants for another user, file system or administrator are left out
    /// (see [`notes`](Self::notes)); it fails if none is left.
    pub fn at_time(
        user: &UserSecret,
        grants: Vec<Grant>,
        keyset: &Keyset,
        now: time::OffsetDateTime,
    ) -> Result<Self> {
        let user_pk = user.public_key();
        let admin_vk = *keyset.admin_verifying_key();
        let total = grants.len();
        let mut notes = Vec::new();
        let mut groups: BTreeMap<DelegationKey, Vec<Grant>> = BTreeMap::new();
        for g in grants {
            let what = format!(
                "grant share {} of scope `{}` for `{}`",
                g.share(),
                g.scope(),
                g.user()
            );
            if g.user_public_key() != &user_pk {
                notes.push(format!("{what} is for another user key; not used"));
                continue;
            }
            if g.fs() != keyset.fs() || g.admin_verifying_key() != &admin_vk {
                notes.push(format!(
                    "{what} belongs to file system `{}`; not used",
                    g.fs()
                ));
                continue;
            }
            if keyset.scope(g.scope()) != Some(g.scope_public_key()) {
                notes.push(format!(
                    "{what} delegates scope key {}, which the keyset no longer lists; it opens only lockboxes sealed under that key",
                    fingerprint(g.scope_public_key())
                ));
            }
            let key = (
                g.scope().to_string(),
                g.issued().to_owned(),
                g.threshold(),
                g.shares(),
                g.scope_public_key().to_compressed_bytes().to_vec(),
            );
            groups.entry(key).or_default().push(g);
        }
        if groups.is_empty() {
            return Err(Error::Delegation(format!(
                "none of the {total} grants is for this user key ({}) in file system `{}`",
                fingerprint(&user_pk),
                keyset.fs()
            )));
        }
        let mut scopes: BTreeMap<String, ScopeState> = BTreeMap::new();
        // Later issues sort last, so the newest usable delegation wins.
        for ((scope, _issued, threshold, _shares, _), grants) in groups {
            let expired = grants
                .iter()
                .find(|g| g.is_expired(now))
                .map(|g| g.expires().unwrap_or("an unreadable time").to_owned());
            let mut kfrags: Vec<(u32, VerifiedKeyFrag)> = Vec::new();
            for g in &grants {
                if !kfrags.iter().any(|(s, _)| *s == g.share()) {
                    kfrags.push((g.share(), g.kfrag().clone()));
                }
            }
            let state = if let Some(expires) = expired {
                ScopeState::Expired { expires }
            } else if kfrags.len() < threshold as usize {
                ScopeState::TooFew {
                    have: kfrags.len(),
                    need: threshold,
                }
            } else {
                ScopeState::Usable {
                    scope_pk: *grants[0].scope_public_key(),
                    threshold: threshold as usize,
                    kfrags,
                }
            };
            let replace = match scopes.get(&scope) {
                None => true,
                Some(ScopeState::Usable { .. }) => matches!(state, ScopeState::Usable { .. }),
                Some(_) => true,
            };
            if replace {
                scopes.insert(scope, state);
            }
        }
        Ok(GrantOpener {
            user_sk: user.secret_key(),
            user_pk,
            admin_vk,
            scopes,
            notes,
        })
    }

    /// Grants left out, and other remarks about them.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Each delegated scope and whether it can be used ("usable", or why not).
    pub fn scopes(&self) -> BTreeMap<String, String> {
        self.scopes
            .iter()
            .map(|(scope, state)| {
                let status = match state {
                    ScopeState::Usable {
                        threshold, kfrags, ..
                    } => {
                        format!("usable ({} shares, {threshold} needed)", kfrags.len())
                    }
                    ScopeState::Expired { expires } => format!("expired at {expires}"),
                    ScopeState::TooFew { have, need } => {
                        format!("only {have} of the {need} shares needed")
                    }
                };
                (scope.clone(), status)
            })
            .collect()
    }

    /// Whether any delegated scope can be used now.
    pub fn any_usable(&self) -> bool {
        self.scopes
            .values()
            .any(|s| matches!(s, ScopeState::Usable { .. }))
    }
}

impl LockboxOpener for GrantOpener {
    fn open(&self, lockbox: &Lockbox) -> Result<Option<GroupKey>> {
        let (scope_pk, threshold, kfrags) = match self.scopes.get(lockbox.scope()) {
            None => return Ok(None),
            Some(ScopeState::Expired { expires }) => {
                return Err(Error::GrantExpired {
                    scope: lockbox.scope().to_owned(),
                    expires: expires.clone(),
                });
            }
            Some(ScopeState::TooFew { have, need }) => {
                return Err(Error::Delegation(format!(
                    "scope `{}`: only {have} of the {need} grant shares needed are here",
                    lockbox.scope()
                )));
            }
            Some(ScopeState::Usable {
                scope_pk,
                threshold,
                kfrags,
            }) => (scope_pk, *threshold, kfrags),
        };
        let capsule = lockbox.capsule();
        let cfrags: Vec<(String, CapsuleFrag)> = kfrags
            .iter()
            .take(threshold)
            .map(|(share, kfrag)| {
                let cfrag = umbral_pre::reencrypt(capsule, kfrag.clone()).unverify();
                (format!("grant share {share}"), cfrag)
            })
            .collect();
        let check = CfragCheck {
            capsule,
            verifying_key: &self.admin_vk,
            delegating_key: scope_pk,
            receiving_key: &self.user_pk,
        };
        let verified = verify_cfrags(&check, cfrags)?;
        lockbox
            .open_reencrypted(&self.user_sk, scope_pk, verified)
            .map(Some)
            .map_err(|e| Error::format(format!("lockbox of group {}", lockbox.group_id()), e))
    }

    fn describe(&self) -> String {
        let scopes: Vec<&str> = self.scopes.keys().map(String::as_str).collect();
        format!(
            "user key {} with grants for scope(s) {}",
            fingerprint(&self.user_pk),
            scopes.join(", ")
        )
    }
}
