//! The documented exit codes: 2 usage, 3 key not found/locked/unsafe, 4 a
//! signature or key check failed, 5 the key service is unavailable (the key
//! sources' own tests cover 3 and 5 in depth).

use cbfs_core::{Unlock, UserPublic, UserSecret, public_key_hex};
use cbfs_delegation::NodeIdentity;
use cbfs_tests::{Workdir, run_ok};
use serde_json::Value;

use crate::{
    init_node, keytool, node_key_args, read, run_code, share_files, stderr, stdout_json, words,
};

/// Runs the keytool command `line` in `work`, which must succeed.
fn ok(work: &Workdir, line: &str) {
    run_ok(keytool(work.root()).args(words(line)));
}

/// Runs the keytool command `line` in `work`, which must exit with `code`;
/// returns its stderr.
fn fails(work: &Workdir, line: &str, code: i32) -> String {
    stderr(&run_code(keytool(work.root()).args(words(line)), code))
}

/// fs1 (admin.key, keyset.json) with scope alice, fs2 (other.key,
/// other.json), user alice (alice.key, alice.pub), and the delegation nodes
/// node1, node2 and node3 (DATA/node.key, DATA/node.pub).
fn two_file_systems(work: &Workdir) {
    for node in NODES {
        init_node(work, node);
    }
    ok(
        work,
        "create-admin --fs fs1 --secret file:admin.key --keyset keyset.json",
    );
    ok(
        work,
        "add-scope --admin file:admin.key --keyset keyset.json --scope alice",
    );
    ok(
        work,
        "create-admin --fs fs2 --secret file:other.key --keyset other.json",
    );
    ok(
        work,
        "create-user alice --secret file:alice.key --public alice.pub",
    );
}

const NODES: [&str; 3] = ["node1", "node2", "node3"];

#[test]
fn usage_errors_exit_2_and_create_nothing() {
    let work = Workdir::new();
    for line in [
        "",
        "no-such-command",
        "create-admin --fs x --keyset k.json",
        "create-admin --fs x --secret file:a.key --keyset k.json --bogus",
        // Names that are not names.
        "create-admin --fs ../etc --secret file:a.key --keyset k.json",
        "add-scope --admin file:a.key --keyset k.json --scope a/b",
        "create-user bad/name --secret file:a.key --public a.pub",
        // Values of the wrong kind.
        "create-user u --secret file:a.key --public a.pub --protect rot13",
        "delegate --admin file:a.key --keyset k.json --scope s \
             --to u.pub --threshold two --node-key n.pub --out g",
        // Delegations that name no node, or mix the two ways to reach them:
        // every share is for one node, sent to it or sealed for it.
        "delegate --admin file:a.key --keyset k.json --scope s --to u.pub --threshold 1 --out g",
        "delegate --admin file:a.key --keyset k.json --scope s --to u.pub --threshold 1 \
             --node-key n.pub",
        "delegate --admin file:a.key --keyset k.json --scope s --to u.pub --threshold 1 \
             --node http://127.0.0.1:7600 --out g",
        // Pins (--node-key with --node) must be one per node.
        "delegate --admin file:a.key --keyset k.json --scope s --to u.pub --threshold 1 \
             --node http://127.0.0.1:7600 --node http://127.0.0.1:7601 --node-key n.pub",
        // A node's key over plain HTTP from another machine needs a pin.
        "delegate --admin file:a.key --keyset k.json --scope s --to u.pub --threshold 1 \
             --node http://192.0.2.7:7600",
        // The old form, which gave the user every share, is gone.
        "delegate --admin file:a.key --keyset k.json --scope s \
             --to u.pub --threshold 2 --shares 3 --out g",
        "completions no-such-shell",
    ] {
        let err = fails(&work, line, 2);
        assert!(!err.is_empty(), "`{line}`: a usage error says why");
    }
    // Key sources that do not parse: the error names the accepted forms.
    for spec in [
        "a.key",
        "file:",
        "keyring:noslash",
        "keyring:/name",
        "openbao:onlykey",
        "openbao:bad key:p",
        "s3:bucket/key",
    ] {
        for args in [
            [
                "create-admin",
                "--fs",
                "x",
                "--keyset",
                "k.json",
                "--secret",
                spec,
            ],
            [
                "show", "--keyset", "k.json", "--user", "u.pub", "--secret", spec,
            ],
        ] {
            let err = stderr(&run_code(keytool(work.root()).args(args), 2));
            assert!(
                err.contains(&format!("`{spec}`"))
                    && err.contains("file:PATH")
                    && err.contains("keyring:SERVICE/NAME"),
                "{spec}: {err}"
            );
        }
    }
    let left: Vec<_> = std::fs::read_dir(work.root()).unwrap().collect();
    assert!(left.is_empty(), "usage errors created {left:?}");
}

