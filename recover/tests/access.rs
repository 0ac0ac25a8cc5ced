//! Who opens what: the root secret opens every scope, a scope secret opens
//! only its scope, and a stranger's key (or a user's own key, which opens
//! nothing by itself: users restore through delegation nodes) is
//! recognized as nobody's.

mod support;

use std::path::Path;

use cbfs_restore::{
    Identity, LocalDir, LockboxOpener, Pin, Report, RestoreOptions, TarSink, Trust, identify,
    load_keyset, open_snapshot, restore,
};
use support::*;

fn restore_store(store: &Path, opener: &dyn LockboxOpener) -> (Report, Vec<TarEntry>) {
    let source = LocalDir::new(store).unwrap();
    let keyset = load_keyset(&source, &Pin::Keyset(Box::new(fixture_keyset())), None).unwrap();
    let snapshot = open_snapshot(&source, &Trust::new(keyset), None).unwrap();
    let mut sink = TarSink::new(Vec::new(), "memory");
    let report = restore(
        &source,
        &snapshot,
        opener,
        &RestoreOptions::default(),
        &mut sink,
    )
    .unwrap();
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
fn root_secret_opens_every_scope() {
    let (_d, store) = fixture_store("store", None);
    let id = identify(fixture_seed("admin.key"), &fixture_keyset()).unwrap();
    assert!(matches!(id, Identity::Admin(_)));
    let (report, entries) = restore_store(&store, &id);
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert!(report.skipped_scopes.is_empty(), "{report:#?}");
    assert_eq!(report.restored_entries, 16);
    for path in ["alice/a1.txt", "bob/b1.txt", "docs/d1.txt"] {
        assert!(paths(&entries).contains(&path), "{path}");
    }
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
    assert!(matches!(
        identify(fixture_seed("alice-scope.key"), &keyset),
        Some(Identity::Scope(_))
    ));
}
