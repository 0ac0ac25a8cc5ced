//! The committed damaged-store fixtures (tests/fixtures/, see
//! generate_fixtures.rs): each damage fails closed with a precise error
//! naming the object, and every intact member still comes out.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use cbfs_core::AdminSecret;
use cbfs_restore::{
    DirSink, Error, Failure, LocalDir, LockboxOpener, NoKey, Pin, Report, RestoreOptions, Snapshot,
    TarSink, Trust, identify, load_keyset, open_snapshot, restore,
};
use support::*;

fn admin() -> cbfs_restore::Identity {
    identify(fixture_seed("admin.key"), &fixture_keyset()).expect("the fixture root secret")
}

fn member(path: &str) -> String {
    fixture_index()["members"][path]["member"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn segment_key(name: &str) -> String {
    format!(
        "segments/{}.tar",
        fixture_index()["segments"][name].as_str().unwrap()
    )
}

fn lockbox_key(segment: &str, scope: &str) -> String {
    let index = fixture_index();
    format!(
        "lockboxes/{}/{}.lockbox",
        index["segments"][segment].as_str().unwrap(),
        index["groups"][segment][scope].as_str().unwrap()
    )
}

/// What the fixture root secret trusts: the store's newest keyset of its
/// own administrator, and the writers that keyset registers.
fn trust(source: &LocalDir) -> Trust {
    let root = AdminSecret::from_seed(fixture_seed("admin.key"));
    Trust::new(load_keyset(source, &Pin::Root(root.verifying_key()), None).unwrap())
}

fn open(store: &Path, selector: Option<&str>) -> Result<Snapshot, Error> {
    let source = LocalDir::new(store).unwrap();
    open_snapshot(&source, &trust(&source), selector)
}

fn restore_store(store: &Path, opener: &dyn LockboxOpener) -> (Report, Vec<TarEntry>) {
    let source = LocalDir::new(store).unwrap();
    let snapshot = open_snapshot(&source, &trust(&source), None).unwrap();
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

/// Every entry of the intact store's newest snapshot, with its content.
fn all_entries() -> BTreeMap<&'static str, Vec<u8>> {
    [
        ("alice", vec![]),
        ("alice/a1.txt", b"alice one\n".to_vec()),
        ("alice/a2.bin", bytes(2, 66_000)),
        ("alice/a3.txt", b"alice three\n".to_vec()),
        ("alice/hard", vec![]),
        ("bob", vec![]),
        ("bob/b1.txt", b"bob one\n".to_vec()),
        ("docs", vec![]),
        ("docs/d1.txt", b"docs one\n".to_vec()),
        ("docs/d2.txt", b"docs two\n".to_vec()),
        ("docs/d3.txt", b"docs three\n".to_vec()),
        ("docs/link", vec![]),
        ("docs/tail.bin", bytes(3, 20_000)),
        ("swap", vec![]),
        ("swap/one", bytes(11, 3000)),
        ("swap/two", bytes(12, 3000)),
    ]
    .into_iter()
    .collect()
}

/// Checks that exactly `all_entries()` minus `missing` came out, intact.
fn assert_restored_all_but(entries: &[TarEntry], missing: &[&str]) {
    let mut want = all_entries();
    for m in missing {
        want.remove(m);
    }
    let mut got: BTreeMap<String, &TarEntry> = BTreeMap::new();
    for e in entries {
        got.entry(e.path.clone()).or_insert(e);
    }
    assert_eq!(
        got.keys().map(String::as_str).collect::<Vec<_>>(),
        want.keys().copied().collect::<Vec<_>>(),
        "restored entries"
    );
    for (path, content) in want {
        assert_eq!(&got[path].content, &content, "content of {path}");
    }
}

fn failure<'r>(report: &'r Report, path_or_member: &str) -> &'r Failure {
    report
        .failures
        .iter()
        .find(|f| {
            f.member.as_deref() == Some(path_or_member) || f.path.as_deref() == Some(path_or_member)
        })
        .unwrap_or_else(|| panic!("no failure for {path_or_member}: {:#?}", report.failures))
}