#[test]
fn wrong_admin_key_for_a_keyset_exits_4() {
    let work = Workdir::new();
    two_file_systems(&work);
    let before = read(&work.path("keyset.json"));
    // Another file system's root secret, and a user's secret.
    for wrong in ["file:other.key", "file:alice.key"] {
        let admin = format!("--admin {wrong} --keyset keyset.json");
        for line in [
            format!("add-scope {admin} --scope bob"),
            format!("add-writer {admin} --public alice.pub"),
            format!(
                "delegate {admin} --scope alice --to alice.pub \
                     --threshold 1 {} --out grants",
                node_key_args(&NODES[..2])
            ),
            format!("export-scope {admin} --scope alice --secret file:alice-scope.key"),
        ] {
            let err = fails(&work, &line, 4);
            assert!(
                err.contains("does not belong to keyset `fs1`"),
                "`{line}`: {err}"
            );
        }
    }
    assert_eq!(read(&work.path("keyset.json")), before, "keyset untouched");
    assert!(!work.path("grants").exists(), "no grants from a wrong key");
    assert!(
        !work.path("alice-scope.key").exists(),
        "no scope secret exported"
    );
    // And `show` says the key is none of the file system's.
    let out = run_ok(keytool(work.root()).args(words(
        "show --json --keyset keyset.json --secret file:other.key",
    )));
    assert_eq!(
        stdout_json(&out)["secret"]["is"],
        "a key that matches none of the given files"
    );
}

