//! `openbao:KEY:PATH` key sources, against a real `bao server -dev` with the
//! transit engine.

use std::process::Command;

use cbfs_tests::{OpenBao, Workdir, assert_no_secret, random_bytes, run_ok};

use crate::{
    Secrets, admin_from, fixture_admin_key, keytool, load_keyset, mode, read, recover_fixture,
    run_code, stderr, stdout_json, text,
};

/// keytool in `work` with the server's address and token as `BAO_*`.
fn with_bao(work: &Workdir, bao: &OpenBao) -> Command {
    let mut cmd = keytool(work.root());
    cmd.envs(bao.envs());
    cmd
}

#[test]
fn openbao_wrapped_root_secret_loads_rewraps_and_fails_clearly() {
    let work = Workdir::new();
    let bao = OpenBao::start();
    bao.create_transit_key("fs1-kek");
    let source = "openbao:fs1-kek:admin.wrapped";

    run_ok(with_bao(&work, &bao).args([
        "create-admin",
        "--fs",
        "fs1",
        "--secret",
        source,
        "--keyset",
        "keyset.json",
    ]));

    // PATH holds the transit ciphertext, 0600, not the key.
    let path = work.path("admin.wrapped");
    assert_eq!(mode(&path), 0o600);
    let wrapped = text(&read(&path));
    assert!(wrapped.starts_with("vault:v1:"), "{wrapped}");
    assert_eq!(wrapped.trim_end().lines().count(), 1, "one line: {wrapped}");
    let admin_bytes = bao.transit_decrypt("fs1-kek", wrapped.trim());
    assert_eq!(
        admin_bytes.len(),
        32,
        "the wrapped plaintext is the 32-byte seed"
    );
    let admin = admin_from(&admin_bytes);
    let keyset = load_keyset(&work.path("keyset.json"));
    assert_eq!(keyset.admin_verifying_key(), &admin.verifying_key());
    assert_no_secret(wrapped.as_bytes(), &admin_bytes, "the wrapped key file");

    // Another process unwraps it in memory and identifies it.
    let out = run_ok(with_bao(&work, &bao).args([
        "show",
        "--json",
        "--keyset",
        "keyset.json",
        "--secret",
        source,
    ]));
    assert_eq!(
        stdout_json(&out)["secret"]["is"],
        "the root secret of file system `fs1`"
    );
    // ... and administers with it.
    run_ok(with_bao(&work, &bao).args([
        "add-scope",
        "--admin",
        source,
        "--keyset",
        "keyset.json",
        "--scope",
        "alice",
    ]));

    // VAULT_ADDR/VAULT_TOKEN work as well as BAO_ADDR/BAO_TOKEN, and the
    // vault: spelling of the source too.
    for spelling in [source, "vault:fs1-kek:admin.wrapped"] {
        let out = run_ok(
            keytool(work.root())
                .args(["show", "--keyset", "keyset.json", "--secret", spelling])
                .env("VAULT_ADDR", bao.addr())
                .env("VAULT_TOKEN", bao.token()),
        );
        assert!(
            text(&out.stdout).contains("is the root secret of file system `fs1`"),
            "{}",
            text(&out.stdout)
        );
    }

    // Rotate the transit key; rewrap moves the secret to v2 and it still loads.
    bao.rotate_transit_key("fs1-kek");
    assert_eq!(bao.transit_key_latest_version("fs1-kek"), 2);
    let out = run_ok(with_bao(&work, &bao).args(["--json", "rewrap", "--secret", source]));
    let v = stdout_json(&out);
    assert_eq!(v["secret"], source);
    assert_eq!(
        (v["from_version"].as_u64(), v["to_version"].as_u64()),
        (Some(1), Some(2))
    );
    let rewrapped = text(&read(&path));
    assert!(rewrapped.starts_with("vault:v2:"), "{rewrapped}");
    assert_eq!(mode(&path), 0o600, "still 0600 after the rewrap");
    assert_eq!(
        bao.transit_decrypt("fs1-kek", rewrapped.trim()),
        admin_bytes
    );
    let out = run_ok(with_bao(&work, &bao).args([
        "show",
        "--json",
        "--keyset",
        "keyset.json",
        "--secret",
        source,
    ]));
    assert_eq!(
        stdout_json(&out)["secret"]["is"],
        "the root secret of file system `fs1`"
    );
    let out = run_ok(with_bao(&work, &bao).args(["rewrap", "--secret", source]));
    assert!(
        text(&out.stdout).contains("2 -> 2"),
        "{}",
        text(&out.stdout)
    );
    // Only openbao: sources can be rewrapped.
    cbfs_tests::run_fail(keytool(work.root()).args(["rewrap", "--secret", "file:keyset.json"]));

    // A new key for this source is refused when PATH exists.
    let out = run_code(
        with_bao(&work, &bao).args(["create-user", "u", "--secret", source, "--public", "u.pub"]),
        3,
    );
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(
        bao.transit_decrypt("fs1-kek", text(&read(&path)).trim()),
        admin_bytes
    );

    // A wrong token: refused (exit 3), naming the source; the token unprinted.
    let wrong_token = format!("wrong-{}", hex::encode(random_bytes(16)));
    let out = run_code(
        keytool(work.root())
            .args(["show", "--keyset", "keyset.json", "--secret", source])
            .env("BAO_ADDR", bao.addr())
            .env("BAO_TOKEN", &wrong_token),
        3,
    );
    let err = stderr(&out);
    assert!(err.contains(source) && err.contains("403"), "{err}");
    // No address or token at all: refused, saying what to set.
    let out = run_code(
        keytool(work.root()).args(["show", "--keyset", "keyset.json", "--secret", source]),
        3,
    );
    assert!(
        stderr(&out).contains("BAO_ADDR") && stderr(&out).contains(source),
        "{}",
        stderr(&out)
    );

    // The server gone: exit 5, worth retrying; the wrapped key untouched.
    let envs = bao.envs();
    let token = bao.token().to_string();
    let before = read(&path);
    drop(bao);
    let out = run_code(
        keytool(work.root())
            .args(["show", "--keyset", "keyset.json", "--secret", source])
            .envs(envs.clone()),
        5,
    );
    assert!(stderr(&out).contains(source), "{}", stderr(&out));
    run_code(
        keytool(work.root())
            .args(["rewrap", "--secret", source])
            .envs(envs.clone()),
        5,
    );
    run_code(
        keytool(work.root())
            .args([
                "add-scope",
                "--admin",
                source,
                "--keyset",
                "keyset.json",
                "--scope",
                "bob",
            ])
            .envs(envs),
        5,
    );
    assert_eq!(read(&path), before);

    let mut secrets = Secrets::default();
    secrets.add_admin("fs1", &admin, &["default", "alice"]);
    secrets.add("OpenBao token", token.as_bytes());
    secrets.add("wrong OpenBao token", wrong_token.as_bytes());
    secrets.assert_absent_from_commands();
}

