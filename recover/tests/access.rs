//! Who opens what: a scope secret opens only its scope, a user's grants
//! (2 of 3) open only the delegated scope, expired grants and forged
//! capsule fragments are refused, and a stranger's key is recognized as
//! nobody's.

mod support;

use std::path::Path;

use cbfs_core::umbral_pre::{self, CapsuleFrag};
use cbfs_core::{
    AdminSecret, DelegationTerms, Grant, ScopeLabel, UserName, UserPublic, UserSecret, delegate,
};
use cbfs_format::{Lockbox, SegmentId};
use cbfs_recover::{
    CfragCheck, Error, GrantOpener, Identity, LocalDir, LockboxOpener, PathFilter, Report, TarSink,
    identify, load_grants, open_snapshot, restore, verify_cfrags,
};
use support::*;

fn restore_store(store: &Path, opener: &dyn LockboxOpener) -> (Report, Vec<TarEntry>) {
    let source = LocalDir::new(store).unwrap();
    let snapshot = open_snapshot(&source, Some(&fixture_keyset()), None).unwrap();
    let mut sink = TarSink::new(Vec::new(), "memory");
    let report = restore(&source, &snapshot, opener, &PathFilter::all(), &mut sink).unwrap();
    (report, tar_entries(&sink.into_inner().unwrap()))
}

fn paths(entries: &[TarEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.path.as_str()).collect()
}

const ALICE: [&str; 6] = [
    "alice",
    "alice/a1.txt",
    "alice/a2.bin",
    "alice/a3.txt",
    "alice/hard",
    "alice",
];

#[test]
fn scope_secret_opens_only_its_scope() {
    let (_d, store) = fixture_store("store", None);
    let id = identify(fixture_seed("alice-scope.key"), &fixture_keyset()).unwrap();
    assert!(matches!(id, Identity::Scope(_)));
    let (report, entries) = restore_store(&store, &id);
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert_eq!(paths(&entries), ALICE);
    assert_eq!(entries[2].content, bytes(2, 66_000));
    let skipped: Vec<(&str, u64)> = report
        .skipped_scopes
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(skipped, [("bob", 2), ("default", 9)]);
    assert!(
        report
            .human()
            .contains("skipped 9 member(s) of scope `default`: no key for it")
    );
}

#[test]
fn grants_two_of_three_open_alices_scope_only() {
    let (_d, store) = fixture_store("store", None);
    let keyset = fixture_keyset();
    let user = UserSecret::from_seed(fixture_seed("alice-user.key"));
    let grants = load_grants(&fixtures().join("grants"), &keyset).unwrap();
    assert_eq!(grants.len(), 3);
    // Any two of the three shares are enough.
    for pair in [[0usize, 1], [0, 2], [1, 2]] {
        let chosen: Vec<Grant> = pair.iter().map(|&i| grants[i].clone()).collect();
        let opener = GrantOpener::new(&user, chosen, &keyset).unwrap();
        let (report, entries) = restore_store(&store, &opener);
        assert!(
            report.failures.is_empty(),
            "{pair:?}: {:#?}",
            report.failures
        );
        assert_eq!(paths(&entries), ALICE, "{pair:?}");
        assert_eq!(report.skipped_scopes.get("default"), Some(&9));
    }
    // One share is not.
    let opener = GrantOpener::new(&user, vec![grants[0].clone()], &keyset).unwrap();
    assert!(!opener.any_usable());
    let (report, entries) = restore_store(&store, &opener);
    assert!(paths(&entries).is_empty());
    assert_eq!(report.failures.len(), 5, "{:#?}", report.failures);
    assert!(report.failures.iter().all(|f| f.code == "delegation"));
    assert!(
        report.failures[0].error.contains("only 1 of the 2"),
        "{:?}",
        report.failures[0]
    );
}

