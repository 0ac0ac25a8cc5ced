//! Who opens lockboxes: the administrator's root secret, exported scope
//! secrets, or (in `grant.rs`) a user key with delegation grants.

#[cfg(feature = "secrets")]
use std::collections::BTreeMap;

#[cfg(feature = "secrets")]
use cbfs_core::{AdminSecret, Keyset, ScopeLabel, ScopeSecret, Seed, fingerprint};
use cbfs_format::{GroupKey, Lockbox};

#[cfg(feature = "secrets")]
use crate::error::Error;
use crate::error::Result;

/// Opens the lockboxes an identity has access to.
///
/// `Ok(None)` means "not my scope": the restore skips that scope's members
/// and counts them, it does not fail. `Err` means the identity should have
/// opened it and could not (a damaged lockbox, a bad capsule fragment, an
/// expired grant).
pub trait LockboxOpener {
    /// Opens one lockbox.
    fn open(&self, lockbox: &Lockbox) -> Result<Option<GroupKey>>;

    /// Opens several lockboxes at once. A restore calls this once per segment;
    /// an opener that asks delegation nodes for capsule fragments over the
    /// network overrides it to send one batch.
    fn open_batch(&self, lockboxes: &[&Lockbox]) -> Vec<Result<Option<GroupKey>>> {
        lockboxes.iter().map(|lb| self.open(lb)).collect()
    }

    /// What this identity is, for reports (never a secret).
    fn describe(&self) -> String;

    /// What went wrong on the way that did not stop it (nodes that were
    /// down or lied), for the report.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

#[cfg(feature = "secrets")]
fn label_of(lockbox: &Lockbox) -> Result<ScopeLabel> {
    // (key versions: `lockbox.key_version()` picks which key of the scope)
    ScopeLabel::new(lockbox.scope()).map_err(|e| Error::key("lockbox scope label", e))
}

#[cfg(feature = "secrets")]
fn open_with(lockbox: &Lockbox, scope: &ScopeSecret) -> Result<GroupKey> {
    lockbox
        .open(scope.secret_key())
        .map_err(|e| Error::format(format!("lockbox of group {}", lockbox.group_id()), e))
}

/// Opens every lockbox with the administrator's root secret.
#[cfg(feature = "secrets")]
pub struct AdminOpener {
    admin: AdminSecret,
}

#[cfg(feature = "secrets")]
impl AdminOpener {
    /// With the root secret.
    pub fn new(admin: AdminSecret) -> Self {
        AdminOpener { admin }
    }
}

#[cfg(feature = "secrets")]
impl LockboxOpener for AdminOpener {
    fn open(&self, lockbox: &Lockbox) -> Result<Option<GroupKey>> {
        // Every key version derives from the root: it opens them all.
        let scope = self
            .admin
            .scope_at(&label_of(lockbox)?, lockbox.key_version());
        open_with(lockbox, &scope).map(Some)
    }

    fn describe(&self) -> String {
        format!(
            "the administrator's root secret (signing key {})",
            fingerprint(&self.admin.verifying_key())
        )
    }
}

/// Opens the lockboxes of the scopes (and key versions) whose secrets it
/// holds, and no others.
#[cfg(feature = "secrets")]
pub struct ScopeOpener {
    scopes: BTreeMap<(String, u32), ScopeSecret>,
}

#[cfg(feature = "secrets")]
impl ScopeOpener {
    /// With one or more exported scope secrets.
    pub fn new(scopes: impl IntoIterator<Item = ScopeSecret>) -> Self {
        ScopeOpener {
            scopes: scopes
                .into_iter()
                .map(|s| ((s.label().as_str().to_owned(), s.version()), s))
                .collect(),
        }
    }

    /// The labels of the scopes it opens.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        let mut labels: Vec<&str> = self.scopes.keys().map(|(l, _)| l.as_str()).collect();
        labels.dedup();
        labels.into_iter()
    }
}

#[cfg(feature = "secrets")]
impl LockboxOpener for ScopeOpener {
    fn open(&self, lockbox: &Lockbox) -> Result<Option<GroupKey>> {
        match self
            .scopes
            .get(&(lockbox.scope().to_owned(), lockbox.key_version()))
        {
            Some(scope) => open_with(lockbox, scope).map(Some),
            None => Ok(None),
        }
    }

