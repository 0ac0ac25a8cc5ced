//! `cbfs-tier restore`, `verify`, `ls` and `snapshots` against a store that
//! someone who can write to it forged, as an attacker would: the forgeries
//! that once got a forged snapshot accepted with exit 0 (a keyset that
//! registers no writer, a keyset rolled back, a self-signed keyset put in
//! place of the administrator's), and two trusted manifests that fork.
//! Every reader refuses each with exit 4, naming what it refused; none
//! shows what another refuses.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cbfs_core::{Keyset, Seed, UserSecret, fingerprint};
use cbfs_format::{Manifest, ManifestBuilder, SnapshotId, layout};
use cbfs_tests::{Workdir, cbfs_cmd, random_bytes, run, run_ok};
use sha2::{Digest, Sha256};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn keytool(dir: &Path, args: &str) {
    run_ok(
        cbfs_cmd("cbfs-keytool")
            .current_dir(dir)
            .args(args.split_whitespace()),
    );
}

/// A file system whose keyset was signed three times: serial 0 (scope
/// `default` only), 1 (scope `alice`), 2 (the agent's writer registered).
/// `keyset-1.json` keeps serial 1, which registers no writer.
struct Site {
    work: Workdir,
    keys: PathBuf,
    store: PathBuf,
    index: PathBuf,
    src: PathBuf,
}

impl Site {
    fn new() -> Site {
        let work = Workdir::new();
        let keys = work.mkdir("keys");
        keytool(
            &keys,
            "create-user agent --secret file:agent.key --public agent.pub",
        );
        keytool(
            &keys,
            "create-admin --fs projects --secret file:admin.key --keyset keyset.json",
        );
        keytool(
            &keys,
            "add-scope --admin file:admin.key --keyset keyset.json --scope alice",
        );
        std::fs::copy(keys.join("keyset.json"), keys.join("keyset-1.json")).unwrap();
        keytool(
            &keys,
            "add-writer --admin file:admin.key --keyset keyset.json --public agent.pub",
        );
        assert_eq!(Keyset::load(&keys.join("keyset.json")).unwrap().serial(), 2);
        let src = work.mkdir("src");
        std::fs::create_dir_all(src.join("alice")).unwrap();
        std::fs::write(src.join("alice/plan.txt"), b"the real plan\n").unwrap();
        std::fs::write(src.join("readme"), random_bytes(3000)).unwrap();
        let site = Site {
            store: work.path("store"),
            index: work.path("index"),
            src,
            keys,
            work,
        };
        site.out();
        std::fs::write(site.src.join("later"), b"a second snapshot").unwrap();
        site.out();
        site
    }

    fn out(&self) {
        run_ok(
            cbfs_cmd("cbfs-tier")
                .arg("out")
                .arg(&self.src)
                .arg("--store")
                .arg(&self.store)
                .arg("--index")
                .arg(&self.index)
                .arg("--keyset")
                .arg(self.keys.join("keyset.json"))
                .arg("--writer-key")
                .arg(format!("file:{}", self.keys.join("agent.key").display()))
                .args(["--scope", "alice/**=alice"]),
        );
    }

    fn admin_fingerprint(&self) -> String {
        let ks = Keyset::load(&self.keys.join("keyset.json")).unwrap();
        fingerprint(ks.admin_verifying_key())
    }