/// cbfs-recover does not reach key services: an `openbao:` identity is
/// refused before any output (exit 1), with the way around, and the way
/// around works: `cbfs-keytool copy` unwraps the key into a file, which
/// cbfs-recover then restores the store with.
#[test]
fn recover_refuses_openbao_and_the_way_around_works() {
    let work = Workdir::new();
    let bao = OpenBao::start();
    bao.create_transit_key("rec-kek");
    fixture_admin_key(&work, "admin.key");
    let source = "openbao:rec-kek:admin.wrapped";
    run_ok(with_bao(&work, &bao).args(["copy", "--from", "file:admin.key", "--to", source]));

    // Even with the server's address and token at hand, cbfs-recover refuses.
    let mut cmd = recover_fixture(&work, source, "refused.tar");
    let out = run_code(cmd.envs(bao.envs()), 1);
    let err = stdout_json(&out);
    let message = err["error"].as_str().unwrap();
    assert!(
        message.contains("cbfs-recover does not reach key services")
            && message.contains(&format!("cbfs-keytool copy --from {source} --to file:PATH")),
        "{message}"
    );
    assert!(
        !message.contains("cannot reach"),
        "it must not even try the server: {message}"
    );
    assert!(!work.path("refused.tar").exists());

    // What the error says: unwrap into a file where the service is reachable.
    run_ok(with_bao(&work, &bao).args(["copy", "--from", source, "--to", "file:unwrapped.key"]));
    assert_eq!(
        read(&work.path("unwrapped.key")),
        read(&work.path("admin.key"))
    );
    let out = run_ok(&mut recover_fixture(
        &work,
        "file:unwrapped.key",
        "recovered.tar",
    ));
    assert_eq!(stdout_json(&out)["restored_entries"], 16);
}
