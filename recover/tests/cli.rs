//! The `cbfs-recover` binary: exit codes, JSON and human output, outputs
//! (file, standard output, directory), key sources, grants and loose segments.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use cbfs_core::{KeySource, Protection};
use support::*;

fn key(dir: &Path, name: &str) -> String {
    let bytes = fs::read(fixtures().join("keys").join(name)).unwrap();
    format!("file:{}", key_file(dir, name, &bytes).display())
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn no_secret(out: &Output) {
    let admin = hex::encode(fs::read(fixtures().join("keys/admin.key")).unwrap());
    for stream in [&out.stdout, &out.stderr] {
        let s = String::from_utf8_lossy(stream);
        assert!(
            !s.contains(&admin) && !s.contains("TEST ONLY"),
            "a secret leaked: {s}"
        );
    }
}

#[test]
fn help_shows_examples_and_exit_codes() {
    let out = run(recover_cmd().arg("--help"));
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for needle in [
        "Examples:",
        "Exit codes:",
        "--identity",
        "--grants",
        "3  partial",
        "bsdtar -xpf",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(run(&mut recover_cmd()).status.code(), Some(2));
    let out = run(recover_cmd().args(["--store", "x", "seg.tar"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = run(recover_cmd().args(["--store", "x", "--snapshot", "zz", "-o", "/dev/null"]));
    assert_ne!(out.status.code(), Some(0));
}

#[test]
fn intact_store_exits_0_with_a_json_report() {
    let (dir, store) = fixture_store("store", None);
    let tar = dir.path().join("out.tar");
    let out = run(recover_cmd()
        .args(["--identity", &key(dir.path(), "admin.key"), "--json", "-o"])
        .arg(&tar)
        .arg("--store")
        .arg(&store));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    no_secret(&out);
    let report = json(&out.stdout);
    assert_eq!(report["restored_entries"], 16);
    assert_eq!(report["exit_code"], 0);
    assert_eq!(report["snapshot"]["sequence"], 2);
    assert!(
        report["identity"]
            .as_str()
            .unwrap()
            .contains("administrator")
    );
    assert_eq!(tar_entries(&fs::read(&tar).unwrap()).len(), 17);
    assert!(text(&out.stderr).contains("all members in reach were restored"));
    // No partial file is left beside the tar.
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.to_string_lossy().contains("partial")),
        "{names:?}"
    );
}

#[test]
fn damage_exits_3_and_the_tar_holds_every_intact_member() {
    let (dir, store) = fixture_store("store", Some("segment-bitflip"));
    let tar = dir.path().join("out.tar");
    let out = run(recover_cmd()
        .args(["--identity", &key(dir.path(), "admin.key"), "--json", "-o"])
        .arg(&tar)
        .arg("--store")
        .arg(&store));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let report = json(&out.stdout);
    let f = &report["failures"][0];
    let seg_a = fixture_index()["segments"]["A"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(f["object"], format!("segments/{seg_a}.tar"));
    assert_eq!(f["code"], "payload_auth");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("FAILED segments/{seg_a}.tar member")),
        "{stderr}"
    );
    assert_eq!(tar_entries(&fs::read(&tar).unwrap()).len(), 16);
}

#[test]
fn an_unverifiable_snapshot_exits_4_before_any_output() {
    let (dir, store) = fixture_store("store", Some("manifest-rollback"));
    let tar = dir.path().join("out.tar");
    let out = run(recover_cmd()
        .args(["--identity", &key(dir.path(), "admin.key"), "-o"])
        .arg(&tar)
        .arg("--store")
        .arg(&store));
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let snap2 = fixture_index()["snapshots"][1].as_str().unwrap().to_owned();
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&snap2) && stderr.contains("older manifest"),
        "{stderr}"
    );
    assert!(!tar.exists());
}