#[test]
fn expired_grants_are_refused_with_a_clear_error() {
    let (_d, store) = fixture_store("store", None);
    let keyset = fixture_keyset();
    let user = UserSecret::from_seed(fixture_seed("alice-user.key"));
    let grants = load_grants(&fixtures().join("expired-grants"), &keyset).unwrap();
    let opener = GrantOpener::new(&user, grants, &keyset).unwrap();
    assert!(!opener.any_usable());
    let expires = fixture_index()["expired_grants_expire"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(opener.scopes()["alice"], format!("expired at {expires}"));
    let (report, entries) = restore_store(&store, &opener);
    assert!(entries.is_empty());
    let expired: Vec<_> = report
        .failures
        .iter()
        .filter(|f| f.code == "grant_expired")
        .collect();
    assert_eq!(expired.len(), 5, "{:#?}", report.failures);
    assert!(
        expired[0].error.contains(&format!("expired at {expires}")),
        "{:?}",
        expired[0]
    );
    assert!(
        expired[0].object.starts_with("lockboxes/"),
        "{:?}",
        expired[0]
    );
}

#[test]
fn grants_for_someone_else_are_left_out() {
    let keyset = fixture_keyset();
    let grants = load_grants(&fixtures().join("grants"), &keyset).unwrap();
    let err = GrantOpener::new(&UserSecret::generate(), grants, &keyset)
        .err()
        .unwrap();
    assert!(matches!(err, Error::Delegation(_)));
    assert!(
        err.to_string()
            .contains("none of the 3 grants is for this user key"),
        "{err}"
    );
}

#[test]
fn a_strangers_key_is_nobodys() {
    let keyset = fixture_keyset();
    assert!(identify(fixture_seed("stranger.key"), &keyset).is_none());
    assert!(identify(fixture_seed("alice-user.key"), &keyset).is_none());
    assert!(matches!(
        identify(fixture_seed("admin.key"), &keyset),
        Some(Identity::Admin(_))
    ));
}

/// A scope delegated to two users, and a lockbox sealed for the scope.
struct Delegation {
    admin: AdminSecret,
    scope_pk: cbfs_core::umbral_pre::PublicKey,
    alice: UserSecret,
    alice_grants: Vec<Grant>,
    bob_grants: Vec<Grant>,
}

fn delegation() -> Delegation {
    let keys = Keys::random(true);
    let scope = ScopeLabel::new("alice").unwrap();
    let alice = UserSecret::generate();
    let bob = UserSecret::generate();
    let terms = DelegationTerms {
        threshold: 2,
        shares: 3,
        expires: None,
    };
    let public = |n: &str, s: &UserSecret| UserPublic::from_secret(UserName::new(n).unwrap(), s);
    let alice_grants = delegate(
        &keys.admin,
        &keys.keyset,
        &scope,
        &public("alice", &alice),
        &terms,
    )
    .unwrap();
    let bob_grants = delegate(
        &keys.admin,
        &keys.keyset,
        &scope,
        &public("bob", &bob),
        &terms,
    )
    .unwrap();
    Delegation {
        scope_pk: *keys.keyset.scope(&scope).unwrap(),
        admin: keys.admin,
        alice,
        alice_grants,
        bob_grants,
    }
}

#[test]
fn forged_or_mismatched_cfrags_are_caught_and_named() {
    let d = delegation();
    let (lb, _) = Lockbox::seal("alice", &d.scope_pk, SegmentId::random()).unwrap();
    let (other_lb, _) = Lockbox::seal("alice", &d.scope_pk, SegmentId::random()).unwrap();
    let admin_vk = d.admin.verifying_key();
    let alice_pk = d.alice.public_key();
    let check = CfragCheck {
        capsule: lb.capsule(),
        verifying_key: &admin_vk,
        delegating_key: &d.scope_pk,
        receiving_key: &alice_pk,
    };
    let cfrag = |grant: &Grant, capsule| -> CapsuleFrag {
        umbral_pre::reencrypt(capsule, grant.kfrag().clone()).unverify()
    };
    let good = |i: usize| (format!("node {i}"), cfrag(&d.alice_grants[i], lb.capsule()));

    // Honest fragments verify, and open the lockbox.
    let verified = verify_cfrags(&check, vec![good(0), good(2)]).unwrap();
    assert_eq!(verified.len(), 2);
    lb.open_reencrypted(&d.alice.secret_key(), &d.scope_pk, verified)
        .unwrap();

    // A fragment made for another capsule.
    let wrong_capsule = (
        "node 1".to_owned(),
        cfrag(&d.alice_grants[1], other_lb.capsule()),
    );
    let err = verify_cfrags(&check, vec![good(0), wrong_capsule]).unwrap_err();
    assert!(
        matches!(err, Error::BadCfrag { index: 1, ref origin, .. } if origin == "node 1"),
        "{err}"
    );
    assert_eq!(err.code(), "bad_cfrag");

    // A fragment from another user's key fragment (bob's delegation).
    let bobs = ("node 9".to_owned(), cfrag(&d.bob_grants[0], lb.capsule()));
    let err = verify_cfrags(&check, vec![bobs, good(1)]).unwrap_err();
    assert!(matches!(err, Error::BadCfrag { index: 0, .. }), "{err}");
    assert!(err.to_string().contains("node 9"), "{err}");

    // The same fragment twice.
    let err = verify_cfrags(&check, vec![good(0), good(0)]).unwrap_err();
    assert!(err.to_string().contains("repeats"), "{err}");
}