    fn describe(&self) -> String {
        let names: Vec<String> = self
            .scopes
            .keys()
            .map(|(l, v)| {
                if *v == 1 {
                    l.clone()
                } else {
                    format!("{l} (key version {v})")
                }
            })
            .collect();
        format!("the secret of scope(s) {}", names.join(", "))
    }
}

/// Opens nothing: for plain (unencrypted) stores, or to audit without a key.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoKey;

impl LockboxOpener for NoKey {
    fn open(&self, _lockbox: &Lockbox) -> Result<Option<GroupKey>> {
        Ok(None)
    }

    fn describe(&self) -> String {
        "no key (plain members only)".into()
    }
}

/// What a 32-byte secret turned out to be.
#[cfg(feature = "secrets")]
pub enum Identity {
    /// The root secret of the keyset's file system.
    Admin(AdminOpener),
    /// The exported secret of one scope.
    Scope(ScopeOpener),
}

#[cfg(feature = "secrets")]
impl LockboxOpener for Identity {
    fn open(&self, lockbox: &Lockbox) -> Result<Option<GroupKey>> {
        match self {
            Identity::Admin(a) => a.open(lockbox),
            Identity::Scope(s) => s.open(lockbox),
        }
    }

    fn describe(&self) -> String {
        match self {
            Identity::Admin(a) => a.describe(),
            Identity::Scope(s) => s.describe(),
        }
    }
}

/// Recognizes a secret: the root secret if its signing key is the keyset's
/// administrator key, or a scope secret if its public key is one of the
/// keyset's scope keys. `None` if it is neither.
#[cfg(feature = "secrets")]
pub fn identify(seed: Seed, keyset: &Keyset) -> Option<Identity> {
    let copy = |s: &Seed| Seed::from_slice(s.expose_secret_bytes(), "identity").expect("32 bytes");
    let admin = AdminSecret::from_seed(copy(&seed)).with_sign_version(keyset.admin_key_version());
    if admin.verifying_key() == *keyset.admin_verifying_key() {
        return Some(Identity::Admin(AdminOpener::new(admin)));
    }
    drop(admin);
    for label in keyset.scopes().keys() {
        for (version, pk) in keyset.scope_versions(label) {
            let scope = ScopeSecret::from_seed_at(label.clone(), version, copy(&seed));
            if scope.public_key() == pk {
                return Some(Identity::Scope(ScopeOpener::new([scope])));
            }
        }
    }
    None
}

#[cfg(all(test, feature = "secrets"))]
mod tests {
    use super::*;
    use cbfs_core::FsName;
    use cbfs_format::SegmentId;

    fn seed_of(s: &Seed) -> Seed {
        Seed::from_slice(s.expose_secret_bytes(), "t").unwrap()
    }

    #[test]
    fn identify_tells_root_from_scope_from_stranger() {
        let admin = AdminSecret::generate();
        let mut ks = Keyset::new(FsName::new("fs").unwrap(), &admin);
        let alice = ScopeLabel::new("alice").unwrap();
        ks.add_scope(&admin, &alice).unwrap();
        assert!(matches!(
            identify(seed_of(admin.seed()), &ks),
            Some(Identity::Admin(_))
        ));
        let scope = admin.scope(&alice);
        let id = identify(seed_of(scope.seed()), &ks).unwrap();
        assert!(matches!(id, Identity::Scope(_)));
        assert!(id.describe().contains("alice"));
        assert!(identify(Seed::generate(), &ks).is_none());

        // The scope secret opens alice's lockboxes and skips the others.
        let seg = SegmentId::random();
        let (lb_alice, key) = Lockbox::seal("alice", &scope.public_key(), seg).unwrap();
        let other = admin.scope(&ScopeLabel::default_scope()).public_key();
        let (lb_default, _) = Lockbox::seal("default", &other, seg).unwrap();
        let opened = id.open(&lb_alice).unwrap().unwrap();
        assert_eq!(opened.expose_secret(), key.expose_secret());
        assert!(id.open(&lb_default).unwrap().is_none());
        let root = AdminOpener::new(AdminSecret::from_seed(seed_of(admin.seed())));
        assert!(root.open(&lb_default).unwrap().is_some());
    }
}