    fn manifests(&self) -> Vec<String> {
        let mut keys: Vec<String> = std::fs::read_dir(self.store.join("snapshots"))
            .unwrap()
            .map(|e| format!("snapshots/{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        keys.sort();
        keys
    }

    fn bytes(&self, key: &str) -> Vec<u8> {
        std::fs::read(self.store.join(key)).unwrap()
    }

    /// The first snapshot's manifest (a full one; later ones are deltas).
    fn first(&self) -> Manifest {
        Manifest::from_bytes_any_signer(&self.bytes(&self.manifests()[0])).unwrap()
    }

    /// A manifest at `sequence` that follows `previous` (its bytes), with
    /// the members of `like`, signed by `signer`; its object key.
    fn plant(
        &self,
        sequence: u64,
        previous: &[u8],
        like: &Manifest,
        signer: &cbfs_core::umbral_pre::Signer,
    ) -> String {
        let id = SnapshotId::random();
        let previous: [u8; 32] = Sha256::digest(previous).into();
        let mut b = ManifestBuilder::new(id, sequence, Some(previous), 1_900_000_000);
        b.extend(like.entries().iter().copied());
        let m = b.sign(signer).unwrap();
        let key = layout::manifest(sequence, &id);
        std::fs::write(self.store.join(&key), m.to_bytes()).unwrap();
        key
    }

    fn agent_signer(&self) -> cbfs_core::umbral_pre::Signer {
        let seed = std::fs::read(self.keys.join("agent.key")).unwrap();
        UserSecret::from_seed(Seed::from_slice(&seed, "agent.key").unwrap()).signer()
    }

    /// The four readers, each with `trust` (and the trust records of
    /// `name`, so that no reader learns from another's) and no index, and
    /// what each said.
    fn readers(&self, name: &str, trust: &[String]) -> Vec<(&'static str, Output)> {
        let no_index = self.work.path(format!("{name}-no-index"));
        self.readers_with_index(name, trust, &no_index)
    }

    /// [`readers`](Self::readers) with the agent's index at `index`.
    fn readers_with_index(
        &self,
        name: &str,
        trust: &[String],
        index: &Path,
    ) -> Vec<(&'static str, Output)> {
        let records = self.work.path(format!("{name}-trust.json"));
        let with = |cmd: &mut Command| -> Output {
            cmd.arg("--store")
                .arg(&self.store)
                .arg("--trust-file")
                .arg(&records)
                .arg("--index")
                .arg(index)
                .args(trust);
            run(cmd)
        };
        let dest = self.work.path(format!("{name}-restored"));
        vec![
            (
                "restore",
                with(
                    cbfs_cmd("cbfs-tier")
                        .args(["--json", "restore", "--identity"])
                        .arg(format!("file:{}", self.keys.join("admin.key").display()))
                        .arg(".")
                        .arg(&dest),
                ),
            ),
            (
                "verify",
                with(cbfs_cmd("cbfs-tier").args(["--json", "verify"])),
            ),
            ("ls", with(cbfs_cmd("cbfs-tier").arg("ls"))),
            ("snapshots", with(cbfs_cmd("cbfs-tier").arg("snapshots"))),
        ]
    }
}

/// Fails unless every reader exited 4 and said each of `names`.
#[track_caller]
fn all_refused(said: &[(&str, Output)], names: &[&str]) {
    for (reader, out) in said {
        let all = text(&out.stdout) + &text(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{reader}: {all}");
        for name in names {
            assert!(all.contains(name), "{reader} does not name {name}: {all}");
        }
    }
}

/// The store's keyset rolled back to serial 1, which registers no writer
/// (the attacker hid serial 2), and a manifest of the attacker's own key
/// planted past the real ones. A reader that never saw serial 2 trusts no
/// snapshot at all: the agent's and the attacker's manifests are refused
/// alike, naming the object and the signing key. A reader that knows
/// serial 2 (the keyset file, or its trust records) calls it a rollback.
#[test]
fn with_no_writer_registered_or_the_keyset_rolled_back_every_reader_refuses() {
    let site = Site::new();
    let admin_fp = site.admin_fingerprint();
    // A reader that restored before the attack remembers serial 2.
    let before = site.readers("before", &["--admin-key".into(), admin_fp.clone()]);
    assert_eq!(
        before[0].1.status.code(),
        Some(0),
        "{}",
        text(&before[0].1.stderr)
    );

    let newest = site.manifests().pop().unwrap();
    let bytes = site.bytes(&newest);
    std::fs::remove_file(site.store.join(layout::keyset(2))).unwrap();
    std::fs::copy(
        site.keys.join("keyset-1.json"),
        site.store.join(layout::keyset(1)),
    )
    .unwrap();
    let attacker = UserSecret::generate().signer();
    let forged = site.plant(3, &bytes, &site.first(), &attacker);
    let attacker_fp = fingerprint(&attacker.verifying_key());

    // No writer registered: pinned by fingerprint, first use.
    let said = site.readers("fresh", &["--admin-key".into(), admin_fp.clone()]);
    all_refused(&said, &[&forged, &attacker_fp]);
    for (reader, out) in &said {
        let all = text(&out.stdout) + &text(&out.stderr);
        assert!(all.contains("registers no writer"), "{reader}: {all}");
    }
    // The keyset the reader trusts is serial 2: serial 1 is a rollback.
    let keyset = site.keys.join("keyset.json").display().to_string();
    let said = site.readers("by-file", &["--keyset".into(), keyset]);
    all_refused(&said, &["rolled back"]);
    // What the records saw: serial 2.
    let said = site.readers("before", &[]);
    all_refused(&said, &["rolled back", "serial 2 was seen before"]);
}

/// The attacker's own administrator signs a keyset of the same file system
/// name, with a higher serial and their writer registered, and their own
/// agent writes snapshots of their own tree; then the administrator's
/// keysets and snapshots are taken out of the store. A reader pinned to
/// the real administrator (by fingerprint, by keyset file, or by the
/// agent's index) finds no keyset of it and refuses; one with nothing
/// pinned refuses too, and says how to pin.
#[test]
fn a_self_signed_keyset_put_in_place_of_the_administrators_is_refused() {
    let site = Site::new();
    let admin_fp = site.admin_fingerprint();
    // The attacker, with the real tools.
    let evil = site.work.mkdir("evil");
    keytool(
        &evil,
        "create-user agent --secret file:agent.key --public agent.pub",
    );
    keytool(
        &evil,
        "create-admin --fs projects --secret file:admin.key --keyset keyset.json --writer agent.pub",
    );
    for i in 0..5 {
        keytool(
            &evil,
            &format!("add-scope --admin file:admin.key --keyset keyset.json --scope s{i}"),
        );
    }
    let evil_src = site.work.mkdir("evil-src");
    std::fs::write(evil_src.join("planted.sh"), b"#!/bin/sh\necho owned\n").unwrap();
    let evil_store = site.work.path("evil-store");
    run_ok(
        cbfs_cmd("cbfs-tier")
            .arg("out")
            .arg(&evil_src)
            .arg("--store")
            .arg(&evil_store)
            .arg("--index")
            .arg(site.work.path("evil-index"))
            .arg("--keyset")
            .arg(evil.join("keyset.json"))
            .arg("--writer-key")
            .arg(format!("file:{}", evil.join("agent.key").display())),
    );
    for dir in ["keysets", "snapshots"] {
        std::fs::remove_dir_all(site.store.join(dir)).unwrap();
    }
    copy_tree(&evil_store, &site.store);
    let evil_fp = fingerprint(
        Keyset::load(&evil.join("keyset.json"))
            .unwrap()
            .admin_verifying_key(),
    );

    let keyset = site.keys.join("keyset.json").display().to_string();
    for (name, trust) in [
        (
            "by-fingerprint",
            vec!["--admin-key".to_owned(), admin_fp.clone()],
        ),
        ("by-file", vec!["--keyset".to_owned(), keyset]),
    ] {
        let said = site.readers(name, &trust);
        all_refused(&said, &["holds no keyset signed by", &evil_fp]);
    }
    // Pinned by the agent's own index.
    let said = site.readers_with_index("by-index", &[], &site.index);
    all_refused(&said, &["holds no keyset signed by"]);
    // Nothing pinned (and the root secret does not match the store's
    // administrator): refused, saying how to pin.
    let said = site.readers("nothing", &[]);
    all_refused(&said, &["--admin-key"]);
}

/// Two manifests, both signed by the registered writer, claim the same
/// sequence: a fork. `restore`, `verify`, `ls` and `snapshots` refuse it
/// alike (exit 4, naming both), where `ls` and `snapshots` once listed
/// both. A trusted manifest that follows none of the store's earlier ones
/// is refused alike too.
#[test]
fn a_fork_of_two_trusted_manifests_is_refused_by_every_reader_alike() {
    let site = Site::new();
    let admin_fp = site.admin_fingerprint();
    let manifests = site.manifests();
    assert_eq!(manifests.len(), 2);
    let first = site.first();
    let twin = site.plant(2, &site.bytes(&manifests[0]), &first, &site.agent_signer());
    let trust = ["--admin-key".to_owned(), admin_fp];
    let said = site.readers("fork", &trust);
    all_refused(&said, &["fork", &manifests[1], &twin]);

    // Without the twin, a trusted manifest whose previous is no manifest
    // of the store.
    std::fs::remove_file(site.store.join(&twin)).unwrap();
    let stray = site.plant(
        3,
        b"no manifest has these bytes",
        &first,
        &site.agent_signer(),
    );
    let said = site.readers("chain", &trust);
    all_refused(&said, &[&stray, "matches none of the"]);
}

fn copy_tree(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}
