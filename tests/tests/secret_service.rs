//! `keyring:SERVICE/NAME` key sources in a real Secret Service.
//!
//! Each test starts its own D-Bus session bus and, where it needs one, a real
//! `gnome-keyring-daemon` on it with a fresh, unlocked login keyring
//! ([`SecretService`]); then it drives `cbfs-keytool` with
//! `DBUS_SESSION_BUS_ADDRESS` pointing there. What cbfs stored is checked
//! with other clients (`dbus-send`, libsecret's `secret-tool`), and the kernel
//! keyring is looked at through `CBFS_KEYRING_STORE=keyutils` in a fresh
//! [`KeyringSession`], whose name is the service of every entry, so that its
//! cleanup finds anything that lands in the kernel keyring.
//!
//! - With a Secret Service on the bus, cbfs uses it: the key is an item
//!   there, holding exactly the seed; it round-trips through another process;
//!   there is no reboot warning; and the kernel keyring does not have it.
//! - `CBFS_KEYRING_STORE=keyutils` puts the key in the kernel keyring, with
//!   the reboot warning, even though a Secret Service runs.
//! - Without a running Secret Service (or without a bus), cbfs uses the
//!   kernel keyring and does not have D-Bus start a Secret Service; asked for
//!   one explicitly, it fails when there is none.

#![forbid(unsafe_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use cbfs_tests::{
    KeyringSession, SECRET_SERVICE_NAME, SecretService, SessionBus, Workdir, assert_no_secret,
    captured_output, cbfs_cmd, command_line, run_fail, run_ok,
};
use serde_json::Value;

/// Variables that would change which keys the tool finds, or where; the test
/// runner's own values must not leak into a test.
const SCRUBBED_ENV: &[&str] = &[
    "DBUS_SESSION_BUS_ADDRESS",
    "CBFS_KEYRING_STORE",
    "BAO_ADDR",
    "BAO_TOKEN",
    "VAULT_ADDR",
    "VAULT_TOKEN",
    "CBFS_AGE_IDENTITY",
    "CBFS_PASSPHRASE_FILE",
    "RUST_LOG",
];

/// What the tool says when a key lives in the kernel keyring.
const REBOOT_NOTE: &str = "do not survive a reboot";

/// `cbfs-keytool -vv ARGS` in `work`, joined to `session`, in a clean
/// environment plus `env`. `-vv` shows which keyring store was used.
fn keytool(
    session: &KeyringSession,
    work: &Workdir,
    env: &[(&str, &str)],
    args: &[&str],
) -> Command {
    let mut cmd = cbfs_cmd("cbfs-keytool");
    cmd.current_dir(work.root());
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    cmd.env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .arg("-vv")
        .args(args);
    session.wrap(cmd)
}

fn ok(session: &KeyringSession, work: &Workdir, env: &[(&str, &str)], args: &[&str]) -> Output {
    run_ok(&mut keytool(session, work, env, args))
}

