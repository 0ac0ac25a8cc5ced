//! `keyring:SERVICE/NAME` key sources, in the Linux kernel keyring, in a
//! fresh session keyring per test. Every entry's service is the session's
//! name, so the session's cleanup finds it (also in the shared persistent
//! keyring).

use std::process::{Command, Output};

use cbfs_tests::{KeyringSession, Workdir, run_ok};

use crate::{
    Secrets, admin_from, fixture_admin_key, keytool, label, load_keyset, raw_key_file,
    recover_fixture, run_code, stderr, stdout_json, text, user_from,
};

/// Runs keytool with `args` inside `session`, which must succeed.
fn ok_in(session: &KeyringSession, work: &Workdir, args: &[&str]) -> Output {
    let mut cmd = keytool(work.root());
    cmd.args(args);
    run_ok(&mut session.wrap(cmd))
}

/// Runs keytool with `args` inside `session`, which must fail with `code`.
fn fails_in(session: &KeyringSession, work: &Workdir, args: &[&str], code: i32) -> Output {
    let mut cmd: Command = keytool(work.root());
    cmd.args(args);
    run_code(&mut session.wrap(cmd), code)
}

#[test]
fn keyring_secret_is_loaded_by_another_process_and_never_overwritten() {
    let work = Workdir::new();
    let session = KeyringSession::new();
    let service = session.name().to_string();
    let admin_src = format!("keyring:{service}/admin");

    let out = ok_in(
        &session,
        &work,
        &[
            "create-admin",
            "--fs",
            "kr",
            "--secret",
            &admin_src,
            "--keyset",
            "keyset.json",
        ],
    );
    // The durability note: kernel keyring keys do not outlive a reboot.
    let note = stderr(&out);
    assert!(
        note.contains("do not survive a reboot") && note.contains("cbfs-keytool copy"),
        "create-admin into the keyring must warn about durability: {note}"
    );
    assert!(
        text(&out.stdout).contains(&admin_src),
        "{}",
        text(&out.stdout)
    );

    // A second process finds it, and it is the root secret of this keyset.
    let out = ok_in(
        &session,
        &work,
        &[
            "show",
            "--json",
            "--keyset",
            "keyset.json",
            "--secret",
            &admin_src,
        ],
    );
    let v = stdout_json(&out);
    assert_eq!(v["secret"]["source"], admin_src.as_str());
    assert_eq!(v["secret"]["is"], "the root secret of file system `kr`");
    // And a third one uses it as the administrator key.
    ok_in(
        &session,
        &work,
        &[
            "add-scope",
            "--admin",
            &admin_src,
            "--keyset",
            "keyset.json",
            "--scope",
            "alice",
        ],
    );

    // A durable copy in a file: exactly the root seed.
    ok_in(
        &session,
        &work,
        &[
            "copy",
            "--from",
            &admin_src,
            "--to",
            "file:admin-backup.key",
        ],
    );
    let admin_bytes = raw_key_file(&work.path("admin-backup.key"));
    let admin = admin_from(&admin_bytes);
    let keyset = load_keyset(&work.path("keyset.json"));
    assert_eq!(keyset.admin_verifying_key(), &admin.verifying_key());
    assert_eq!(
        keyset.scope(&label("alice")),
        Some(&admin.scope(&label("alice")).public_key())
    );

    // Overwriting the entry is refused, and the old key stays.
    let out = fails_in(
        &session,
        &work,
        &[
            "create-admin",
            "--fs",
            "kr2",
            "--secret",
            &admin_src,
            "--keyset",
            "keyset2.json",
        ],
        3,
    );
    assert!(
        stderr(&out).contains("already exists") && stderr(&out).contains(&admin_src),
        "{}",
        stderr(&out)
    );
    assert!(
        !work.path("keyset2.json").exists(),
        "no keyset without its secret"
    );
    fails_in(
        &session,
        &work,
        &[
            "create-user",
            "u",
            "--secret",
            &admin_src,
            "--public",
            "u.pub",
        ],
        3,
    );
    fails_in(
        &session,
        &work,
        &[
            "copy",
            "--from",
            "file:admin-backup.key",
            "--to",
            &admin_src,
        ],
        3,
    );
    let out = ok_in(
        &session,
        &work,
        &[
            "show",
            "--json",
            "--keyset",
            "keyset.json",
            "--secret",
            &admin_src,
        ],
    );
    assert_eq!(
        stdout_json(&out)["secret"]["is"],
        "the root secret of file system `kr`",
        "the entry still holds the first root secret"
    );

    // A missing entry: exit 3, with a hint about restoring it.
    let missing = format!("keyring:{service}/missing");
    let out = fails_in(
        &session,
        &work,
        &["show", "--keyset", "keyset.json", "--secret", &missing],
        3,
    );
    let err = stderr(&out);
    assert!(
        err.contains(&format!("no key found at {missing}"))
            && err.contains("reboot")
            && err.contains("cbfs-keytool copy --from"),
        "{err}"
    );

    // Restoring from the durable copy, as the hint says.
    let out = ok_in(
        &session,
        &work,
        &["copy", "--from", "file:admin-backup.key", "--to", &missing],
    );
    assert!(
        stderr(&out).contains("do not survive a reboot"),
        "{}",
        stderr(&out)
    );
    let out = ok_in(
        &session,
        &work,
        &[
            "show",
            "--json",
            "--keyset",
            "keyset.json",
            "--secret",
            &missing,
        ],
    );
    assert_eq!(
        stdout_json(&out)["secret"]["is"],
        "the root secret of file system `kr`"
    );

    // A user secret in the keyring, as in the example.
    let user_src = format!("keyring:{service}/alice");
    ok_in(
        &session,
        &work,
        &[
            "create-user",
            "alice",
            "--secret",
            &user_src,
            "--public",
            "alice.pub",
        ],
    );
    let out = ok_in(
        &session,
        &work,
        &[
            "show",
            "--json",
            "--user",
            "alice.pub",
            "--secret",
            &user_src,
        ],
    );
    assert_eq!(
        stdout_json(&out)["secret"]["is"],
        "the secret of user `alice`"
    );
    ok_in(
        &session,
        &work,
        &["copy", "--from", &user_src, "--to", "file:alice.key"],
    );
    let user = user_from(&raw_key_file(&work.path("alice.key")));

    let mut secrets = Secrets::default();
    secrets.add_admin("kr", &admin, &["default", "alice"]);
    secrets.add("user alice seed", user.seed().expose_secret_bytes());
    secrets.assert_absent_from_commands();
}

