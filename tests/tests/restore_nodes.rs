//! `cbfs-tier restore --node`: a user restores their files from a real store
//! through 3 real `cbfs-delegation serve` processes on 127.0.0.1, with
//! their own key, while nodes die or lie.
//!
//! - 2-of-3: the restore succeeds with every node up and with one killed;
//!   with two killed it fails with a clear message naming the dead nodes,
//!   and writes nothing of the locked scope.
//! - A node that returns tampered cfrags does not stop the restore while
//!   two honest nodes answer; with one honest node left the restore fails
//!   and names the liar.
//! - A revoked user restores nothing of the scope.

#![forbid(unsafe_code)]

#[allow(dead_code)]
#[path = "delegation/cluster.rs"]
mod cluster;
#[allow(dead_code)]
#[path = "delegation/liar.rs"]
mod liar;

use std::path::{Path, PathBuf};
use std::process::Output;

use cbfs_tests::{Compare, cbfs_cmd, random_bytes, run_ok};
use cluster::{Cluster, SCOPE, USER, text};
use liar::LyingProxy;
use serde_json::Value;

/// A source tree: files of the delegated scope under `proj/`, and files of
/// the `default` scope the user has no delegation of.
fn source(c: &Cluster) -> PathBuf {
    let src = c.work.mkdir("src");
    let proj = src.join(SCOPE);
    std::fs::create_dir_all(proj.join("deep/er")).unwrap();
    for i in 0..12 {
        std::fs::write(proj.join(format!("file-{i}")), random_bytes(30_000)).unwrap();
    }
    std::fs::write(proj.join("deep/er/note.txt"), b"the delegated scope").unwrap();
    std::fs::create_dir_all(src.join("other")).unwrap();
    std::fs::write(src.join("other/secret.txt"), b"not for alice").unwrap();
    src
}

/// Tiers `src` out to a local store, in several segments.
fn tier_out(c: &Cluster, src: &Path) -> PathBuf {
    let store = c.work.path("store");
    // The agent's writer key, registered: only its snapshots are trusted.
    run_ok(cluster::keytool(c.work.root()).args(cluster::words(
        "create-user writer --secret file:writer.key --public writer.pub",
    )));
    run_ok(cluster::keytool(c.work.root()).args(cluster::words(
        "add-writer --admin file:admin.key --keyset keyset.json --public writer.pub",
    )));
    run_ok(
        cbfs_cmd("cbfs-tier")
            .arg("out")
            .arg(src)
            .arg("--writer-key")
            .arg(format!("file:{}", c.work.path("writer.key").display()))
            .arg("--store")
            .arg(&store)
            .arg("--index")
            .arg(c.work.path("index"))
            .arg("--keyset")
            .arg(c.work.path("keyset.json"))
            .args(["--scope", &format!("{SCOPE}/**={SCOPE}")])
            .args(["--segment-size", "100K"]),
    );
    store
}

/// `cbfs-tier --json restore . DEST` as the user, through `urls`.
fn restore(c: &Cluster, store: &Path, urls: &[String], dest: &str, extra: &[&str]) -> Output {
    let mut cmd = cbfs_cmd("cbfs-tier");
    cmd.args(["--json", "restore", "--store"])
        .arg(store)
        .arg("--identity")
        .arg(format!(
            "file:{}",
            c.work.path(format!("{USER}.key")).display()
        ))
        .arg("--user")
        .arg(c.work.path(format!("{USER}.pub")))
        // The administrator's keyset, as the user got it from them: it
        // pins the administrator key the store's objects must be signed by.
        .arg("--keyset")
        .arg(c.work.path("keyset.json"))
        .args(Cluster::node_args(urls))
        .args(["--node-timeout", "20"])
        .args(extra)
        .arg(".")
        .arg(c.work.path(dest));
    cbfs_tests::run(&mut cmd)
}

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

/// The failures of a restore that exited 3 (partial), at least one.
fn failures_of(out: &Output) -> Vec<Value> {
    failures_with(out, 3)
}

/// The failures of a restore that exited `code`, at least one.
fn failures_with(out: &Output, code: i32) -> Vec<Value> {
    assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
    let r = report(out);
    let failures = r["failures"].as_array().unwrap().clone();
    assert!(!failures.is_empty(), "{r}");
    failures
}

/// The restore succeeded, brought back exactly the delegated scope, and
/// reported the other one as skipped.
fn assert_restored_scope(c: &Cluster, src: &Path, out: &Output, dest: &str) -> Value {
    let r = report(out);
    assert!(
        out.status.success() && r["failures"].as_array().unwrap().is_empty(),
        "{r}\n{}",
        text(&out.stderr)
    );
    assert!(r["skipped_scopes"]["default"].as_u64().unwrap() >= 1, "{r}");
    let restored = c.work.path(dest);
    let names: Vec<String> = cbfs_tests::describe(&restored, Compare::default())
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with(SCOPE)),
        "only the delegated scope comes back: {names:?}"
    );
    cbfs_tests::assert_same_tree(&src.join(SCOPE), &restored.join(SCOPE), Compare::default());
    r
}