/// Runs the tool, which must fail with exit code `code`.
fn fails(
    session: &KeyringSession,
    work: &Workdir,
    env: &[(&str, &str)],
    args: &[&str],
    code: i32,
) -> Output {
    let mut cmd = keytool(session, work, env, args);
    let out = run_fail(&mut cmd);
    assert_eq!(
        out.status.code(),
        Some(code),
        "`{}` exited with {:?}, expected {code}\n{}",
        command_line(&cmd),
        out.status.code(),
        stderr(&out)
    );
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `text` without terminal colour sequences (`ESC [ ... m`).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The debug line that names the keyring store the process used.
fn assert_store(out: &Output, store: &str, why: &str) {
    let err = plain(&stderr(out));
    let line = err
        .lines()
        .find(|l| l.contains("keyring store"))
        .unwrap_or_else(|| panic!("no `keyring store` debug line in:\n{err}"));
    assert!(
        line.contains(&format!("store=\"{store}\"")) && line.contains(why),
        "expected store {store} ({why}): {line}"
    );
}

fn show_json(session: &KeyringSession, work: &Workdir, env: &[(&str, &str)], src: &str) -> Output {
    ok(
        session,
        work,
        env,
        &["show", "--json", "--keyset", "K.json", "--secret", src],
    )
}

#[test]
fn a_running_secret_service_holds_the_key() {
    let ss = SecretService::start();
    let session = KeyringSession::new();
    let work = Workdir::new();
    let bus = ss.bus().address().to_owned();
    let env = [("DBUS_SESSION_BUS_ADDRESS", bus.as_str())];
    let service = session.name().to_owned();
    let src = format!("keyring:{service}/admin");

    let out = ok(
        &session,
        &work,
        &env,
        &[
            "create-admin",
            "--fs",
            "x",
            "--secret",
            &src,
            "--keyset",
            "K.json",
        ],
    );
    assert_store(
        &out,
        "secret-service",
        "a Secret Service runs on the session bus",
    );
    assert!(
        !stderr(&out).contains(REBOOT_NOTE) && !stderr(&out).contains("reboot"),
        "no reboot warning for the Secret Service:\n{}",
        stderr(&out)
    );

    // The key is one item in the Secret Service, found by the attributes
    // keyring-core sets, labelled for keyring managers, holding the seed.
    let attributes = [("service", service.as_str()), ("username", "admin")];
    let items = ss.search(&attributes);
    assert_eq!(items.len(), 1, "one item for {src}: {items:?}");
    assert!(
        items[0].starts_with("/org/freedesktop/secrets/collection/login/"),
        "{items:?}"
    );
    assert_eq!(ss.label(&items[0]), format!("cbfs {src}"));
    let stored = ss
        .lookup(&attributes)
        .unwrap_or_else(|| panic!("secret-tool cannot read {src}:\n{}", ss.log_tail(20)));
    assert_eq!(stored.len(), 32, "the item holds the 32-byte seed");

    // Another process loads it, and it is the root secret of the keyset.
    let out = show_json(&session, &work, &env, &src);
    assert_store(
        &out,
        "secret-service",
        "a Secret Service runs on the session bus",
    );
    let v = stdout_json(&out);
    assert_eq!(v["secret"]["source"], src.as_str());
    assert_eq!(v["secret"]["is"], "the root secret of file system `x`");
    assert!(!stderr(&out).contains("reboot"), "{}", stderr(&out));

    // A durable copy is byte for byte what the Secret Service holds.
    ok(
        &session,
        &work,
        &env,
        &["copy", "--from", &src, "--to", "file:admin.key"],
    );
    assert!(
        fs::read(work.path("admin.key")).unwrap() == stored,
        "the seed in the Secret Service is not the one keytool copied out"
    );

    // Asking for the Secret Service by name finds the same key.
    let explicit = [
        ("DBUS_SESSION_BUS_ADDRESS", bus.as_str()),
        ("CBFS_KEYRING_STORE", "secret-service"),
    ];
    let out = show_json(&session, &work, &explicit, &src);
    assert_store(&out, "secret-service", "CBFS_KEYRING_STORE=secret-service");
    assert_eq!(
        stdout_json(&out)["secret"]["is"],
        "the root secret of file system `x`"
    );

    // Overwriting it is refused.
    let out = fails(
        &session,
        &work,
        &env,
        &[
            "create-admin",
            "--fs",
            "y",
            "--secret",
            &src,
            "--keyset",
            "K2.json",
        ],
        3,
    );
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(ss.search(&attributes).len(), 1);
    assert_eq!(ss.lookup(&attributes).as_deref(), Some(stored.as_slice()));

    // The kernel keyring does not have it (this session's keyring, and the
    // persistent keyring linked into it).
    let keyutils = [
        ("DBUS_SESSION_BUS_ADDRESS", bus.as_str()),
        ("CBFS_KEYRING_STORE", "keyutils"),
    ];
    let out = fails(
        &session,
        &work,
        &keyutils,
        &["show", "--keyset", "K.json", "--secret", &src],
        3,
    );
    assert_store(&out, "keyutils", "CBFS_KEYRING_STORE=keyutils");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("no key found at {src}"))
            && err.contains("CBFS_KEYRING_STORE=secret-service"),
        "{err}"
    );

    // A missing entry says where it looked, and how to restore it.
    let missing = format!("keyring:{service}/missing");
    let out = fails(
        &session,
        &work,
        &env,
        &["show", "--keyset", "K.json", "--secret", &missing],
        3,
    );
    let err = stderr(&out);
    assert!(
        err.contains(&format!("no key found at {missing} in the Secret Service"))
            && err.contains("cbfs-keytool copy --from")
            && err.contains("CBFS_KEYRING_STORE=keyutils")
            && !err.contains("reboot"),
        "{err}"
    );

    assert_no_secret(&captured_output(), &stored, "command output");
}

