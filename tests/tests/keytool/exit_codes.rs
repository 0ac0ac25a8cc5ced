//! The documented exit codes: 2 usage, 3 key not found/locked/unsafe, 4 a
//! signature or key check failed, 5 the key service is unavailable (the key
//! sources' own tests cover 3 and 5 in depth).

use cbfs_core::{UserPublic, public_key_hex};
use cbfs_tests::{Workdir, run_ok};
use serde_json::Value;

use crate::{keytool, read, run_code, stderr, stdout_json, words};

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
/// other.json), and user alice (alice.key, alice.pub).
fn two_file_systems(work: &Workdir) {
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
             --to u.pub --threshold two --shares 3 --out g",
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
                     --threshold 1 --shares 2 --out grants"
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
    let delegate = "delegate --admin file:admin.key --keyset keyset.json \
         --to alice.pub --threshold 1 --shares 1";
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

    // A grant whose terms were edited (another user) fails against the
    // genuine keyset, naming the grant.
    work.write("keyset.json", &original);
    let grant = work.path("grants/alice.alice.1-of-1.grant");
    let mut doc: Value = serde_json::from_slice(&read(&grant)).unwrap();
    doc["user"] = Value::from("mallory");
    std::fs::write(&grant, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let err = fails(
        &work,
        "show --keyset keyset.json --grant grants/alice.alice.1-of-1.grant",
        4,
    );
    assert!(err.contains("alice.alice.1-of-1.grant"), "{err}");
    fails(&work, "list --keyset keyset.json --grants grants", 4);

    // A genuine grant checked against another file system's keyset: 4.
    ok(&work, &format!("{delegate} --scope default --out grants3"));
    fails(
        &work,
        "show --keyset other.json --grant grants3/default.alice.1-of-1.grant",
        4,
    );
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
#[test]
fn impossible_delegation_terms_are_a_usage_error() {
    let work = Workdir::new();
    two_file_systems(&work);
    for (m, n) in [(4, 3), (0, 3), (2, 256)] {
        let err = fails(
            &work,
            &format!(
                "delegate --admin file:admin.key --keyset keyset.json --scope alice \
                 --to alice.pub --threshold {m} --shares {n} --out grants"
            ),
            2,
        );
        assert!(err.contains("threshold") || err.contains("shares"), "{err}");
        assert!(!work.path("grants").exists());
    }
}