#[test]
fn intact_store_restores_everything_in_order() {
    let (_dir, store) = fixture_store("store", None);
    let (report, entries) = restore_store(&store, &admin());
    assert!(
        report.failures.is_empty() && report.damaged_objects.is_empty(),
        "{report:#?}"
    );
    assert!(report.skipped_scopes.is_empty());
    assert_eq!(report.restored_entries, 16);
    assert!(report.complete_by_manifest);
    let snap = report.snapshot.as_ref().unwrap();
    let index = fixture_index();
    assert_eq!(snap.sequence, 2);
    let newest = open(&store, None).unwrap();
    assert!(
        newest.manifest().is_delta(),
        "snapshot 2 is stored as a delta"
    );
    assert_eq!(newest.manifest().entries().len(), 16);
    assert_eq!(snap.writer.as_deref(), Some("agent"));
    assert_eq!(snap.follows.as_deref(), index["snapshots"][0].as_str());
    assert_restored_all_but(&entries, &[]);
    // Parents before children, hard links after everything else (then the
    // directory that received the hard link, again, for GNU tar's sake).
    let order: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        order,
        [
            "alice",
            "alice/a1.txt",
            "alice/a2.bin",
            "alice/a3.txt",
            "bob",
            "bob/b1.txt",
            "docs",
            "docs/d1.txt",
            "docs/d2.txt",
            "docs/d3.txt",
            "docs/link",
            "docs/tail.bin",
            "swap",
            "swap/one",
            "swap/two",
            "alice/hard",
            "alice"
        ]
    );
    let hard = entries.iter().find(|e| e.path == "alice/hard").unwrap();
    assert_eq!(hard.kind, tar::EntryType::Link);
    assert_eq!(hard.link.as_deref(), Some("alice/a1.txt"));
    let link = entries.iter().find(|e| e.path == "docs/link").unwrap();
    assert_eq!(
        (link.kind, link.link.as_deref()),
        (tar::EntryType::Symlink, Some("d1.txt"))
    );
    let docs = entries.iter().find(|e| e.path == "docs").unwrap();
    assert_eq!(docs.mode, 0o750);
}

#[test]
fn bit_flip_in_a_segment_fails_that_member_only() {
    let (_dir, store) = fixture_store("store", Some("segment-bitflip"));
    let (report, entries) = restore_store(&store, &admin());
    assert_eq!(report.failures.len(), 1, "{:#?}", report.failures);
    let f = failure(&report, &member("alice/a2.bin"));
    assert_eq!(f.object, segment_key("A"));
    assert_eq!(f.code, "payload_auth", "{f:?}");
    assert!(
        f.error
            .contains("also differ from the SHA-256 in the manifest"),
        "{f:?}"
    );
    assert_restored_all_but(&entries, &["alice/a2.bin"]);
}

#[test]
fn bit_flip_in_a_lockbox_fails_that_group_only() {
    let (_dir, store) = fixture_store("store", Some("lockbox-bitflip"));
    let (report, entries) = restore_store(&store, &admin());
    let lockbox = lockbox_key("A", "alice");
    for path in ["alice", "alice/a1.txt", "alice/a2.bin"] {
        let f = failure(&report, &member(path));
        assert_eq!(f.object, lockbox);
        assert_eq!(f.code, "lockbox_open", "{f:?}");
    }
    // The hard link's target is gone, so the link is refused, not dangling.
    let f = failure(&report, "alice/hard");
    assert_eq!(
        (f.code.as_str(), f.object.clone()),
        ("unsafe_path", segment_key("C"))
    );
    assert!(f.error.contains("not restored"), "{f:?}");
    assert_eq!(report.failures.len(), 4);
    assert_restored_all_but(
        &entries,
        &["alice", "alice/a1.txt", "alice/a2.bin", "alice/hard"],
    );
}

#[test]
fn a_lockbox_of_another_group_is_refused() {
    let (_dir, store) = fixture_store("store", Some("lockbox-swapped"));
    let (report, entries) = restore_store(&store, &admin());
    let f = failure(&report, &member("alice/a1.txt"));
    assert_eq!(
        (f.object.clone(), f.code.as_str()),
        (lockbox_key("A", "alice"), "malformed")
    );
    assert!(f.error.contains("holds the key of group"), "{f:?}");
    assert_restored_all_but(
        &entries,
        &["alice", "alice/a1.txt", "alice/a2.bin", "alice/hard"],
    );
}