/// Three nodes holding a 2-of-3 delegation of the scope, and a store.
fn two_of_three_with_a_store() -> (Cluster, PathBuf, PathBuf) {
    let c = Cluster::start(3, &[]);
    c.delegate(2, &[]);
    let src = source(&c);
    let store = tier_out(&c, &src);
    (c, src, store)
}

#[test]
fn restore_through_nodes_survives_one_dead_node_and_fails_clearly_with_two() {
    let (mut c, src, store) = two_of_three_with_a_store();
    let urls = c.urls();

    // All nodes up; m is learned from the nodes' answers.
    let out = restore(&c, &store, &urls, "all-up", &[]);
    assert_restored_scope(&c, &src, &out, "all-up");

    // One node killed: still restores, with m given.
    c.nodes[2].kill();
    let out = restore(&c, &store, &urls, "one-down", &[]);
    assert_restored_scope(&c, &src, &out, "one-down");

    // Two killed: a clear failure naming both, and nothing of the scope written.
    c.nodes[1].kill();
    let out = restore(&c, &store, &urls, "two-down", &[]);
    // Exit 5: nodes that are down are worth waiting for (retry later).
    for f in failures_with(&out, 5) {
        let error = f["error"].as_str().unwrap();
        assert!(
            error.contains("2 of the 3 delegation nodes must answer")
                && error.contains("only 1 did")
                && error.contains(&format!("node {} is down", urls[1]))
                && error.contains(&format!("node {} is down", urls[2])),
            "{error}"
        );
        assert!(
            f["object"].as_str().unwrap().starts_with("lockboxes/"),
            "{f}"
        );
    }
    let written = cbfs_tests::describe(&c.work.path("two-down"), Compare::default());
    assert!(
        written.keys().all(|k| !k.starts_with(b"proj/")),
        "nothing of the locked scope is written: {written:?}"
    );
    // The human report says the same.
    let mut cmd = cbfs_cmd("cbfs-tier");
    cmd.args(["restore", "--store"])
        .arg(&store)
        .arg("--identity")
        .arg(format!(
            "file:{}",
            c.work.path(format!("{USER}.key")).display()
        ))
        .args(["--user", USER])
        .args(Cluster::node_args(&urls))
        .arg(".")
        .arg(c.work.path("two-down-human"));
    let out = cbfs_tests::run(&mut cmd);
    assert_eq!(out.status.code(), Some(5));
    let said = text(&out.stderr);
    assert!(
        said.contains("delegation nodes must answer") && said.contains("is down"),
        "{said}"
    );
    // Said once in the log and once in the report, not once per member.
    assert!(
        said.matches("delegation nodes must answer").count() <= 2,
        "{said}"
    );
    // One line for all the members that failed alike (small files share
    // members, so there may be only one).
    assert!(
        said.contains("[unavailable]: the store of keys (the delegation nodes) is unavailable reading the lockboxes of scope `proj`"),
        "{said}"
    );
    c.assert_no_secrets();
}