/// cbfs-recover, which reaches neither a key service nor the session bus,
/// still reads `keyring:` keys from the kernel keyring: the fixture store's
/// root secret, copied there by cbfs-keytool, restores the store. Asking it
/// for the Secret Service fails with the way around.
#[test]
fn recover_reads_the_kernel_keyring() {
    let work = Workdir::new();
    let session = KeyringSession::new();
    let service = session.name().to_string();
    let source = format!("keyring:{service}/admin");
    fixture_admin_key(&work, "admin.key");
    ok_in(
        &session,
        &work,
        &["copy", "--from", "file:admin.key", "--to", &source],
    );

    let out = run_ok(&mut session.wrap(recover_fixture(&work, &source, "recovered.tar")));
    assert_eq!(stdout_json(&out)["restored_entries"], 16);

    let mut cmd = recover_fixture(&work, &source, "refused.tar");
    cmd.env("CBFS_KEYRING_STORE", "secret-service");
    let out = run_code(&mut session.wrap(cmd), 1);
    let message = stdout_json(&out)["error"].as_str().unwrap().to_owned();
    assert!(
        message.contains("cbfs-recover does not reach the session bus")
            && message.contains("CBFS_KEYRING_STORE=keyutils")
            && message.contains("cbfs-keytool copy --from keyring:"),
        "{message}"
    );
    assert!(!work.path("refused.tar").exists());
}