#[test]
fn damaged_summaries_are_worked_around_and_reported() {
    let summary = format!(
        "summaries/{}.summary",
        fixture_index()["segments"]["B"].as_str().unwrap()
    );
    for (variant, code) in [
        ("summary-bitflip", "summary_mismatch"),
        ("summary-garbled", "malformed"),
    ] {
        let (_dir, store) = fixture_store("store", Some(variant));
        let (report, entries) = restore_store(&store, &admin());
        assert!(
            report.failures.is_empty(),
            "{variant}: {:#?}",
            report.failures
        );
        assert_eq!(
            report.damaged_objects.len(),
            1,
            "{variant}: {:#?}",
            report.damaged_objects
        );
        let d = &report.damaged_objects[0];
        assert_eq!(
            (d.object.as_str(), d.code.as_str()),
            (summary.as_str(), code),
            "{variant}: {d:?}"
        );
        // Every member still came out, checked against the manifest.
        assert_restored_all_but(&entries, &[]);
    }
}

#[test]
fn truncated_segment_loses_only_what_was_cut() {
    let (_dir, store) = fixture_store("store", Some("segment-truncated"));
    let (report, entries) = restore_store(&store, &admin());
    assert_eq!(report.failures.len(), 1, "{:#?}", report.failures);
    let f = failure(&report, &member("docs/tail.bin"));
    assert_eq!(f.object, segment_key("C"));
    // The cut is inside the member's only chunk, so even its path is lost.
    assert_eq!(f.path, None);
    assert_eq!(f.code, "payload_truncated", "{f:?}");
    assert_restored_all_but(&entries, &["docs/tail.bin"]);
}

#[test]
fn missing_segment_is_named() {
    let (_dir, store) = fixture_store("store", Some("segment-missing"));
    let (report, entries) = restore_store(&store, &admin());
    let lost = ["alice/a3.txt", "docs/d2.txt", "swap", "swap/two"];
    assert_eq!(report.failures.len(), lost.len(), "{:#?}", report.failures);
    for path in lost {
        let f = failure(&report, &member(path));
        assert_eq!(
            (f.object.clone(), f.code.as_str()),
            (segment_key("B"), "missing_object")
        );
        assert!(f.error.contains("missing"), "{f:?}");
    }
    assert_restored_all_but(&entries, &lost);
}

#[test]
fn members_swapped_between_segments_are_refused() {
    let (_dir, store) = fixture_store("store", Some("members-swapped"));
    let (report, entries) = restore_store(&store, &admin());
    assert_eq!(report.failures.len(), 2, "{:#?}", report.failures);
    for (path, seg) in [("swap/one", "A"), ("swap/two", "B")] {
        let f = failure(&report, &member(path));
        assert_eq!(f.object, segment_key(seg));
        assert_eq!(f.code, "wrong_key", "{f:?}");
        assert!(f.error.contains("swapped in from another segment"), "{f:?}");
    }
    assert_restored_all_but(&entries, &["swap/one", "swap/two"]);
}

#[test]
fn rolled_back_forked_or_foreign_manifests_are_refused() {
    let index = fixture_index();
    let snap2 = index["snapshots"][1].as_str().unwrap();

    let (_d1, store) = fixture_store("store", Some("manifest-rollback"));
    let err = open(&store, None).unwrap_err();
    assert!(
        matches!(err, Error::ManifestName { ref key, .. } if key == snap2),
        "{err}"
    );
    assert!(err.is_verification());
    assert!(
        err.to_string()
            .contains("older manifest served under a newer name"),
        "{err}"
    );
    // Snapshot 1 itself is still fine.
    assert_eq!(open(&store, Some("1")).unwrap().sequence(), 1);

    let (_d2, store) = fixture_store("store", Some("chain-broken"));
    let err = open(&store, None).unwrap_err();
    match &err {
        Error::BrokenChain { key, previous, .. } => {
            assert_eq!(key, snap2);
            assert_eq!(previous, index["snapshots"][0].as_str().unwrap());
        }
        other => panic!("expected a broken chain, got {other}"),
    }

    let (_d4, store) = fixture_store("store", Some("delta-base-missing"));
    let err = open(&store, None).unwrap_err();
    assert!(err.is_verification(), "{err}");
    assert!(
        err.to_string().contains(snap2) && err.to_string().contains("missing or altered"),
        "{err}"
    );
}