#[test]
fn keyutils_store_is_used_when_asked_even_with_a_secret_service() {
    let ss = SecretService::start();
    let session = KeyringSession::new();
    let work = Workdir::new();
    let bus = ss.bus().address().to_owned();
    let keyutils = [
        ("DBUS_SESSION_BUS_ADDRESS", bus.as_str()),
        ("CBFS_KEYRING_STORE", "keyutils"),
    ];
    let auto = [("DBUS_SESSION_BUS_ADDRESS", bus.as_str())];
    let service = session.name().to_owned();
    let src = format!("keyring:{service}/kernel");

    let out = ok(
        &session,
        &work,
        &keyutils,
        &[
            "create-admin",
            "--fs",
            "k",
            "--secret",
            &src,
            "--keyset",
            "K.json",
        ],
    );
    assert_store(&out, "keyutils", "CBFS_KEYRING_STORE=keyutils");
    let err = stderr(&out);
    assert!(
        err.contains(REBOOT_NOTE) && err.contains("cbfs-keytool copy"),
        "the kernel keyring gets the reboot warning:\n{err}"
    );
    assert!(
        ss.search(&[("service", service.as_str())]).is_empty(),
        "nothing of {service} may be in the Secret Service"
    );

    let out = show_json(&session, &work, &keyutils, &src);
    assert_eq!(
        stdout_json(&out)["secret"]["is"],
        "the root secret of file system `k`"
    );

    // Left to choose, cbfs looks in the Secret Service, which has no such key.
    let out = fails(
        &session,
        &work,
        &auto,
        &["show", "--keyset", "K.json", "--secret", &src],
        3,
    );
    assert_store(
        &out,
        "secret-service",
        "a Secret Service runs on the session bus",
    );
    let err = stderr(&out);
    assert!(
        err.contains(&format!("no key found at {src} in the Secret Service"))
            && err.contains("CBFS_KEYRING_STORE=keyutils"),
        "{err}"
    );

    // A store name that is not one is refused, naming the ones there are.
    let out = fails(
        &session,
        &work,
        &[("CBFS_KEYRING_STORE", "kwallet")],
        &["show", "--keyset", "K.json", "--secret", &src],
        3,
    );
    assert!(
        stderr(&out).contains("CBFS_KEYRING_STORE=kwallet")
            && stderr(&out).contains("keyutils or secret-service"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn without_a_running_secret_service_the_kernel_keyring_is_used_and_none_is_started() {
    let work = Workdir::new();
    // A Secret Service that D-Bus would start on demand: it leaves a mark,
    // and fails.
    let marker = work.path("secret-service-was-started");
    let fake = work.write(
        "fake-secret-service",
        format!("#!/bin/sh\ntouch '{}'\nexit 1\n", marker.display()),
    );
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    let bus = SessionBus::with_activatable(SECRET_SERVICE_NAME, &fake);
    let session = KeyringSession::new();
    let address = bus.address().to_owned();
    let env = [("DBUS_SESSION_BUS_ADDRESS", address.as_str())];
    let service = session.name().to_owned();
    let src = format!("keyring:{service}/admin");

    let out = ok(
        &session,
        &work,
        &env,
        &[
            "create-admin",
            "--fs",
            "n",
            "--secret",
            &src,
            "--keyset",
            "K.json",
        ],
    );
    assert_store(
        &out,
        "keyutils",
        "no Secret Service runs on the session bus",
    );
    assert!(stderr(&out).contains(REBOOT_NOTE), "{}", stderr(&out));
    assert!(
        !marker.exists(),
        "cbfs had D-Bus start a Secret Service it was not asked for"
    );
    assert!(!bus.has_owner(SECRET_SERVICE_NAME));

    // Without a session bus at all: the kernel keyring, the same key.
    let out = show_json(&session, &work, &[], &src);
    assert_store(&out, "keyutils", "DBUS_SESSION_BUS_ADDRESS is not set");
    assert_eq!(
        stdout_json(&out)["secret"]["is"],
        "the root secret of file system `n`"
    );

    // A bus address where no bus is: the kernel keyring too.
    let gone = format!("unix:path={}", work.path("no-bus-here").display());
    let out = show_json(
        &session,
        &work,
        &[("DBUS_SESSION_BUS_ADDRESS", &gone)],
        &src,
    );
    assert_store(&out, "keyutils", "the session bus cannot be reached");

    // Asked for by name, the Secret Service must work, or the command fails
    // (and then the bus may start one: here, the fake one).
    let out = fails(
        &session,
        &work,
        &[
            ("DBUS_SESSION_BUS_ADDRESS", address.as_str()),
            ("CBFS_KEYRING_STORE", "secret-service"),
        ],
        &["show", "--keyset", "K.json", "--secret", &src],
        3,
    );
    assert!(
        stderr(&out).contains("the Secret Service cannot be opened"),
        "{}",
        stderr(&out)
    );
    assert!(
        marker.exists(),
        "the explicit request reached the bus: {}",
        bus.log_tail(10)
    );
}