#[test]
fn a_key_of_nobody_exits_1() {
    let (dir, store) = fixture_store("store", None);
    let tar = dir.path().join("out.tar");
    let out = run(recover_cmd()
        .args([
            "--identity",
            &key(dir.path(), "stranger.key"),
            "--json",
            "-o",
        ])
        .arg(&tar)
        .arg("--store")
        .arg(&store));
    assert_eq!(out.status.code(), Some(1));
    let err = json(&out.stdout);
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("neither the root secret nor a scope secret"),
        "{err}"
    );
    assert!(!tar.exists());
    no_secret(&out);
    // A key file others can read is refused, as ssh does.
    let loose = dir.path().join("loose.key");
    fs::copy(fixtures().join("keys/admin.key"), &loose).unwrap();
    fs::set_permissions(&loose, fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(recover_cmd()
        .arg("--identity")
        .arg(format!("file:{}", loose.display()))
        .arg("-o")
        .arg(&tar)
        .arg("--store")
        .arg(&store));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("chmod 600"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn tar_to_standard_output_with_the_report_on_standard_error() {
    let (dir, store) = fixture_store("store", None);
    let out = run(recover_cmd()
        .args([
            "--identity",
            &key(dir.path(), "alice-scope.key"),
            "--json",
            "-o",
            "-",
        ])
        .arg("--store")
        .arg(&store));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let entries = tar_entries(&out.stdout);
    assert_eq!(entries.len(), 6);
    let report = json(&out.stderr);
    assert_eq!(report["skipped_scopes"]["default"], 9);
    assert_eq!(report["skipped_scopes"]["bob"], 2);
}

#[test]
fn grants_from_the_command_line() {
    let (dir, store) = fixture_store("store", None);
    let user = key(dir.path(), "alice-user.key");
    let keyset = fixtures().join("keyset.json");
    let tar = dir.path().join("alice.tar");
    let out = run(recover_cmd()
        .args(["--identity", &user, "--json", "--grants"])
        .arg(fixtures().join("grants"))
        .arg("--keyset")
        .arg(&keyset)
        .arg("--store")
        .arg(&store)
        .arg("-o")
        .arg(&tar));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report = json(&out.stdout);
    assert_eq!(report["restored_entries"], 5);
    assert_eq!(report["skipped_scopes"]["default"], 9);
    assert!(
        report["identity"]
            .as_str()
            .unwrap()
            .contains("grants for scope(s) alice")
    );

    let out = run(recover_cmd()
        .args(["--identity", &user, "--grants"])
        .arg(fixtures().join("expired-grants"))
        .arg("--store")
        .arg(&store)
        .arg("-o")
        .arg(dir.path().join("expired.tar")));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let expires = fixture_index()["expired_grants_expire"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        stderr.contains(&format!("expired at {expires}")),
        "{stderr}"
    );
}

#[test]
fn loose_segment_files_with_their_lockboxes() {
    let (dir, store) = fixture_store("store", None);
    let segments: Vec<PathBuf> = fs::read_dir(store.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let tar = dir.path().join("loose.tar");
    let out = run(recover_cmd()
        .args(["--identity", &key(dir.path(), "admin.key"), "--json"])
        .arg("--keyset")
        .arg(fixtures().join("keyset.json"))
        .args(&segments)
        .arg("-o")
        .arg(&tar));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report = json(&out.stdout);
    assert_eq!(report["complete_by_manifest"], false);
    assert_eq!(report["restored_entries"], 16);
    assert!(
        text(&out.stderr).contains("nothing proves"),
        "{}",
        text(&out.stderr)
    );

    // Lockboxes elsewhere, named with --lockboxes; a segment without them
    // has its encrypted members counted as skipped, not restored.
    let elsewhere = dir.path().join("keys-moved");
    fs::rename(store.join("lockboxes"), &elsewhere).unwrap();
    let out = run(recover_cmd()
        .args(["--identity", &key(dir.path(), "admin.key"), "--json"])
        .arg("--keyset")
        .arg(fixtures().join("keyset.json"))
        .arg("--lockboxes")
        .arg(&elsewhere)
        .args(&segments)
        .arg("-o")
        .arg(dir.path().join("moved.tar")));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json(&out.stdout)["restored_entries"], 16);
}

#[test]
fn directory_output_leaves_no_partial_files() {
    let (dir, store) = fixture_store("store", Some("segment-truncated"));
    let dest = dir.path().join("restored");
    let out = run(recover_cmd()
        .args(["--identity", &key(dir.path(), "admin.key"), "-C"])
        .arg(&dest)
        .arg("--store")
        .arg(&store));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(
        fs::read(dest.join("alice/a2.bin")).unwrap(),
        bytes(2, 66_000)
    );
    assert!(!dest.join("docs/tail.bin").exists());
    let leftovers: Vec<_> = fs::read_dir(dest.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !leftovers.iter().any(|n| n.starts_with('.')),
        "{leftovers:?}"
    );
    assert_eq!(
        fs::metadata(dest.join("docs"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o750
    );
    assert_eq!(
        fs::read_link(dest.join("docs/link")).unwrap(),
        Path::new("d1.txt")
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(dest.join("alice/hard")).unwrap().ino(),
        fs::metadata(dest.join("alice/a1.txt")).unwrap().ino()
    );
}

#[test]
fn an_existing_output_is_not_replaced_without_force() {
    let (dir, store) = fixture_store("store", None);
    let tar = dir.path().join("out.tar");
    fs::write(&tar, b"precious").unwrap();
    let args = |force: bool| {
        let mut c = recover_cmd();
        c.args(["--identity", &key(dir.path(), "admin.key"), "-o"])
            .arg(&tar)
            .arg("--store")
            .arg(&store);
        if force {
            c.arg("--force");
        }
        c
    };
    let out = run(&mut args(false));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--force"));
    assert_eq!(fs::read(&tar).unwrap(), b"precious");
    assert_eq!(run(&mut args(true)).status.code(), Some(0));
    assert_eq!(tar_entries(&fs::read(&tar).unwrap()).len(), 17);
}

#[test]
fn an_age_wrapped_key_unlocks_with_a_passphrase_file() {
    let (dir, store) = fixture_store("store", None);
    let wrapped = dir.path().join("admin.age");
    let source: KeySource = format!("file:{}", wrapped.display()).parse().unwrap();
    let pass = secrecy::SecretString::from("correct horse battery staple".to_owned());
    source
        .store_new(&fixture_seed("admin.key"), &Protection::Passphrase(pass))
        .unwrap();
    let pass_file = key_file(dir.path(), "pass.txt", b"correct horse battery staple\n");
    let out = run(recover_cmd()
        .args(["--identity", &source.to_string(), "--json", "-o"])
        .arg(dir.path().join("out.tar"))
        .arg("--store")
        .arg(&store)
        .env("CBFS_PASSPHRASE_FILE", &pass_file));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json(&out.stdout)["restored_entries"], 16);
}

#[test]
fn the_tar_is_the_same_on_any_number_of_threads() {
    // Members are decoded on worker threads but written in order by one:
    // the output does not depend on how many threads decoded it, for an
    // intact store and for a damaged one alike.
    for damage in [None, Some("segment-bitflip")] {
        let (dir, store) = fixture_store("store", damage);
        let tars: Vec<Vec<u8>> = ["1", "2", "5"]
            .iter()
            .map(|jobs| {
                let out = run(recover_cmd()
                    .args(["--identity", &key(dir.path(), "admin.key"), "--jobs", jobs])
                    .args(["-o", "-", "--store"])
                    .arg(&store));
                assert!(
                    matches!(out.status.code(), Some(0 | 3)),
                    "{}",
                    text(&out.stderr)
                );
                out.stdout
            })
            .collect();
        assert!(tars[0].len() > 10_240, "{damage:?}: an empty tar");
        assert!(tars[0] == tars[1], "{damage:?}: 1 and 2 threads differ");
        assert!(tars[0] == tars[2], "{damage:?}: 1 and 5 threads differ");
    }
    let out = run(recover_cmd().args(["--jobs", "0", "--store", "x"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}
