//! `awskms:KEY_ID:PATH` key sources, against moto's KMS on 127.0.0.1:
//! wrap, unwrap, rewrap (the same key and another), a wrong key, a disabled
//! key, and the service down (exit 5).

use std::process::Command;

use cbfs_tests::{S3Server, Workdir, assert_no_secret, run_ok};

use crate::{
    Secrets, admin_from, keytool, load_keyset, mode, read, run_code, stderr, stdout_json, text,
};

fn with_kms(work: &Workdir, kms: &S3Server) -> Command {
    let mut cmd = keytool(work.root());
    cmd.envs(kms.envs());
    cmd
}

#[test]
fn awskms_wrapped_root_secret_loads_rewraps_and_fails_clearly() {
    let work = Workdir::new();
    let kms = S3Server::start();
    let key = kms.create_kms_key();
    let other = kms.create_kms_key();
    let source = format!("awskms:{key}:admin.wrapped");

    run_ok(with_kms(&work, &kms).args([
        "create-admin",
        "--fs",
        "fs1",
        "--secret",
        &source,
        "--keyset",
        "keyset.json",
    ]));

    // PATH holds the KMS ciphertext, 0600, one line; KMS gives back the seed.
    let path = work.path("admin.wrapped");
    assert_eq!(mode(&path), 0o600);
    let wrapped = text(&read(&path));
    let blob = wrapped
        .trim()
        .strip_prefix("cbfs-awskms-v1:")
        .unwrap_or_else(|| panic!("not an awskms file: {wrapped}"));
    assert_eq!(wrapped.trim_end().lines().count(), 1);
    let admin_bytes = kms.kms_decrypt(blob);
    assert_eq!(admin_bytes.len(), 32);
    let admin = admin_from(&admin_bytes);
    assert_eq!(
        load_keyset(&work.path("keyset.json")).admin_verifying_key(),
        &admin.verifying_key()
    );
    assert_no_secret(wrapped.as_bytes(), &admin_bytes, "the wrapped key file");

    // Another process unwraps it in memory, identifies and administers with it.
    let out = run_ok(with_kms(&work, &kms).args([
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
    run_ok(with_kms(&work, &kms).args([
        "add-scope",
        "--admin",
        &source,
        "--keyset",
        "keyset.json",
        "--scope",
        "alice",
    ]));

    // An ARN names the key as well as its id.
    let arn = format!("arn:aws:kms:us-east-1:123456789012:key/{key}");
    let by_arn = format!("awskms:{arn}:admin.wrapped");
    run_ok(with_kms(&work, &kms).args(["show", "--keyset", "keyset.json", "--secret", &by_arn]));

    // Rewrap under the same key: a new ciphertext, the same secret.
    let out = run_ok(with_kms(&work, &kms).args(["--json", "rewrap", "--secret", &source]));
    let v = stdout_json(&out);
    assert_eq!(v["source"], source.as_str());
    assert!(v["to"].as_str().unwrap().contains(&key), "{v}");
    let rewrapped = text(&read(&path));
    assert_ne!(rewrapped, wrapped, "a new ciphertext");
    assert_eq!(mode(&path), 0o600);
    assert_eq!(
        kms.kms_decrypt(rewrapped.trim().strip_prefix("cbfs-awskms-v1:").unwrap()),
        admin_bytes
    );

    // Rewrap under another key: the source is renamed, the old name refused.
    let out = run_ok(with_kms(&work, &kms).args([
        "--json",
        "rewrap",
        "--secret",
        &source,
        "--new-key",
        &other,
    ]));
    let moved = format!("awskms:{other}:admin.wrapped");
    assert_eq!(stdout_json(&out)["source"], moved.as_str());
    let out = run_ok(with_kms(&work, &kms).args([
        "show",
        "--json",
        "--keyset",
        "keyset.json",
        "--secret",
        &moved,
    ]));
    assert_eq!(
        stdout_json(&out)["secret"]["is"],
        "the root secret of file system `fs1`"
    );

    // The wrong key: refused (exit 3), naming the source.
    let out = run_code(
        with_kms(&work, &kms).args(["show", "--keyset", "keyset.json", "--secret", &source]),
        3,
    );
    assert!(stderr(&out).contains(&source), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not wrapped by this key"),
        "{}",
        stderr(&out)
    );

    // A disabled key: refused (exit 3) saying so; enabled again, it works.
    kms.set_kms_key_enabled(&other, false);
    let out = run_code(
        with_kms(&work, &kms).args(["show", "--keyset", "keyset.json", "--secret", &moved]),
        3,
    );
    assert!(
        stderr(&out).contains("is Disabled") && stderr(&out).contains(&moved),
        "{}",
        stderr(&out)
    );
    kms.set_kms_key_enabled(&other, true);
    run_ok(with_kms(&work, &kms).args(["show", "--keyset", "keyset.json", "--secret", &moved]));

    // No credentials: refused, saying what to set.
    let out = run_code(
        keytool(work.root())
            .args(["show", "--keyset", "keyset.json", "--secret", &moved])
            .env("AWS_ENDPOINT_URL", kms.endpoint())
            .env("AWS_REGION", "us-east-1")
            .env("HOME", work.root()),
        3,
    );
    assert!(
        stderr(&out).contains("AWS_ACCESS_KEY_ID"),
        "{}",
        stderr(&out)
    );

    // A profile of ~/.aws as the AWS CLI reads it works as well as the variables.
    work.write(
        "home/.aws/credentials",
        "[ops]\naws_access_key_id = test\naws_secret_access_key = test\n",
    );
    work.write(
        "home/.aws/config",
        format!(
            "[profile ops]\nregion = us-east-1\nendpoint_url = {}\n",
            kms.endpoint()
        ),
    );
    run_ok(
        keytool(work.root())
            .args(["show", "--keyset", "keyset.json", "--secret", &moved])
            .env("HOME", work.path("home"))
            .env("AWS_PROFILE", "ops"),
    );

    // The service gone: exit 5, worth retrying; the wrapped key untouched.
    let envs = kms.envs();
    let before = read(&path);
    drop(kms);
    for args in [
        vec![
            "show",
            "--keyset",
            "keyset.json",
            "--secret",
            moved.as_str(),
        ],
        vec!["rewrap", "--secret", moved.as_str()],
        vec![
            "add-scope",
            "--admin",
            moved.as_str(),
            "--keyset",
            "keyset.json",
            "--scope",
            "bob",
        ],
    ] {
        let out = run_code(keytool(work.root()).args(&args).envs(envs.clone()), 5);
        assert!(stderr(&out).contains(&moved), "{}", stderr(&out));
    }
    assert_eq!(read(&path), before);

    let mut secrets = Secrets::default();
    secrets.add_admin("fs1", &admin, &["default", "alice"]);
    secrets.assert_absent_from_commands();
}