#[test]
fn tampered_keyset_or_grant_exits_4_naming_the_file() {
    let work = Workdir::new();
    two_file_systems(&work);
    let delegate = format!(
        "delegate --admin file:admin.key --keyset keyset.json \
         --to alice.pub --threshold 1 {}",
        node_key_args(&NODES[..1])
    );
    ok(&work, &format!("{delegate} --scope alice --out grants"));
    let original = read(&work.path("keyset.json"));

    // An attacker swaps scope alice's key for one they hold the secret of
    // (any valid public key will do: here the user's).
    let mut doc: Value = serde_json::from_slice(&original).unwrap();
    let user_pub = UserPublic::load(&work.path("alice.pub")).unwrap();
    let theirs = public_key_hex(user_pub.public_key());
    assert_ne!(doc["scopes"]["alice"], theirs.as_str());
    doc["scopes"]["alice"] = Value::from(theirs);
    let forged = serde_json::to_vec_pretty(&doc).unwrap();
    work.write("keyset.json", &forged);

    for line in [
        "show --keyset keyset.json".to_string(),
        "list --json --keyset keyset.json".to_string(),
        "add-scope --admin file:admin.key --keyset keyset.json --scope bob".to_string(),
        format!("{delegate} --scope alice --out grants2"),
        "export-scope --admin file:admin.key --keyset keyset.json --scope alice --secret file:s.key"
            .to_string(),
    ] {
        let err = fails(&work, &line, 4);
        assert!(
            err.contains("keyset.json") && err.contains("does not verify"),
            "`{line}`: the error names the file: {err}"
        );
    }
    assert_eq!(
        read(&work.path("keyset.json")),
        forged,
        "a forged keyset is never re-signed"
    );
    assert!(!work.path("grants2").exists());
    assert!(!work.path("s.key").exists());

    // A forged serial is caught too.
    let mut doc: Value = serde_json::from_slice(&original).unwrap();
    doc["serial"] = Value::from(7);
    work.write("keyset.json", serde_json::to_vec_pretty(&doc).unwrap());
    fails(&work, "list --keyset keyset.json", 4);

    // A share whose public terms were edited (another user) fails against
    // the genuine keyset, naming the share file. (The grant inside is sealed
    // for its node, which checks it on import; see the delegation tests.)
    work.write("keyset.json", &original);
    let share = work.path("grants/alice.alice.1-of-1.share");
    assert_eq!(
        share_files(&work.path("grants")),
        std::slice::from_ref(&share)
    );
    let genuine = read(&share);
    ok(
        &work,
        "show --keyset keyset.json --share grants/alice.alice.1-of-1.share",
    );
    let mut doc: Value = serde_json::from_slice(&genuine).unwrap();
    assert_eq!(doc["delegation"]["user"], "alice");
    doc["delegation"]["user"] = Value::from("mallory");
    std::fs::write(&share, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let err = fails(
        &work,
        "show --keyset keyset.json --share grants/alice.alice.1-of-1.share",
        4,
    );
    assert!(
        err.contains("alice.alice.1-of-1.share") && err.contains("does not verify"),
        "{err}"
    );
    let err = fails(&work, "list --keyset keyset.json --shares grants", 4);
    assert!(err.contains("alice.alice.1-of-1.share"), "{err}");

    // Its list of nodes swapped for another node's key: caught the same way.
    let mut doc: Value = serde_json::from_slice(&genuine).unwrap();
    let stranger = public_key_hex(&UserSecret::generate().public_key());
    doc["delegation"]["nodes"] = Value::from(vec![stranger]);
    std::fs::write(&share, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let err = fails(
        &work,
        "show --keyset keyset.json --share grants/alice.alice.1-of-1.share",
        4,
    );
    assert!(err.contains("alice.alice.1-of-1.share"), "{err}");

    // A genuine share checked against another file system's keyset: 4.
    std::fs::write(&share, &genuine).unwrap();
    ok(&work, &format!("{delegate} --scope default --out grants3"));
    let err = fails(
        &work,
        "show --keyset other.json --share grants3/default.alice.1-of-1.share",
        4,
    );
    assert!(err.contains("default.alice.1-of-1.share"), "{err}");
}

#[test]
fn json_errors_carry_the_exit_code() {
    let work = Workdir::new();
    two_file_systems(&work);
    for (line, code) in [
        ("--json show --keyset keyset.json --secret file:nope.key", 3),
        (
            "--json add-scope --admin file:other.key --keyset keyset.json --scope b",
            4,
        ),
    ] {
        let out = run_code(keytool(work.root()).args(words(line)), code);
        let v = stdout_json(&out);
        assert_eq!(v["exit_code"], code, "{v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        assert!(stderr(&out).contains("error"), "{}", stderr(&out));
    }
}

/// Impossible delegation terms are a usage error (exit 2), not a failed
/// signature or key check (exit 4): scripts read 4 as "a key or a document
/// is wrong", which sends an operator hunting for tampering over a typo.
/// n is the number of nodes, so it is the node keys that make the terms.
#[test]
fn impossible_delegation_terms_are_a_usage_error() {
    let work = Workdir::new();
    two_file_systems(&work);
    // 256 nodes, one more than a delegation can have: their node.pub files
    // made in-process, by the code `cbfs-delegation init` runs.
    let many: Vec<String> = (1..=256).map(|i| format!("many/node{i}")).collect();
    for data in &many {
        NodeIdentity::init(&work.path(data), None, &Unlock::default()).unwrap();
    }
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    for (m, nodes) in [(4, &NODES[..]), (0, &NODES[..]), (2, &many[..])] {
        let err = fails(
            &work,
            &format!(
                "delegate --admin file:admin.key --keyset keyset.json --scope alice \
                 --to alice.pub --threshold {m} {} --out grants",
                node_key_args(nodes)
            ),
            2,
        );
        assert!(err.contains("threshold") && err.contains("shares"), "{err}");
        assert!(!work.path("grants").exists());
    }
    // Each share needs a node of its own: the same node twice, also under
    // two file names, is refused before anything is made.
    std::fs::copy(work.path("node1/node.pub"), work.path("copy-of-node1.pub")).unwrap();
    for twice in [
        "--node-key node1/node.pub --node-key node1/node.pub",
        "--node-key node1/node.pub --node-key copy-of-node1.pub",
    ] {
        let err = fails(
            &work,
            &format!(
                "delegate --admin file:admin.key --keyset keyset.json --scope alice \
                 --to alice.pub --threshold 1 {twice} --out grants"
            ),
            2,
        );
        assert!(err.contains("same node"), "{err}");
        assert!(!work.path("grants").exists());
    }
    // A file that is not a node key: a usage error naming it.
    let err = fails(
        &work,
        "delegate --admin file:admin.key --keyset keyset.json --scope alice \
         --to alice.pub --threshold 1 --node-key alice.pub --out grants",
        2,
    );
    assert!(err.contains("alice.pub"), "{err}");
    assert!(!work.path("grants").exists());
}

/// A "node key" that is the user's own key would seal a share for the user:
/// with m such shares, the user could compute the scope secret. The key
/// tool refuses it (exit 2, naming the file), and writes nothing.
#[test]
fn a_node_key_that_is_the_users_own_key_is_refused() {
    let work = Workdir::new();
    two_file_systems(&work);
    let alice = UserPublic::load(&work.path("alice.pub")).unwrap();
    for (file, key) in [
        ("alice-as-node.pub", *alice.public_key()),
        ("alice-signing-as-node.pub", *alice.verifying_key()),
    ] {
        std::fs::write(
            work.path(file),
            serde_json::to_vec(&cbfs_wire::NodePublicFile::new(&key)).unwrap(),
        )
        .unwrap();
        let err = fails(
            &work,
            &format!(
                "delegate --admin file:admin.key --keyset keyset.json --scope alice \
                 --to alice.pub --threshold 2 --node-key node1/node.pub --node-key {file} \
                 --node-key node2/node.pub --out grants"
            ),
            2,
        );
        assert!(
            err.contains(file) && err.contains("`alice` itself"),
            "{err}"
        );
        assert!(!work.path("grants").exists(), "nothing was written");
    }
}