#[test]
fn restore_names_a_lying_node() {
    let (mut c, src, store) = two_of_three_with_a_store();
    let liar = LyingProxy::start(&c.nodes[1].url);
    let urls = vec![c.urls()[0].clone(), liar.url.clone(), c.urls()[2].clone()];

    // Two honest nodes: the liar does not stop the restore, and when its
    // answer arrived in time it is named in the report.
    let out = restore(&c, &store, &urls, "honest-two", &[]);
    let r = assert_restored_scope(&c, &src, &out, "honest-two");
    for w in r["warnings"].as_array().unwrap() {
        let w = w.as_str().unwrap();
        if w.contains("LIED") {
            assert!(w.contains(&format!("node {} LIED", liar.url)), "{w}");
        }
    }

    // One honest node left: the restore fails and names the liar.
    c.nodes[2].kill();
    let out = restore(&c, &store, &urls, "one-honest", &[]);
    assert!(liar.lies.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    for f in failures_of(&out) {
        let error = f["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("node {} LIED", liar.url))
                && error.contains("faulty or compromised"),
            "{error}"
        );
    }
}

/// A user the administrator revoked restores nothing of the scope through
/// `cbfs-tier restore`: every lockbox of it fails with the nodes' refusal
/// (not a retryable outage), and no file of the scope is written.
#[test]
fn a_revoked_user_restores_nothing_of_the_scope() {
    let (c, src, store) = two_of_three_with_a_store();
    let urls = c.urls();
    let out = restore(&c, &store, &urls, "before", &[]);
    assert_restored_scope(&c, &src, &out, "before");

    run_ok(&mut c.revoke_cmd(&[]));
    let out = restore(&c, &store, &urls, "after", &[]);
    let code = out.status.code();
    assert!(matches!(code, Some(3) | Some(4)), "{}", text(&out.stderr));
    for f in failures_with(&out, code.unwrap()) {
        let error = f["error"].as_str().unwrap();
        assert!(error.contains("revoked"), "{error}");
        assert!(
            f["object"].as_str().unwrap().starts_with("lockboxes/"),
            "{f}"
        );
    }
    let written = cbfs_tests::describe(&c.work.path("after"), Compare::default());
    assert!(
        written.keys().all(|k| !k.starts_with(SCOPE.as_bytes())),
        "nothing of the revoked scope is written: {written:?}"
    );
    c.assert_no_secrets();
}

#[test]
fn node_options_are_checked() {
    let c = Cluster::start(1, &[]);
    let store = c.work.path("store");
    std::fs::create_dir_all(&store).unwrap();
    let key = format!("file:{}", c.work.path(format!("{USER}.key")).display());
    // --node without --user.
    let mut cmd = cbfs_cmd("cbfs-tier");
    cmd.args(["restore", "--store"]).arg(&store).args([
        "--identity",
        &key,
        "--node",
        &c.urls()[0],
        ".",
        "x",
    ]);
    let out = cbfs_tests::run(&mut cmd);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--user"),
        "{}",
        text(&out.stderr)
    );
    // Another user's public file with this key.
    run_ok(cluster::keytool(c.work.root()).args(cluster::words(
        "create-user bob --secret file:bob.key --public bob.pub",
    )));
    let mut cmd = cbfs_cmd("cbfs-tier");
    cmd.args(["restore", "--store"])
        .arg(&store)
        .args(["--keyset"])
        .arg(c.work.path("keyset.json"))
        .args(["--identity", &key, "--node", &c.urls()[0], "--user"])
        .arg(c.work.path("bob.pub"))
        .args([".", "x"]);
    let out = cbfs_tests::run(&mut cmd);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not the key of user `bob`"),
        "{}",
        text(&out.stderr)
    );
}

/// `rotate-scope` with the nodes: the user's delegation of the retired key
/// is refused until `delegate --reissue` issues it again under the new key;
/// a revoked user is not issued again.
#[test]
fn rotate_scope_retires_delegations_until_they_are_issued_again() {
    let (c, src, store) = two_of_three_with_a_store();
    let urls = c.urls();
    let out = restore(&c, &store, &urls, "before", &[]);
    assert_restored_scope(&c, &src, &out, "before");
    // bob had a delegation and lost it.
    let kt = || cluster::keytool(c.work.root());
    run_ok(kt().args(cluster::words(
        "create-user bob --secret file:bob.key --public bob.pub",
    )));
    run_ok(
        kt().args(cluster::words(&format!(
            "delegate --admin file:admin.key --keyset keyset.json --scope {SCOPE} --to bob.pub --threshold 2"
        )))
        .args(Cluster::node_args(&urls)),
    );
    run_ok(
        kt().args(cluster::words(&format!(
            "revoke --admin file:admin.key --keyset keyset.json --scope {SCOPE} --user bob.pub"
        )))
        .args(Cluster::node_args(&urls)),
    );

    let out = run_ok(
        kt().args(cluster::words(&format!(
            "--json rotate-scope --admin file:admin.key --keyset keyset.json --scope {SCOPE} --store"
        )))
        .arg(&store)
        .args(Cluster::node_args(&urls)),
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["finished"], true, "{v}");
    for n in v["published"]["nodes"].as_array().unwrap() {
        assert_eq!(n["updated"], true, "{v}");
    }

    // The nodes refuse the delegation of the retired key.
    let out = restore(&c, &store, &urls, "retired", &[]);
    let failures = failures_of(&out);
    for f in &failures {
        let error = f["error"].as_str().unwrap();
        assert!(error.contains("retired"), "{error}");
    }
    assert!(
        cbfs_tests::describe(&c.work.path("retired"), Compare::default())
            .keys()
            .all(|k| !k.starts_with(b"proj/")),
        "nothing of the scope is written"
    );

    // Issued again for every current user: alice, not the revoked bob.
    let out = run_ok(
        kt().args(cluster::words(&format!(
            "--json delegate --reissue --admin file:admin.key --keyset keyset.json --scope {SCOPE}"
        )))
        .args(Cluster::node_args(&urls)),
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let users: Vec<&str> = v["reissued"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, vec![USER], "{v}");
    assert_eq!(v["key_version"], 2, "{v}");
    let out = restore(&c, &store, &urls, "after", &[]);
    assert_restored_scope(&c, &src, &out, "after");
}
