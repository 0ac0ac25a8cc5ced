//! `file:PATH` key sources: the key alone in a 0600 file, or wrapped by age.

use std::process::Command;

use cbfs_core::{UserPublic, public_key_hex};
use cbfs_tests::{Workdir, assert_no_secret, random_bytes, run_fail, run_ok};
use serde_json::Value;

use crate::{
    Secrets, admin_from, age_decrypt, age_identity, chmod, keytool, load_keyset, mode,
    raw_key_file, read, run_code, stderr, stdout_json, user_from, words,
};

/// A new file system in `work`: root secret `admin.key`, keyset
/// `keyset.json`. Returns the seed.
fn create_fs(work: &Workdir) -> Vec<u8> {
    run_ok(keytool(work.root()).args(words(
        "create-admin --fs fs1 --secret file:admin.key --keyset keyset.json",
    )));
    raw_key_file(&work.path("admin.key"))
}

fn add_scope(work: &Workdir, admin: &str, scope: &str) -> Command {
    let mut cmd = keytool(work.root());
    cmd.args([
        "add-scope",
        "--admin",
        admin,
        "--keyset",
        "keyset.json",
        "--scope",
        scope,
    ]);
    cmd
}

#[test]
fn file_key_is_0600_and_holds_exactly_the_seed() {
    let work = Workdir::new();
    let admin_bytes = create_fs(&work);
    let admin = admin_from(&admin_bytes);
    let keyset = load_keyset(&work.path("keyset.json"));
    assert_eq!(
        keyset.admin_verifying_key(),
        &admin.verifying_key(),
        "the 32 bytes in the key file are the root seed of the keyset"
    );
    let ks_json: Value = serde_json::from_slice(&read(&work.path("keyset.json"))).unwrap();
    assert_eq!(
        ks_json["admin_verifying_key"],
        public_key_hex(&admin.verifying_key())
    );
    assert_eq!(
        ks_json["scopes"]["default"],
        public_key_hex(&admin.scope(&crate::label("default")).public_key())
    );

    run_ok(keytool(work.root()).args(words("create-user u1 --secret file:u1.key --public u1.pub")));
    let user = user_from(&raw_key_file(&work.path("u1.key")));
    let public = UserPublic::load(&work.path("u1.pub")).unwrap();
    assert_eq!(public.public_key(), &user.public_key());
    assert_eq!(public.verifying_key(), &user.verifying_key());

    // A key file of the wrong length is refused, naming the file.
    work.write_private("short.key", &admin_bytes[..31]);
    let out = run_code(&mut add_scope(&work, "file:short.key", "x"), 3);
    assert!(
        stderr(&out).contains("short.key") && stderr(&out).contains("31 bytes"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn key_files_others_can_read_are_refused_with_a_chmod_hint() {
    let work = Workdir::new();
    let admin_bytes = create_fs(&work);
    let key = work.path("admin.key");
    let keyset_before = read(&work.path("keyset.json"));
    for loose in [0o644, 0o640, 0o604, 0o660, 0o602] {
        chmod(&key, loose);
        let out = run_code(&mut add_scope(&work, "file:admin.key", "alice"), 3);
        let err = stderr(&out);
        assert!(
            err.contains("chmod 600") && err.contains("admin.key"),
            "mode {loose:o}: {err}"
        );
        assert!(
            err.contains(&format!("{loose:04o}")),
            "names the mode: {err}"
        );
        assert_eq!(read(&work.path("keyset.json")), keyset_before);
        // Also where the key is only identified.
        run_code(
            keytool(work.root()).args(words("show --keyset keyset.json --secret file:admin.key")),
            3,
        );
        // Also when it is the source of a copy.
        run_code(
            keytool(work.root()).args(words("copy --from file:admin.key --to file:copy.key")),
            3,
        );
        assert!(!work.path("copy.key").exists());
    }
    chmod(&key, 0o600);
    run_ok(&mut add_scope(&work, "file:admin.key", "alice"));
    assert_eq!(read(&key), admin_bytes);

    let mut secrets = Secrets::default();
    secrets.add("root seed", &admin_bytes);
    secrets.assert_absent_from_commands();
}

#[test]
fn existing_keys_are_never_overwritten() {
    let work = Workdir::new();
    let admin_bytes = create_fs(&work);
    let key = work.path("admin.key");

    // create-admin onto an existing key: refused, key intact, no new keyset.
    let out = run_code(
        keytool(work.root()).args(words(
            "create-admin --fs fs2 --secret file:admin.key --keyset keyset2.json",
        )),
        3,
    );
    assert!(
        stderr(&out).contains("already exists") && stderr(&out).contains("file:admin.key"),
        "{}",
        stderr(&out)
    );
    assert_eq!(read(&key), admin_bytes, "the old key is intact");
    assert_eq!(mode(&key), 0o600);
    assert!(
        !work.path("keyset2.json").exists(),
        "no keyset without its secret"
    );

    // Nor with create-user, export-scope or copy.
    run_code(
        keytool(work.root()).args(words(
            "create-user u --secret file:admin.key --public u.pub",
        )),
        3,
    );
    assert!(!work.path("u.pub").exists());
    run_code(
        keytool(work.root()).args(words(
            "export-scope --admin file:admin.key --keyset keyset.json \
             --scope default --secret file:admin.key",
        )),
        3,
    );
    work.write_private("other.key", random_bytes(32));
    run_code(
        keytool(work.root()).args(["copy", "--from", "file:other.key", "--to", "file:admin.key"]),
        3,
    );
    assert_eq!(read(&key), admin_bytes, "the old key is still intact");

    // An existing keyset is not overwritten either, and no secret is made.
    let keyset_before = read(&work.path("keyset.json"));
    let out = run_fail(keytool(work.root()).args(words(
        "create-admin --fs fs3 --secret file:admin3.key --keyset keyset.json",
    )));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(read(&work.path("keyset.json")), keyset_before);
    assert!(!work.path("admin3.key").exists());
}

#[test]
fn age_x25519_wrapped_key_needs_its_identity() {
    let work = Workdir::new();
    let (identity, recipient, identity_secret) = age_identity(&work, "id.txt");
    let (other_identity, other_recipient, other_secret) = age_identity(&work, "other-id.txt");
    let (stranger, _, _) = age_identity(&work, "stranger-id.txt");

    run_ok(keytool(work.root()).args([
        "create-admin",
        "--fs",
        "fs1",
        "--secret",
        "file:admin.age",
        "--keyset",
        "keyset.json",
        "--protect",
        "age",
        "--recipient",
        &recipient,
        "--recipient",
        &other_recipient,
    ]));
    let wrapped_path = work.path("admin.age");
    assert_eq!(mode(&wrapped_path), 0o600);
    let wrapped = read(&wrapped_path);
    assert!(
        wrapped.starts_with(b"age-encryption.org/v1\n"),
        "an age file"
    );
    // The real age CLI opens it, with either identity, to the root seed.
    let admin_bytes = age_decrypt(&identity, &wrapped_path);
    assert_eq!(age_decrypt(&other_identity, &wrapped_path), admin_bytes);
    let admin = admin_from(&admin_bytes);
    assert_eq!(
        load_keyset(&work.path("keyset.json")).admin_verifying_key(),
        &admin.verifying_key()
    );
    assert_no_secret(&wrapped, &admin_bytes, "the age-wrapped key file");

    // Without an identity: a clear refusal, exit 3.
    let out = run_code(&mut add_scope(&work, "file:admin.age", "alice"), 3);
    let err = stderr(&out);
    assert!(
        err.contains("admin.age")
            && err.contains("--age-identity")
            && err.contains("CBFS_AGE_IDENTITY"),
        "{err}"
    );
    // With the wrong identity: refused, exit 3.
    let out = run_code(
        add_scope(&work, "file:admin.age", "alice")
            .arg("--age-identity")
            .arg(&stranger),
        3,
    );
    assert!(stderr(&out).contains("admin.age"), "{}", stderr(&out));

    // With --age-identity, and with CBFS_AGE_IDENTITY.
    run_ok(
        add_scope(&work, "file:admin.age", "alice")
            .arg("--age-identity")
            .arg(&identity),
    );
    run_ok(add_scope(&work, "file:admin.age", "bob").env("CBFS_AGE_IDENTITY", &other_identity));
    let keyset = load_keyset(&work.path("keyset.json"));
    assert_eq!(keyset.serial(), 2);
    assert_eq!(
        keyset.scope(&crate::label("bob")),
        Some(&admin.scope(&crate::label("bob")).public_key())
    );
    let out = run_ok(
        keytool(work.root())
            .args(words(
                "show --json --keyset keyset.json --secret file:admin.age",
            ))
            .env("CBFS_AGE_IDENTITY", &identity),
    );
    assert_eq!(
        stdout_json(&out)["secret"]["is"],
        "the root secret of file system `fs1`"
    );

    // A recipient that is not one, or without --protect age: nothing is made.
    run_fail(keytool(work.root()).args(words(
        "create-user u --secret file:u.age --public u.pub \
         --protect age --recipient age1notarecipient",
    )));
    run_fail(keytool(work.root()).args([
        "create-user",
        "u",
        "--secret",
        "file:u.age",
        "--public",
        "u.pub",
        "--recipient",
        &recipient,
    ]));
    assert!(!work.path("u.age").exists() && !work.path("u.pub").exists());

    let mut secrets = Secrets::default();
    secrets.add_admin("fs1", &admin, &["default", "alice", "bob"]);
    secrets.add("age identity", &identity_secret);
    secrets.add("second age identity", &other_secret);
    secrets.assert_absent_from_commands();
}

#[test]
fn passphrase_wrapped_key_round_trips_and_a_wrong_passphrase_fails() {
    let work = Workdir::new();
    let passphrase = format!("correct horse {}", hex::encode(random_bytes(12)));
    let pass_file = work.write_private("pass.txt", format!("{passphrase}\n"));
    let wrong_file = work.write_private("wrong.txt", "not the passphrase at all\n");

    run_ok(
        keytool(work.root())
            .args(words(
                "create-user carol --secret file:carol.age --public carol.pub --protect passphrase",
            ))
            .env("CBFS_PASSPHRASE_FILE", &pass_file),
    );
    let wrapped_path = work.path("carol.age");
    assert_eq!(mode(&wrapped_path), 0o600);
    let wrapped = read(&wrapped_path);
    assert!(
        wrapped.starts_with(b"age-encryption.org/v1\n-> scrypt "),
        "an age scrypt file"
    );

    // The right passphrase opens it: copy it out to a raw key and check it.
    run_ok(
        keytool(work.root())
            .args(["copy", "--from", "file:carol.age", "--to", "file:carol.key"])
            .env("CBFS_PASSPHRASE_FILE", &pass_file),
    );
    let carol_bytes = raw_key_file(&work.path("carol.key"));
    let carol = user_from(&carol_bytes);
    assert_eq!(
        UserPublic::load(&work.path("carol.pub"))
            .unwrap()
            .public_key(),
        &carol.public_key()
    );
    assert_no_secret(&wrapped, &carol_bytes, "the passphrase-wrapped key file");

    // A wrong passphrase: refused, exit 3.
    let out = run_code(
        keytool(work.root())
            .args(["show", "--user", "carol.pub", "--secret", "file:carol.age"])
            .env("CBFS_PASSPHRASE_FILE", &wrong_file),
        3,
    );
    assert!(
        stderr(&out).contains("carol.age") && stderr(&out).contains("passphrase"),
        "{}",
        stderr(&out)
    );
    // No passphrase and no terminal: refused, saying how to give one.
    let out = run_code(
        keytool(work.root()).args(["show", "--user", "carol.pub", "--secret", "file:carol.age"]),
        3,
    );
    assert!(
        stderr(&out).contains("CBFS_PASSPHRASE_FILE"),
        "{}",
        stderr(&out)
    );
    // A passphrase file others can read is refused too, before any work.
    let loose = work.write("loose-pass.txt", format!("{passphrase}\n"));
    chmod(&loose, 0o644);
    let out = run_code(
        keytool(work.root())
            .args(["show", "--user", "carol.pub", "--secret", "file:carol.age"])
            .env("CBFS_PASSPHRASE_FILE", &loose),
        3,
    );
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    let out = run_code(
        keytool(work.root())
            .args(words(
                "create-user dave --secret file:dave.age --public dave.pub --protect passphrase",
            ))
            .env("CBFS_PASSPHRASE_FILE", &loose),
        3,
    );
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    assert!(!work.path("dave.age").exists());

    let mut secrets = Secrets::default();
    secrets.add("carol's seed", &carol_bytes);
    secrets.add("passphrase", passphrase.as_bytes());
    secrets.assert_absent_from_commands();
}

/// A create that fails after the secret was stored (here: the keyset or
/// public key file cannot be written) must not leave the new secret behind:
/// the user fixes the path and runs the same command again, which must work.
#[test]
fn a_failed_create_leaves_no_orphan_secret_behind() {
    let work = Workdir::new();
    let out = run_fail(keytool(work.root()).args(words(
        "create-admin --fs fs1 --secret file:admin.key --keyset no-such-dir/keyset.json",
    )));
    assert!(
        stderr(&out).contains("no-such-dir/keyset.json"),
        "{}",
        stderr(&out)
    );
    assert!(
        !work.path("admin.key").exists(),
        "create-admin failed, yet left a root secret without a keyset in admin.key"
    );
    run_ok(keytool(work.root()).args(words(
        "create-admin --fs fs1 --secret file:admin.key --keyset keyset.json",
    )));

    run_fail(keytool(work.root()).args(words(
        "create-user u --secret file:u.key --public no-such-dir/u.pub",
    )));
    assert!(
        !work.path("u.key").exists(),
        "create-user failed, yet left a user secret without a public key file in u.key"
    );
}
