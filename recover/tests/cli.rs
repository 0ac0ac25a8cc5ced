//! The `cbfs-recover` binary: exit codes, JSON and human output, outputs
//! (file, standard output, directory), key sources, loose segments, and
//! trust that fails closed (writers, administrators, rollbacks).

mod support;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cbfs_core::{AdminSecret, KeySource, Protection, fingerprint};
use cbfs_format::{EntryKind, Manifest, SegmentMode};
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

/// The fixture administrator's fingerprint, as `--admin-key` takes it.
fn fixture_admin() -> String {
    admin_fingerprint(&fixture_keyset())
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
    let dir = TestDir::new();
    let out = run(recover_cmd(dir.path()).arg("--help"));
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for needle in [
        "Examples:",
        "Exit codes:",
        "--identity",
        "--admin-key",
        "--trust-file",
        "--accept-unregistered-writer",
        "--unauthenticated-segments",
        "3  partial",
        "4  the snapshot or keyset could not be verified or trusted",
        "8  loose segments restored with --unauthenticated-segments",
        "bsdtar -xpf",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
    assert!(!help.contains("--grants"), "{help}");
}

#[test]
fn usage_errors_exit_2() {
    let dir = TestDir::new();
    let d = dir.path();
    assert_eq!(run(&mut recover_cmd(d)).status.code(), Some(2));
    let out = run(recover_cmd(d).args(["--store", "x", "seg.tar"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = run(recover_cmd(d).args(["--store", "x", "--snapshot", "zz", "-o", "/dev/null"]));
    assert_ne!(out.status.code(), Some(0));
    // Users hold no key fragments any more.
    let out = run(recover_cmd(d).args(["--grants", "g", "--store", "x", "-o", "/dev/null"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // Loose segments conflict with a store.
    let out = run(recover_cmd(d).args([
        "--store",
        "x",
        "--unauthenticated-segments",
        "seg.tar",
        "-o",
        "/dev/null",
    ]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn intact_store_exits_0_with_a_json_report() {
    let (dir, store) = fixture_store("store", None);
    let tar = dir.path().join("out.tar");
    let out = run(recover_cmd(dir.path())
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
    // The trust records remember the administrator, the keyset and the
    // snapshot seen.
    let records = json(&fs::read(trust_file(dir.path())).unwrap());
    let pinned = &records["file_systems"]["fixture"];
    assert_eq!(pinned["fingerprint"], fixture_admin());
    assert_eq!(pinned["highest_keyset_serial"], 3);
    assert_eq!(pinned["highest_snapshot"], 2);
}

#[test]
fn damage_exits_3_and_the_tar_holds_every_intact_member() {
    let (dir, store) = fixture_store("store", Some("segment-bitflip"));
    let tar = dir.path().join("out.tar");
    let out = run(recover_cmd(dir.path())
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
    let out = run(recover_cmd(dir.path())
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
    let out = run(recover_cmd(dir.path())
        .args([
            "--identity",
            &key(dir.path(), "stranger.key"),
            "--admin-key",
            &fixture_admin(),
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
    let out = run(recover_cmd(dir.path())
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
    let out = run(recover_cmd(dir.path())
        .args([
            "--identity",
            &key(dir.path(), "alice-scope.key"),
            "--admin-key",
            &fixture_admin(),
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
fn directory_output_leaves_no_partial_files() {
    let (dir, store) = fixture_store("store", Some("segment-truncated"));
    let dest = dir.path().join("restored");
    let out = run(recover_cmd(dir.path())
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
        let mut c = recover_cmd(dir.path());
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

/// cbfs-recover does not reach key services: `openbao:` and `awskms:`
/// identities are refused before any output (exit 1) with the way around,
/// without a single connection to the service the environment names.
#[test]
fn key_services_are_refused_without_touching_the_network() {
    let (dir, store) = fixture_store("store", None);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let service = format!("http://{}", listener.local_addr().unwrap());
    let wrapped = key_file(dir.path(), "admin.wrapped", b"vault:v1:AAAA\n");
    let tar = dir.path().join("out.tar");
    for source in [
        format!("openbao:kek:{}", wrapped.display()),
        format!("awskms:alias/cbfs:{}", wrapped.display()),
    ] {
        let out = run(recover_cmd(dir.path())
            .args(["--identity", &source, "--json", "-o"])
            .arg(&tar)
            .arg("--store")
            .arg(&store)
            .env("BAO_ADDR", &service)
            .env("BAO_TOKEN", "root")
            .env("AWS_ENDPOINT_URL", &service)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test"));
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let err = json(&out.stdout);
        let message = err["error"].as_str().unwrap();
        assert!(
            message.contains(&source)
                && message.contains("cbfs-recover does not reach key services")
                && message.contains(&format!("cbfs-keytool copy --from {source} --to file:PATH")),
            "{message}"
        );
        assert!(!tar.exists());
        assert!(
            matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{source}: cbfs-recover connected to the key service"
        );
    }
}

#[test]
fn an_age_wrapped_key_unlocks_with_a_passphrase_file() {
    let (dir, store) = fixture_store("store", None);
    let wrapped = dir.path().join("admin.age");
    let source: KeySource = format!("file:{}", wrapped.display()).parse().unwrap();
    let pass = secrecy::SecretString::from("correct horse battery staple".to_owned());
    source
        .store_new(
            &fixture_seed("admin.key"),
            &Protection::Passphrase(pass),
            &cbfs_core::Unlock::default(),
        )
        .unwrap();
    let pass_file = key_file(dir.path(), "pass.txt", b"correct horse battery staple\n");
    let out = run(recover_cmd(dir.path())
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
                let out = run(recover_cmd(dir.path())
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
    let dir = TestDir::new();
    let out = run(recover_cmd(dir.path()).args(["--jobs", "0", "--store", "x"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

// --- Loose segments: asked for by name, never a fallback -------------------

fn fixture_segments(store: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = fs::read_dir(store.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    segments
}

#[test]
fn positional_segment_files_are_refused() {
    let (dir, store) = fixture_store("store", None);
    let tar = dir.path().join("loose.tar");
    let out = run(recover_cmd(dir.path())
        .args(["--identity", &key(dir.path(), "admin.key")])
        .arg("--keyset")
        .arg(fixtures().join("keyset.json"))
        .args(fixture_segments(&store))
        .arg("-o")
        .arg(&tar));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("unexpected argument"),
        "{}",
        text(&out.stderr)
    );
    assert!(!tar.exists());
}

/// `cbfs-recover --json --unauthenticated-segments SEGMENTS... -o TAR` with
/// the fixture's root secret and keyset.
fn loose_cmd(dir: &Path, segments: &[PathBuf], tar: &Path) -> Command {
    let mut cmd = recover_cmd(dir);
    cmd.args(["--identity", &key(dir, "admin.key"), "--json"])
        .arg("--keyset")
        .arg(fixtures().join("keyset.json"))
        .arg("--unauthenticated-segments")
        .args(segments)
        .arg("-o")
        .arg(tar);
    cmd
}

#[test]
fn unauthenticated_segments_exit_8_with_a_loud_warning() {
    let (dir, store) = fixture_store("store", None);
    let segments = fixture_segments(&store);
    let tar = dir.path().join("loose.tar");
    let out = run(&mut loose_cmd(dir.path(), &segments, &tar));
    assert_eq!(out.status.code(), Some(8), "{}", text(&out.stderr));
    let report = json(&out.stdout);
    assert_eq!(report["unauthenticated"], true);
    assert_eq!(report["complete_by_manifest"], false);
    assert_eq!(report["exit_code"], 8);
    assert_eq!(report["restored_entries"], 16);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cbfs-recover: UNAUTHENTICATED: no signed manifest proves"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing proves"), "{stderr}");
    assert_eq!(tar_entries(&fs::read(&tar).unwrap()).len(), 17);

    // Lockboxes elsewhere, named with --lockboxes.
    let elsewhere = dir.path().join("keys-moved");
    fs::rename(store.join("lockboxes"), &elsewhere).unwrap();
    let out = run(recover_cmd(dir.path())
        .args(["--identity", &key(dir.path(), "admin.key"), "--json"])
        .arg("--keyset")
        .arg(fixtures().join("keyset.json"))
        .arg("--lockboxes")
        .arg(&elsewhere)
        .arg("--unauthenticated-segments")
        .args(&segments)
        .arg("-o")
        .arg(dir.path().join("moved.tar")));
    assert_eq!(out.status.code(), Some(8), "{}", text(&out.stderr));
    assert_eq!(json(&out.stdout)["restored_entries"], 16);
}

/// Some loose segments damaged: what is intact is restored, and the exit
/// code is still 8, the one that says "not authenticated", never 3, which
/// a script would read as a partial but authenticated restore.
#[test]
fn a_partial_restore_of_unauthenticated_segments_still_exits_8() {
    let (dir, store) = fixture_store("store", None);
    let segments = fixture_segments(&store);
    // A byte flipped in the middle of the first segment: a member in it
    // fails, the others come back.
    let mut bytes = fs::read(&segments[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    fs::write(&segments[0], bytes).unwrap();
    let tar = dir.path().join("loose.tar");
    let out = run(&mut loose_cmd(dir.path(), &segments, &tar));
    assert_eq!(out.status.code(), Some(8), "{}", text(&out.stderr));
    let report = json(&out.stdout);
    assert_eq!(report["exit_code"], 8);
    assert_eq!(report["unauthenticated"], true);
    assert!(
        !report["failures"].as_array().unwrap().is_empty(),
        "the damage was not met: {report:#}"
    );
    let restored = report["restored_entries"].as_u64().unwrap();
    assert!(restored > 0 && restored < 16, "{report:#}");
    assert!(
        text(&out.stderr).contains("UNAUTHENTICATED"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_store_without_readable_manifests_never_falls_back_to_loose_segments() {
    for damage in ["garbled", "gone"] {
        let (dir, store) = fixture_store("store", None);
        for key in manifest_keys(&store) {
            if damage == "gone" {
                fs::remove_file(store.join(key)).unwrap();
            } else {
                fs::write(store.join(key), b"garbage").unwrap();
            }
        }
        let tar = dir.path().join("out.tar");
        let out = run(recover_cmd(dir.path())
            .args(["--identity", &key(dir.path(), "admin.key"), "--json", "-o"])
            .arg(&tar)
            .arg("--store")
            .arg(&store));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{damage}: {stderr}");
        assert!(!tar.exists(), "{damage}");
        assert!(!stderr.contains("UNAUTHENTICATED"), "{damage}: {stderr}");
        let err = json(&out.stdout);
        assert_eq!(err["exit_code"], 4);
        assert!(
            err["error"].as_str().unwrap().contains("manifest"),
            "{damage}: {err}"
        );
    }
}

// --- Writers ----------------------------------------------------------------

#[test]
fn a_store_whose_keyset_registers_no_writer_is_refused_unless_the_writer_is_named() {
    let dir = TestDir::new();
    let store = dir.path().join("store");
    let keys = Keys::random(false);
    let want = small_store(&store, &keys);
    let admin = format!(
        "file:{}",
        key_file(
            dir.path(),
            "admin.key",
            keys.admin.seed().expose_secret_bytes()
        )
        .display()
    );
    let writer_fp = fingerprint(&keys.writer.verifying_key());
    let newest = manifest_keys(&store).pop().unwrap();
    let tar = dir.path().join("out.tar");
    let cmd = |accept: Option<&str>| {
        let mut c = recover_cmd(dir.path());
        c.args(["--identity", &admin, "--json", "--force", "-o"])
            .arg(&tar)
            .arg("--store")
            .arg(&store);
        if let Some(fp) = accept {
            c.args(["--accept-unregistered-writer", fp]);
        }
        c
    };
    let out = run(&mut cmd(None));
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&newest) && stderr.contains(&writer_fp),
        "the error names the manifest and the key: {stderr}"
    );
    assert!(stderr.contains("registers no writer"), "{stderr}");
    assert!(!tar.exists());

    // Someone else's fingerprint accepts nothing.
    let other = fingerprint(&stranger_signer().verifying_key());
    assert_eq!(run(&mut cmd(Some(&other))).status.code(), Some(4));

    let out = run(&mut cmd(Some(&writer_fp)));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report = json(&out.stdout);
    assert_eq!(report["snapshot"]["writer"], serde_json::Value::Null);
    assert_eq!(report["snapshot"]["writer_fingerprint"], writer_fp);
    assert_eq!(tar_files(&fs::read(&tar).unwrap()), want);

    // For that one command only: nothing remembers it.
    fs::remove_file(&tar).unwrap();
    assert_eq!(run(&mut cmd(None)).status.code(), Some(4));
    assert!(!tar.exists());
}

#[test]
fn a_manifest_planted_under_a_higher_sequence_is_ignored_with_a_warning() {
    let (dir, store) = fixture_store("store", Some("untrusted-writer"));
    let alien_key = manifest_keys(&store).pop().unwrap();
    assert!(alien_key.starts_with("snapshots/00000000000000000003-"));
    // And one more under the real newest snapshot's own sequence.
    let alien =
        Manifest::from_bytes_any_signer(&fs::read(store.join(&alien_key)).unwrap()).unwrap();
    let twin = plant_manifest(&store, 2, None, alien.entries(), &stranger_signer());
    let tar = dir.path().join("out.tar");
    let out = run(recover_cmd(dir.path())
        .args(["--identity", &key(dir.path(), "admin.key"), "--json", "-o"])
        .arg(&tar)
        .arg("--store")
        .arg(&store));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report = json(&out.stdout);
    assert_eq!(report["snapshot"]["sequence"], 2);
    assert_eq!(
        report["snapshot"]["object"],
        fixture_index()["snapshots"][1]
    );
    assert_eq!(report["restored_entries"], 16);
    for planted in [&alien_key, &twin] {
        assert!(
            stderr.contains(&format!("warning: ignored {planted}")),
            "{planted}: {stderr}"
        );
    }
}

// --- Administrators and keysets ---------------------------------------------

#[test]
fn a_rolled_back_keyset_is_refused_by_what_the_trust_records_saw() {
    let dir = TestDir::new();
    let store = dir.path().join("store");
    let keys = Keys::random(true);
    let admin_seed = keys.admin.seed().expose_secret_bytes().to_vec();
    let mut w = StoreWriter::new(&store, &keys);
    w.segment(
        SegmentMode::Encrypted,
        &[file("docs/real.txt", b"real\n".to_vec(), "default")],
    );
    let (_, real) = w.snapshot();
    let admin = format!(
        "file:{}",
        key_file(dir.path(), "admin.key", &admin_seed).display()
    );
    let tar = dir.path().join("out.tar");
    let cmd = || {
        let mut c = recover_cmd(dir.path());
        c.args(["--identity", &admin, "--force", "-o"])
            .arg(&tar)
            .arg("--store")
            .arg(&store);
        c
    };
    let out = run(&mut cmd());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    fs::remove_file(&tar).unwrap();

    // Serial 3 (the writer's registration) hidden, serial 2 (no writer)
    // served, and a manifest of someone else's.
    let older = Keys::new(&admin_seed, &keys.writer_seed, false);
    fs::remove_file(store.join(cbfs_format::layout::keyset(3))).unwrap();
    publish_keyset(&store, &older.keyset, &older.admin);
    let forged = plant_manifest(
        &store,
        2,
        Some(real.hash()),
        real.entries(),
        &stranger_signer(),
    );
    let out = run(&mut cmd());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("rolled back") && stderr.contains("serial 3 was seen before"),
        "{stderr}"
    );
    assert!(stderr.contains(&trust_file(dir.path()).display().to_string()));
    assert!(!tar.exists());

    // A reader with no records still does not take the forgery: the older
    // keyset registers no writer.
    let fresh = TestDir::new();
    let out = run(recover_cmd(fresh.path())
        .args(["--identity", &admin, "-o"])
        .arg(&tar)
        .arg("--store")
        .arg(&store));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains(&forged), "{stderr}");
    assert!(!tar.exists());
}

/// The fixture store with a keyset forged by someone who can write to it:
/// signed by their own administrator key, the real scope public keys
/// copied in, their writer registered; and a snapshot 3 of theirs whose
/// members the real `alice` scope secret decrypts.
fn forged_fixture_store() -> (TestDir, PathBuf, AdminSecret) {
    let (dir, store) = fixture_store("store", None);
    let forger = AdminSecret::generate();
    let writer = stranger_signer();
    let keyset = forged_keyset(
        &fixture_keyset(),
        &forger,
        10,
        &[("agent", writer.verifying_key())],
    );
    let keys = Keys {
        admin: AdminSecret::from_seed(seed(forger.seed().expose_secret_bytes())),
        keyset,
        writer,
        writer_seed: Vec::new(),
    };
    let mut w = StoreWriter::new(&store, &keys);
    w.sequence = 2;
    w.deltas = false;
    w.segment(
        SegmentMode::Encrypted,
        &[
            entry(b"alice", EntryKind::Dir, "alice"),
            file("alice/a1.txt", b"forged\n".to_vec(), "alice"),
            file("alice/planted.sh", b"#!/bin/sh\nexit 0\n".to_vec(), "alice"),
        ],
    );
    w.snapshot();
    (dir, store, forger)
}

#[test]
fn a_scope_secret_needs_the_administrator_pinned_and_a_forged_keyset_is_not_used() {
    let (dir, store, forger) = forged_fixture_store();
    let alice = key(dir.path(), "alice-scope.key");
    let tar = dir.path().join("alice.tar");
    let cmd = |admin_key: Option<&str>| {
        let mut c = recover_cmd(dir.path());
        c.args(["--identity", &alice, "--force", "-o"])
            .arg(&tar)
            .arg("--store")
            .arg(&store);
        if let Some(fp) = admin_key {
            c.args(["--admin-key", fp]);
        }
        c
    };

    // No pin: refused, and the message says how to pin.
    let out = run(&mut cmd(None));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("no administrator key is pinned"),
        "{stderr}"
    );
    assert!(stderr.contains("--admin-key"), "{stderr}");
    assert!(!tar.exists());

    // The real administrator pinned: the real keyset and the real snapshot;
    // the planted one is ignored.
    let out = run(&mut cmd(Some(&fixture_admin())));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: ignored snapshots/00000000000000000003-"),
        "{stderr}"
    );
    let files = tar_files(&fs::read(&tar).unwrap());
    assert_eq!(files["alice/a1.txt"], b"alice one\n");
    assert!(
        !files.contains_key("alice/planted.sh"),
        "{:?}",
        files.keys()
    );

    // Remembered: the next run needs no --admin-key, and still reads the
    // real keyset.
    fs::remove_file(&tar).unwrap();
    let out = run(&mut cmd(None));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        tar_files(&fs::read(&tar).unwrap())["alice/a1.txt"],
        b"alice one\n"
    );

    // With the real keyset gone, the pin matches nothing in the store.
    fs::remove_file(&tar).unwrap();
    fs::remove_file(store.join(cbfs_format::layout::keyset(3))).unwrap();
    let out = run(&mut cmd(Some(&fixture_admin())));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&fingerprint(&forger.verifying_key())),
        "the error names the key that signed what is there: {stderr}"
    );
    assert!(!tar.exists());
}

#[test]
fn without_a_pin_a_strangers_key_is_refused_before_it_is_tried() {
    let (dir, store) = fixture_store("store", None);
    let out = run(recover_cmd(dir.path())
        .args(["--identity", &key(dir.path(), "stranger.key"), "-o"])
        .arg(dir.path().join("out.tar"))
        .arg("--store")
        .arg(&store));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("--admin-key"), "{stderr}");
}

// --- Snapshot rollback -------------------------------------------------------

#[test]
fn a_store_that_lost_its_newest_snapshot_is_refused_unless_the_older_one_is_asked_for() {
    let (dir, store) = fixture_store("store", None);
    let admin = key(dir.path(), "admin.key");
    let tar = dir.path().join("out.tar");
    let cmd = |snapshot: Option<&str>| {
        let mut c = recover_cmd(dir.path());
        c.args(["--identity", &admin, "--json", "--force", "-o"])
            .arg(&tar)
            .arg("--store")
            .arg(&store);
        if let Some(s) = snapshot {
            c.args(["--snapshot", s]);
        }
        c
    };
    let out = run(&mut cmd(None));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json(&out.stdout)["snapshot"]["sequence"], 2);
    fs::remove_file(&tar).unwrap();

    // Snapshot 2 vanishes: the store now shows only snapshot 1.
    let snap2 = fixture_index()["snapshots"][1].as_str().unwrap().to_owned();
    fs::remove_file(store.join(&snap2)).unwrap();
    let out = run(&mut cmd(None));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("sequence 2 was seen before") && stderr.contains("--snapshot"),
        "{stderr}"
    );
    assert!(!tar.exists());

    // Asked for on purpose, snapshot 1 restores.
    let out = run(&mut cmd(Some("1")));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report = json(&out.stdout);
    assert_eq!(report["snapshot"]["sequence"], 1);
    let files = tar_files(&fs::read(&tar).unwrap());
    assert_eq!(files["alice/a2.bin"], bytes(2, 66_000));
    assert!(!files.contains_key("docs/tail.bin"), "only in snapshot 2");
    // What was seen is not lowered by it.
    let records = json(&fs::read(trust_file(dir.path())).unwrap());
    assert_eq!(records["file_systems"]["fixture"]["highest_snapshot"], 2);
}

// --- A tar on a pipe is flushed after each entry ------------------------------

/// An entry of a tar stream as far as it arrived: its header's size and
/// the content bytes that followed.
struct Arrived {
    path: String,
    size: u64,
    content: Vec<u8>,
}

/// Reads a possibly cut tar stream with the `tar` crate, up to where it ends.
fn arrived(bytes: &[u8]) -> Vec<Arrived> {
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(bytes);
    let Ok(entries) = archive.entries() else {
        return out;
    };
    for e in entries {
        let Ok(mut e) = e else { break };
        let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let size = e.header().size().unwrap();
        let mut content = Vec::new();
        // A cut entry gives what there is, then ends.
        let _ = e.read_to_end(&mut content);
        out.push(Arrived {
            path,
            size,
            content,
        });
    }
    out
}

#[test]
fn a_tar_on_standard_output_has_every_entry_whole_when_the_restore_is_killed() {
    // Small files (more than a megabyte of them) and then one large file,
    // whose decryption keeps the restore busy with nothing to write: killed
    // then, every entry that arrived must be whole.
    const SMALL: usize = 60;
    const BIG: usize = 24 << 20;
    let dir = TestDir::new();
    let store = dir.path().join("store");
    let keys = Keys::random(true);
    let mut w = StoreWriter::new(&store, &keys);
    let small: Vec<Item> = (0..SMALL)
        .map(|i| {
            file(
                &format!("a/f{i:02}"),
                bytes(100 + i as u64, 20 * 1024 + i),
                "default",
            )
        })
        .collect();
    w.segment(SegmentMode::Encrypted, &small);
    w.segment(
        SegmentMode::Encrypted,
        &[file("z/big.bin", bytes(7, BIG), "default")],
    );
    w.snapshot();
    let admin = key_file(
        dir.path(),
        "admin.key",
        keys.admin.seed().expose_secret_bytes(),
    );
    let stderr_path = dir.path().join("stderr.txt");
    let mut child = recover_cmd(dir.path())
        .arg("--identity")
        .arg(format!("file:{}", admin.display()))
        .args(["--jobs", "1", "-o", "-", "--store"])
        .arg(&store)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();

    // Drain the pipe on a thread, noting when bytes last came.
    let mut stdout = child.stdout.take().unwrap();
    let got = Arc::new(Mutex::new((Vec::<u8>::new(), Instant::now())));
    let reader = {
        let got = Arc::clone(&got);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut g = got.lock().unwrap();
                        g.0.extend_from_slice(&buf[..n]);
                        g.1 = Instant::now();
                    }
                }
            }
        })
    };

    // Kill it once entries have arrived and it has gone quiet.
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "cbfs-recover finished ({status}) before it could be killed mid-stream: make the large file larger\n{}",
                fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        let (whole, quiet) = {
            let g = got.lock().unwrap();
            let whole = arrived(&g.0)
                .iter()
                .filter(|a| a.content.len() as u64 == a.size && a.size > 0)
                .count();
            (whole, g.1.elapsed())
        };
        if whole > 0 && quiet > Duration::from_millis(500) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no whole entry arrived, or the stream never went quiet"
        );
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");

    let bytes_seen = got.lock().unwrap().0.clone();
    let entries = arrived(&bytes_seen);
    assert!(
        !entries.iter().any(|a| a.path == "z/big.bin"),
        "the kill landed after the large file had started: make it larger"
    );
    let mut files = 0;
    for a in &entries {
        assert_eq!(
            a.content.len() as u64,
            a.size,
            "{} arrived {} bytes short (of {}) of {} bytes seen in all",
            a.path,
            a.size - a.content.len() as u64,
            a.size,
            bytes_seen.len()
        );
        if let Some(i) = a.path.strip_prefix("a/f") {
            let i: usize = i.parse().unwrap();
            assert_eq!(
                a.content,
                bytes(100 + i as u64, 20 * 1024 + i),
                "{}",
                a.path
            );
            files += 1;
        }
    }
    assert!(files > 0, "no file arrived");
}

/// A restore that cannot set an entry's owner (not running as root) does
/// not keep its setuid, setgid or sticky bit, as tar without -p: the bits
/// would grant the restoring user's rights under another's name. As root,
/// where the owner is set, they are kept.
#[test]
fn special_bits_are_cleared_where_the_owner_cannot_be_set() {
    use std::os::unix::fs::MetadataExt;
    const NOBODY: u32 = 65534;
    let dir = TestDir::new();
    let store = dir.path().join("store");
    let keys = Keys::random(true);
    let mut w = StoreWriter::new(&store, &keys);
    let owned_by_other = |mut item: Item, mode: u32| {
        item.meta.mode = mode;
        item.meta.uid = 4242;
        item.meta.gid = 4242;
        item
    };
    let mut shared = entry(b"shared", EntryKind::Dir, "default");
    shared.meta.mode = 0o1777;
    w.segment(
        SegmentMode::Encrypted,
        &[
            owned_by_other(shared, 0o1777),
            owned_by_other(file("bin/su", b"#!/bin/sh\n".to_vec(), "default"), 0o4755),
            owned_by_other(file("bin/sg", b"#!/bin/sh\n".to_vec(), "default"), 0o2750),
            owned_by_other(file("bin/plain", b"plain\n".to_vec(), "default"), 0o751),
        ],
    );
    w.snapshot();
    let root = fs::metadata("/proc/self").unwrap().uid() == 0;
    // The restoring user: nobody when the test runs as root.
    let home = dir.path().join("home");
    fs::create_dir_all(&home).unwrap();
    let admin = key_file(&home, "admin.key", keys.admin.seed().expose_secret_bytes());
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let restore = |dest: &Path, as_nobody: bool| {
        let mut cmd = if as_nobody {
            for p in [&home, &admin] {
                std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
            }
            let mut c = std::process::Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_cbfs-recover"));
            c
        } else {
            std::process::Command::new(env!("CARGO_BIN_EXE_cbfs-recover"))
        };
        cmd.env("HOME", &home)
            .env("CBFS_TRUST_FILE", home.join("trusted-admins.json"))
            .env_remove("CBFS_LOG")
            .arg("--identity")
            .arg(format!("file:{}", admin.display()))
            .arg("-C")
            .arg(dest)
            .arg("--store")
            .arg(&store);
        run(&mut cmd)
    };
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;

    let dest = home.join("restored");
    let out = restore(&dest, root);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("3 entries lost the setuid, setgid or sticky bit"),
        "{stderr}"
    );
    assert_eq!(mode(&dest.join("bin/su")), 0o755);
    assert_eq!(mode(&dest.join("bin/sg")), 0o750);
    assert_eq!(mode(&dest.join("shared")), 0o777);
    assert_eq!(mode(&dest.join("bin/plain")), 0o751);
    assert_ne!(fs::metadata(dest.join("bin/su")).unwrap().uid(), 4242);

    if root {
        let dest = dir.path().join("as-root");
        let out = restore(&dest, false);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(!stderr.contains("lost the setuid"), "{stderr}");
        assert_eq!(mode(&dest.join("bin/su")), 0o4755);
        assert_eq!(mode(&dest.join("bin/sg")), 0o2750);
        assert_eq!(mode(&dest.join("shared")), 0o1777);
        assert_eq!(fs::metadata(dest.join("bin/su")).unwrap().uid(), 4242);
    }
}
