//! `pkcs11:` key sources, against a SoftHSM2 token of the test's own: the
//! root secret wrapped by an AES key made inside the token, which never
//! leaves it; the PIN from a file or the environment, never from argv.

use std::process::Command;

use cbfs_tests::{SoftHsm, Workdir, assert_no_secret, captured_output, run_ok};

use crate::{Secrets, keytool, load_keyset, mode, read, run_code, stderr, stdout_json, text};

fn with_hsm(work: &Workdir, hsm: &SoftHsm) -> Command {
    let mut cmd = keytool(work.root());
    cmd.envs(hsm.envs());
    cmd
}

#[test]
fn pkcs11_wrapped_root_secret_loads_rewraps_and_fails_clearly() {
    let work = Workdir::new();
    let hsm = SoftHsm::start("cbfs");
    hsm.create_aes_key("kek-1");
    hsm.create_aes_key("kek-2");
    let wrapped = work.path("admin.wrapped");
    let source = hsm.uri("kek-1", &wrapped);

    run_ok(with_hsm(&work, &hsm).args([
        "create-admin",
        "--fs",
        "fs1",
        "--secret",
        &source,
        "--keyset",
        "keyset.json",
    ]));
    assert_eq!(mode(&wrapped), 0o600);
    let line = text(&read(&wrapped));
    assert!(line.starts_with("cbfs-pkcs11-v1:"), "{line}");
    // The wrapping key cannot be read out of the token.
    assert!(!hsm.key_value_readable("kek-1"));

    let out = run_ok(with_hsm(&work, &hsm).args([
        "show",
        "--json",
        "--keyset",
        "keyset.json",
        "--secret",
        &source,
    ]));
    assert_eq!(
        stdout_json(&out)["secret"]["is"],
        "the root secret of file system `fs1`"
    );
    run_ok(with_hsm(&work, &hsm).args([
        "add-scope",
        "--admin",
        &source,
        "--keyset",
        "keyset.json",
        "--scope",
        "alice",
    ]));
    assert_eq!(load_keyset(&work.path("keyset.json")).serial(), 1);

    // The PIN from the environment (CBFS_PKCS11_PIN, or a variable the URI
    // names) and the module from CBFS_PKCS11_MODULE.
    let bare = format!(
        "pkcs11:token=cbfs;object=kek-1?x-wrapped={}",
        wrapped.display()
    );
    run_ok(
        with_hsm(&work, &hsm)
            .args(["show", "--keyset", "keyset.json", "--secret", &bare])
            .env("CBFS_PKCS11_PIN", hsm.pin())
            .env("CBFS_PKCS11_MODULE", hsm.module()),
    );
    let named = format!(
        "pkcs11:token=cbfs;object=kek-1?module-path={}&pin-source=env:HSM_PIN&x-wrapped={}",
        hsm.module().display(),
        wrapped.display()
    );
    run_ok(
        with_hsm(&work, &hsm)
            .args(["show", "--keyset", "keyset.json", "--secret", &named])
            .env("HSM_PIN", hsm.pin()),
    );
    // No PIN at all: locked (exit 3), saying where a PIN comes from.
    let out = run_code(
        with_hsm(&work, &hsm)
            .args(["show", "--keyset", "keyset.json", "--secret", &bare])
            .env("CBFS_PKCS11_MODULE", hsm.module()),
        3,
    );
    assert!(stderr(&out).contains("CBFS_PKCS11_PIN"), "{}", stderr(&out));
    // A PIN in the URI (so on the command line) is refused before anything runs.
    let in_argv = format!("{bare}&pin-value=123456");
    let out = run_code(
        with_hsm(&work, &hsm).args(["show", "--keyset", "keyset.json", "--secret", &in_argv]),
        2,
    );
    assert!(
        stderr(&out).contains("pin-value is refused"),
        "{}",
        stderr(&out)
    );
    // A wrong PIN: refused (exit 3); the PIN is not printed.
    let out = run_code(
        with_hsm(&work, &hsm)
            .args(["show", "--keyset", "keyset.json", "--secret", &bare])
            .env("CBFS_PKCS11_MODULE", hsm.module())
            .env("CBFS_PKCS11_PIN", "wrong-pin-0000"),
        3,
    );
    assert!(stderr(&out).contains("refused the PIN"), "{}", stderr(&out));

    // The wrong key object: refused (exit 3), naming the source.
    let wrong = hsm.uri("kek-2", &wrapped);
    let out = run_code(
        with_hsm(&work, &hsm).args(["show", "--keyset", "keyset.json", "--secret", &wrong]),
        3,
    );
    assert!(
        stderr(&out).contains("wrapped by another key"),
        "{}",
        stderr(&out)
    );
    // No such object: not found (exit 3).
    let missing = hsm.uri("kek-9", &wrapped);
    let out = run_code(
        with_hsm(&work, &hsm).args(["show", "--keyset", "keyset.json", "--secret", &missing]),
        3,
    );
    assert!(stderr(&out).contains("no key found"), "{}", stderr(&out));

    // Rewrap to the new key object: the file changes, the secret does not.
    let out = run_ok(with_hsm(&work, &hsm).args([
        "--json",
        "rewrap",
        "--secret",
        &source,
        "--new-key",
        "kek-2",
    ]));
    let v = stdout_json(&out);
    assert_eq!(v["source"], wrong.as_str(), "{v}");
    assert_ne!(text(&read(&wrapped)), line);
    assert_eq!(mode(&wrapped), 0o600);
    let out = run_ok(with_hsm(&work, &hsm).args([
        "show",
        "--json",
        "--keyset",
        "keyset.json",
        "--secret",
        &wrong,
    ]));
    assert_eq!(
        stdout_json(&out)["secret"]["is"],
        "the root secret of file system `fs1`"
    );
    // The old key is gone from the token: the secret still opens with the new one.
    hsm.destroy_key("kek-1");
    run_ok(with_hsm(&work, &hsm).args(["show", "--keyset", "keyset.json", "--secret", &wrong]));

    // Copy out to a key file proves the unwrapped seed is the keyset's root.
    run_ok(with_hsm(&work, &hsm).args(["copy", "--from", &wrong, "--to", "file:admin.key"]));
    let admin_bytes = read(&work.path("admin.key"));
    let admin = crate::admin_from(&admin_bytes);
    assert_eq!(
        load_keyset(&work.path("keyset.json")).admin_verifying_key(),
        &admin.verifying_key()
    );
    assert_no_secret(&read(&wrapped), &admin_bytes, "the wrapped key file");

    let mut secrets = Secrets::default();
    secrets.add_admin("fs1", &admin, &["default", "alice"]);
    secrets.add("token PIN", hsm.pin().as_bytes());
    secrets.assert_absent_from_commands();
    assert!(
        !text(&captured_output()).contains("wrong-pin-0000 "),
        "the PIN is never echoed"
    );
}