#[test]
fn a_newest_manifest_of_an_unregistered_writer_is_ignored_not_restored() {
    // Snapshot 3, signed by a writer the keyset does not register, cannot
    // be restored, and it does not hide snapshot 2 either.
    let (_d, store) = fixture_store("store", Some("untrusted-writer"));
    let newest = open(&store, None).unwrap();
    assert_eq!(newest.sequence(), 2);
    assert!(
        newest
            .warnings()
            .iter()
            .any(|w| w.contains("snapshots/00000000000000000003-")
                && w.contains("does not register")),
        "{:?}",
        newest.warnings()
    );
    let err = open(&store, Some("3")).unwrap_err();
    assert!(matches!(err, Error::UntrustedWriter { .. }), "{err}");
    assert_eq!(err.code(), "untrusted_writer");
    assert!(err.is_verification());
    let (report, entries) = restore_store(&store, &admin());
    assert!(report.failures.is_empty(), "{report:#?}");
    assert_eq!(report.snapshot.as_ref().unwrap().sequence, 2);
    assert_restored_all_but(&entries, &[]);
}

#[test]
fn plain_store_needs_no_key_and_still_checks_hashes() {
    let (_d, store) = fixture_store("plain-store", None);
    let (report, entries) = restore_store(&store, &NoKey);
    assert!(report.failures.is_empty(), "{report:#?}");
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["pub", "pub/one.txt", "pub/two.bin"]);
    assert_eq!(entries[1].content, b"plain one\n");
    assert_eq!(entries[2].content, bytes(4, 5000));

    let (_d, store) = fixture_store("plain-store", Some("plain-bitflip"));
    let (report, entries) = restore_store(&store, &NoKey);
    assert_eq!(report.failures.len(), 1, "{report:#?}");
    let f = &report.failures[0];
    assert_eq!(f.code, "hash_mismatch", "{f:?}");
    assert_eq!(f.path.as_deref(), Some("pub/one.txt"));
    assert!(f.object.starts_with("segments/"));
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["pub", "pub/two.bin"]);
}

#[test]
fn paths_that_escape_are_refused_in_tar_and_directory_output() {
    let (dir, store) = fixture_store("evil-store", None);
    let (report, entries) = restore_store(&store, &admin());
    // Symbolic links that leave the tree: a tar carries them as they were
    // (each named in a warning), a directory output refuses them.
    let leave = [
        ("good/etc", "climbs out of the tree"),
        ("good/root", "absolute"),
    ];
    let expect = [
        ("../evil", "climbs out with '..'"),
        ("/abs", "absolute"),
        ("good/../../up", "climbs out"),
        ("good/hard-out", "climbs out"),
        ("good/hard-missing", "not restored"),
        ("good/fine-link/x", "not a directory"),
    ];
    for (path, why) in expect {
        let f = failure(&report, path);
        assert_eq!(f.code, "unsafe_path", "{path}: {f:?}");
        assert!(f.error.contains(why), "{path}: {f:?}");
    }
    assert_eq!(
        report.failures.len(),
        expect.len(),
        "{:#?}",
        report.failures
    );
    assert_eq!(report.links_that_leave, leave.len() as u64);
    for (path, why) in leave {
        let warned = format!("{path}: a link that leaves the tree, carried as it was");
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.starts_with(&warned) && w.contains(why)),
            "{path}: {:#?}",
            report.warnings
        );
    }
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["good/etc", "good/fine-link", "good/ok.txt", "good/root"]
    );

    // Directory output: nothing lands outside the destination.
    let dest = dir.path().join("out/dest");
    let source = LocalDir::new(&store).unwrap();
    let snapshot = open_snapshot(&source, &trust(&source), None).unwrap();
    let mut sink = DirSink::new(&dest).unwrap();
    let report = restore(
        &source,
        &snapshot,
        &admin(),
        &RestoreOptions::default(),
        &mut sink,
    )
    .unwrap();
    assert_eq!(report.failures.len(), expect.len() + leave.len());
    for (path, why) in leave {
        let f = failure(&report, path);
        assert!(f.error.contains(why), "{path}: {f:?}");
    }
    assert_eq!(report.links_that_leave, 0);
    let mut found: Vec<String> = Vec::new();
    for e in walk(&dir.path().join("out")) {
        found.push(e);
    }
    assert_eq!(
        found,
        [
            "dest",
            "dest/good",
            "dest/good/fine-link",
            "dest/good/ok.txt"
        ]
    );
    assert_eq!(std::fs::read(dest.join("good/ok.txt")).unwrap(), b"fine\n");
    assert_eq!(
        std::fs::read_link(dest.join("good/fine-link")).unwrap(),
        Path::new("ok.txt")
    );
}

fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}
