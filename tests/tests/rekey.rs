//! `cbfs-tier rekey` end to end: a scope stored again under new file and
//! group keys after a revocation, verified, resumable after `kill -9`, and
//! its old copies collectable.
//!
//! - A revoked user who kept every group key and cfrag she was ever given
//!   opens none of the re-keyed members, while the administrator and a user
//!   still delegated restore the same bytes; other scopes keep their
//!   members.
//! - A re-key killed at a crash point finishes on the rerun, in one
//!   snapshot, verified; tier-out runs wait for it meanwhile (local store
//!   and moto S3).
//! - Bad input: a wrong administrator key or an unknown scope writes
//!   nothing; a damaged old member fails the command naming its segment,
//!   and only that member stays as it was.
//! - `--forget-older`, then `cbfs-gc`: the old segments go, and the new
//!   snapshot restores byte for byte (local store and moto S3).
//! - With `--tree`, released files' stubs name the new copies: they recall
//!   from them once the older snapshots are forgotten.

#![forbid(unsafe_code)]

#[allow(dead_code)]
#[path = "delegation/cluster.rs"]
mod cluster;
#[path = "gc/env.rs"]
mod env;
#[path = "tiering/hsm.rs"]
mod hsm;
/// The keys `tiering/hsm.rs` works with: the gc environment's.
mod keys {
    pub use super::env::Keys;
}

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cbfs_format::{GroupId, GroupKey, GroupKeys, Lockbox, SegmentReader};
use cbfs_tests::{
    Backend, Compare, FsKind, S3Server, assert_same_tree, cbfs_cmd, random_bytes, run, run_ok,
};
use cluster::{Cluster, SCOPE, USER, text};
use env::{Env, stderr};
use serde_json::Value;

/// Group keys a user kept.
struct Kept(Vec<GroupKey>);

impl GroupKeys for Kept {
    fn group_key(&self, id: &GroupId) -> Option<&GroupKey> {
        self.0.iter().find(|k| k.id() == *id)
    }
}

/// The objects of a local store under `prefix`: key and bytes.
fn objects_under(store: &Path, prefix: &str) -> Vec<(String, Vec<u8>)> {
    Backend::Local(store.to_path_buf())
        .objects()
        .into_iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .collect()
}

/// The lockboxes of `scope` in a local store.
fn lockboxes_of(store: &Path, scope: &str) -> Vec<Lockbox> {
    objects_under(store, "lockboxes/")
        .into_iter()
        .map(|(_, bytes)| Lockbox::from_bytes(&bytes).unwrap())
        .filter(|l| l.scope() == scope)
        .collect()
}

/// `cbfs-tier ls --json` of the newest snapshot: path to (scope, member).
fn listing(
    store: &str,
    index: &Path,
    envs: &[(String, String)],
) -> BTreeMap<String, (String, String)> {
    let out = run_ok(
        cbfs_cmd("cbfs-tier")
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(["--json", "ls", "--store", store])
            .arg("--index")
            .arg(index),
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_owned(),
                (
                    e["scope"].as_str().unwrap().to_owned(),
                    e["member"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect()
}

/// The members (by id) of a local store that open with `keys`.
fn members_opened_with(store: &Path, keys: &Kept) -> BTreeSet<String> {
    let mut opened = BTreeSet::new();
    for (_, bytes) in objects_under(store, "segments/") {
        let mut reader = SegmentReader::new(std::io::Cursor::new(bytes)).unwrap();
        while let Some(member) = reader.next_member().unwrap() {
            let id = member.info().member.map(|m| m.to_string());
            if let Ok(mut files) = member.open_files(keys)
                && std::io::copy(&mut files.content, &mut std::io::sink()).is_ok()
            {
                opened.extend(id);
            }
        }
    }
    opened
}

// ---------------------------------------------------------------------------
// A revoked user and her kept keys

/// The tree: files of the delegated scope under `proj/` (some packed, one
/// large), and files of the `default` scope.
fn cluster_source(c: &Cluster) -> PathBuf {
    let src = c.work.mkdir("src");
    let proj = src.join(SCOPE);
    std::fs::create_dir_all(proj.join("deep/er")).unwrap();
    for i in 0..12 {
        std::fs::write(proj.join(format!("file-{i}")), random_bytes(30_000)).unwrap();
    }
    std::fs::write(proj.join("large.bin"), random_bytes(400_000)).unwrap();
    std::fs::write(proj.join("deep/er/note.txt"), b"the delegated scope").unwrap();
    std::os::unix::fs::symlink("deep/er/note.txt", proj.join("note-link")).unwrap();
    std::fs::create_dir_all(src.join("other")).unwrap();
    std::fs::write(src.join("other/secret.txt"), b"not for alice").unwrap();
    std::fs::write(src.join("other/more.bin"), random_bytes(50_000)).unwrap();
    src
}

fn keytool(c: &Cluster, line: &str) -> Command {
    let mut cmd = cluster::keytool(c.work.root());
    cmd.args(cluster::words(line));
    cmd
}

fn agent_args(c: &Cluster, store: &Path) -> Vec<String> {
    vec![
        "--writer-key".into(),
        format!("file:{}", c.work.path("writer.key").display()),
        "--store".into(),
        store.display().to_string(),
        "--index".into(),
        c.work.path("index").display().to_string(),
        "--keyset".into(),
        c.work.path("keyset.json").display().to_string(),
    ]
}

/// `cbfs-tier --json restore . DEST` as `user`, through the nodes.
fn user_restore(c: &Cluster, store: &Path, user: &str, dest: &str) -> Output {
    run(cbfs_cmd("cbfs-tier")
        .args(["--json", "restore", "--store"])
        .arg(store)
        .arg("--identity")
        .arg(format!(
            "file:{}",
            c.work.path(format!("{user}.key")).display()
        ))
        .arg("--user")
        .arg(c.work.path(format!("{user}.pub")))
        .arg("--keyset")
        .arg(c.work.path("keyset.json"))
        .args(Cluster::node_args(&c.urls()))
        .args(["--node-timeout", "20", "."])
        .arg(c.work.path(dest)))
}

#[test]
fn a_revoked_user_with_every_key_she_was_given_opens_nothing_rekeyed() {
    let c = Cluster::start(3, &[]);
    c.delegate(2, &[]);
    // Carol stays delegated.
    run_ok(&mut keytool(
        &c,
        "create-user carol --secret file:carol.key --public carol.pub",
    ));
    run_ok(
        keytool(
            &c,
            &format!(
                "delegate --admin file:admin.key --keyset keyset.json --scope {SCOPE} --to carol.pub --threshold 2"
            ),
        )
        .args(Cluster::node_args(&c.urls())),
    );
    run_ok(&mut keytool(
        &c,
        "create-user writer --secret file:writer.key --public writer.pub",
    ));
    run_ok(&mut keytool(
        &c,
        "add-writer --admin file:admin.key --keyset keyset.json --public writer.pub",
    ));
    let src = cluster_source(&c);
    let store = c.work.path("store");
    run_ok(
        cbfs_cmd("cbfs-tier")
            .arg("out")
            .arg(&src)
            .args(agent_args(&c, &store))
            .args(["--scope", &format!("{SCOPE}/**={SCOPE}")])
            .args(["--segment-size", "100K", "--jobs", "1"]),
    );

    // Alice restores her scope, and keeps everything she was given: the
    // cfrags of every lockbox of it, and the group keys they open.
    let out = user_restore(&c, &store, USER, "alice-before");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_same_tree(
        &src.join(SCOPE),
        &c.work.path("alice-before").join(SCOPE),
        Compare::default(),
    );
    let old_lockboxes = lockboxes_of(&store, SCOPE);
    assert!(!old_lockboxes.is_empty());
    let pairs: Vec<(Lockbox, GroupKey)> = old_lockboxes
        .iter()
        .map(|l| (l.clone(), GroupKey::generate()))
        .collect();
    let fetched = c.fetch(&c.urls(), "/", &pairs).expect("alice's cfrags");
    let sk = c.user.secret_key();
    let kept_cfrags = fetched.cfrags.clone();
    let kept = Kept(
        old_lockboxes
            .iter()
            .zip(fetched.cfrags)
            .map(|(l, cfrags)| l.open_reencrypted(&sk, &c.scope_key(), cfrags).unwrap())
            .collect(),
    );
    let before = listing(&store.display().to_string(), &c.work.path("index"), &[]);
    let proj_before: BTreeSet<String> = before
        .values()
        .filter(|(s, _)| s == SCOPE)
        .map(|(_, m)| m.clone())
        .collect();
    let opened_before = members_opened_with(&store, &kept);
    assert!(
        proj_before.is_subset(&opened_before),
        "with her keys alice opens every member of the scope before the re-key"
    );

    // Revoked; the scope re-keyed.
    run_ok(&mut c.revoke_cmd(&[]));
    let out = run_ok(
        cbfs_cmd("cbfs-tier")
            .args(["--json", "rekey"])
            .args(agent_args(&c, &store))
            .arg("--admin")
            .arg(format!("file:{}", c.work.path("admin.key").display()))
            .args(["--scope", SCOPE, "--segment-size", "100K"]),
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = before.values().filter(|(s, _)| s == SCOPE).count() as u64;
    assert_eq!(report["rekeyed"].as_u64(), Some(entries), "{report:#}");
    assert_eq!(report["verified"].as_u64(), Some(entries), "{report:#}");
    assert_eq!(
        report["older_snapshots"],
        serde_json::json!([1]),
        "{report:#}"
    );
    assert_eq!(report["sequence"].as_u64(), Some(2), "{report:#}");

    // Every entry of the scope names a new member; the others are as they were.
    let after = listing(&store.display().to_string(), &c.work.path("index"), &[]);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    let mut proj_after = BTreeSet::new();
    for (path, (scope, member)) in &after {
        if scope == SCOPE {
            assert!(!proj_before.contains(member), "{path} kept its old member");
            proj_after.insert(member.clone());
        } else {
            assert_eq!(&before[path].1, member, "{path} of scope {scope} changed");
        }
    }

    // Her kept group keys open none of the new members, and her kept
    // cfrags open none of the new lockboxes.
    let opened_after = members_opened_with(&store, &kept);
    assert!(
        opened_after.is_disjoint(&proj_after),
        "alice's kept keys open re-keyed members: {:?}",
        opened_after.intersection(&proj_after).collect::<Vec<_>>()
    );
    let old_groups: BTreeSet<GroupId> = old_lockboxes.iter().map(|l| l.group_id()).collect();
    let new_lockboxes: Vec<Lockbox> = lockboxes_of(&store, SCOPE)
        .into_iter()
        .filter(|l| !old_groups.contains(&l.group_id()))
        .collect();
    assert!(!new_lockboxes.is_empty());
    let admin_scope = c.admin().scope(&cbfs_core::ScopeLabel::new(SCOPE).unwrap());
    for lb in &new_lockboxes {
        let key = lb.open(admin_scope.secret_key()).unwrap();
        assert!(
            kept.0
                .iter()
                .all(|k| k.expose_secret() != key.expose_secret()),
            "a new group key equals an old one"
        );
        for cfrags in &kept_cfrags {
            assert!(
                lb.open_reencrypted(&sk, &c.scope_key(), cfrags.clone())
                    .is_err(),
                "kept cfrags open a new lockbox"
            );
        }
    }

    // The nodes refuse her now; carol and the administrator get the same bytes.
    let out = user_restore(&c, &store, USER, "alice-after");
    assert!(!out.status.success());
    let written = cbfs_tests::describe(&c.work.path("alice-after"), Compare::default());
    assert!(written.keys().all(|k| !k.starts_with(SCOPE.as_bytes())));
    let out = user_restore(&c, &store, "carol", "carol");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_same_tree(
        &src.join(SCOPE),
        &c.work.path("carol").join(SCOPE),
        Compare::default(),
    );
    run_ok(
        cbfs_cmd("cbfs-tier")
            .args(["restore", "--store"])
            .arg(&store)
            .arg("--identity")
            .arg(format!("file:{}", c.work.path("admin.key").display()))
            .arg("--index")
            .arg(c.work.path("index"))
            .args([".".into(), c.work.path("admin").display().to_string()]),
    );
    assert_same_tree(&src, &c.work.path("admin"), Compare::default());
    c.assert_no_secrets();
}

// ---------------------------------------------------------------------------
// Through the gc environment: crash, bad input, forget and collect

/// Files of scope alice (under `alice/`, which the environment's runs send
/// to scope alice): small ones (packed), a large one, a symbolic link and a
/// hard link.
fn add_alice(env: &Env) {
    let dir = env.src.join("alice/docs");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..16 {
        std::fs::write(dir.join(format!("f{i}")), random_bytes(20_000 + i * 997)).unwrap();
    }
    std::fs::write(env.src.join("alice/large.bin"), random_bytes(300_000)).unwrap();
    std::os::unix::fs::symlink("docs/f0", env.src.join("alice/link")).unwrap();
    std::fs::hard_link(dir.join("f1"), env.src.join("alice/hard")).unwrap();
}

fn rekey_cmd(env: &Env, args: &[&str]) -> Command {
    let mut c = cbfs_cmd("cbfs-tier");
    c.envs(env.backend.envs())
        .args(["--json", "rekey", "--store", &env.backend.spec()])
        .arg("--index")
        .arg(&env.index)
        .arg("--keyset")
        .arg(env.keys.keyset())
        .arg("--writer-key")
        .arg(env.keys.writer())
        .args(["--segment-size", env.segment_size, "--jobs", "1"])
        .args(args);
    c
}

fn rekey(env: &Env, args: &[&str]) -> Value {
    let admin = env.keys.admin();
    let mut all = vec!["--admin", admin.as_str(), "--scope", "alice"];
    all.extend_from_slice(args);
    serde_json::from_slice(&run_ok(&mut rekey_cmd(env, &all)).stdout).unwrap()
}

fn env_listing(env: &Env) -> BTreeMap<String, (String, String)> {
    listing(&env.backend.spec(), &env.index, &env.backend.envs())
}

fn alice_members(l: &BTreeMap<String, (String, String)>) -> BTreeMap<String, String> {
    l.iter()
        .filter(|(_, (s, _))| s == "alice")
        .map(|(p, (_, m))| (p.clone(), m.clone()))
        .collect()
}

/// A store with alice's files and others, tiered out once.
fn tiered(seed: u64) -> (Env, u64) {
    tiered_on(Env::local(seed, 20))
}

/// `env` with alice's files, tiered out once.
fn tiered_on(mut env: Env) -> (Env, u64) {
    add_alice(&env);
    let seq = env.tier()["sequence"].as_u64().unwrap();
    (env, seq)
}

#[test]
fn a_rekey_killed_at_any_point_finishes_on_the_rerun_in_one_snapshot() {
    for (i, point) in ["segment:2", "commit:1", "commit:3", "manifest"]
        .into_iter()
        .enumerate()
    {
        killed_and_resumed(tiered(40 + i as u64), point);
    }
}

#[test]
fn a_rekey_killed_on_s3_finishes_on_the_rerun_in_one_snapshot() {
    let server = S3Server::start();
    server.create_bucket("rekey-crash");
    let env = Env::new(45, 20, |_| Backend::S3 {
        server: Box::new(server),
        bucket: "rekey-crash".into(),
        endpoint: None,
    });
    killed_and_resumed(tiered_on(env), "commit:2");
}

/// A member whose every file is re-keyed is sealed again as it is (its
/// compressed plaintext under new keys); a pack that also holds an entry
/// the snapshot no longer has is stored again file by file, so that the
/// entry goes with the old member. Either way the snapshot restores.
#[test]
fn whole_members_are_sealed_again_as_they_are_and_packs_with_gone_entries_are_not() {
    let (mut env, _) = tiered(61);
    let before = alice_members(&env_listing(&env));
    // A pack of alice's small entries also holds this hard link (and the
    // removal changes the folder's entry and the link's other name).
    std::fs::remove_file(env.src.join("alice/hard")).unwrap();
    let second = env.tier()["sequence"].as_u64().unwrap();
    let now = alice_members(&env_listing(&env));
    // Whole: every entry it was written with is still in the snapshot.
    let count = |l: &BTreeMap<String, String>, m: &String| l.values().filter(|v| *v == m).count();
    let members: BTreeSet<&String> = now.values().collect();
    let whole = members
        .iter()
        .filter(|m| count(&before, m) == 0 || count(&before, m) == count(&now, m))
        .count();
    assert!(
        whole >= 1 && whole < members.len(),
        "both kinds: {whole} of {} members whole",
        members.len()
    );
    let first = rekey(&env, &[]);
    assert_eq!(
        first["resealed_members"].as_u64(),
        Some(whole as u64),
        "{first:#}"
    );
    assert_eq!(first["verified"], first["rekeyed"], "{first:#}");
    // Stored again file by file, the pack holds only what the snapshot
    // names: a second re-key seals every member again as it is.
    let members: BTreeSet<String> = alice_members(&env_listing(&env)).into_values().collect();
    let again = rekey(&env, &[]);
    assert_eq!(
        again["resealed_members"].as_u64(),
        Some(members.len() as u64),
        "{again:#}"
    );
    assert_eq!(again["verified"], again["rekeyed"], "{again:#}");
    let after = alice_members(&env_listing(&env));
    for (path, member) in &after {
        assert!(!members.contains(member), "{path} not re-keyed");
    }
    let seq = again["sequence"].as_u64().unwrap();
    let state = env.states[&second].clone();
    env.states.insert(seq, state);
    env.assert_restores(seq);
    env.assert_recovers(seq);
    env.verify();
}

/// A re-key killed at `point`, a tier-out refused meanwhile, the rerun.
fn killed_and_resumed((mut env, first): (Env, u64), point: &str) {
    let before = alice_members(&env_listing(&env));
    let admin = env.keys.admin();
    let out = run(&mut rekey_cmd(
        &env,
        &["--admin", &admin, "--scope", "alice", "--crash-at", point],
    ));
    assert!(!out.status.success(), "the re-key was to die at {point}");
    assert!(
        stderr(&out).contains("crashing on purpose"),
        "died for another reason at {point}: {}",
        stderr(&out)
    );
    // A tier-out waits for the re-key to finish.
    let out = run(&mut env.tier_cmd());
    assert_eq!(out.status.code(), Some(2), "{point}: {}", stderr(&out));
    assert!(
        stderr(&out).contains("re-key of scope `alice` is under way"),
        "{point}: {}",
        stderr(&out)
    );
    let report = rekey(&env, &[]);
    let n = before.len() as u64;
    assert_eq!(
        report["rekeyed"].as_u64().unwrap() + report["already"].as_u64().unwrap(),
        n,
        "{point}: {report:#}"
    );
    assert_eq!(report["verified"].as_u64(), Some(n), "{point}: {report:#}");
    assert!(
        report["already"].as_u64().unwrap() > 0,
        "{point}: the rerun carries on: {report:#}"
    );
    let seq = report["sequence"].as_u64().unwrap();
    assert_eq!(
        env.sequences(),
        vec![first, seq],
        "{point}: one new snapshot"
    );
    let after = alice_members(&env_listing(&env));
    assert_eq!(before.len(), after.len());
    for (path, member) in &after {
        assert_ne!(&before[path], member, "{point}: {path} not re-keyed");
    }
    let state = env.states[&first].clone();
    env.states.insert(seq, state);
    env.assert_restores(seq);
    env.assert_recovers(seq);
    env.verify();
    // Finished: tier-outs run again, and find nothing changed.
    let v = env.tier();
    assert!(v["sequence"].is_null(), "{point}: {v:#}");
}

#[test]
fn bad_input_writes_nothing_and_a_damaged_member_is_named() {
    let (mut env, _) = tiered(50);
    let objects = env.backend.objects();

    // Another administrator's root secret.
    let other = env.work.mkdir("other-admin");
    run_ok(
        cbfs_cmd("cbfs-keytool")
            .current_dir(&other)
            .args(cluster::words(
                "create-admin --fs test --secret file:admin.key --keyset keyset.json",
            )),
    );
    let wrong = format!("file:{}", other.join("admin.key").display());
    let out = run(&mut rekey_cmd(
        &env,
        &["--admin", &wrong, "--scope", "alice"],
    ));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not the administrator's root secret"),
        "{}",
        stderr(&out)
    );
    // An unknown scope.
    let admin = env.keys.admin();
    let out = run(&mut rekey_cmd(
        &env,
        &["--admin", &admin, "--scope", "nosuch"],
    ));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("scope `nosuch` is not in the keyset"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        env.backend.objects(),
        objects,
        "a refused re-key writes nothing"
    );
    assert!(env.tier()["sequence"].is_null(), "no re-key is under way");
    // A scope with nothing stored: nothing to do, no snapshot.
    let sequences = env.sequences();
    let out = run_ok(&mut rekey_cmd(&env, &["--admin", &admin, "--scope", "bob"]));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rekeyed"].as_u64(), Some(0), "{report:#}");
    assert!(report["sequence"].is_null(), "{report:#}");
    assert_eq!(env.sequences(), sequences);

    // The large file's member, damaged in its segment.
    let before = alice_members(&env_listing(&env));
    let victim = before["alice/large.bin"].clone();
    let Backend::Local(root) = &env.backend else {
        panic!("a local store")
    };
    let mut damaged = None;
    for (key, bytes) in objects_under(root, "segments/") {
        let path = root.join(key);
        let mut reader = SegmentReader::new(std::io::Cursor::new(bytes)).unwrap();
        let segment = reader.segment_id().to_string();
        while let Some(member) = reader.next_member().unwrap() {
            let info = member.info().clone();
            if info.member.map(|m| m.to_string()) == Some(victim.clone()) {
                damaged = Some((path.clone(), segment.clone(), info));
            }
        }
    }
    let (path, segment, info) = damaged.expect("the large file's member");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = (info.data_offset + info.data_len / 2) as usize;
    bytes[at] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();

    let out = run(&mut rekey_cmd(
        &env,
        &["--admin", &admin, "--scope", "alice"],
    ));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&segment),
        "the error names the damaged segment {segment}: {}",
        stderr(&out)
    );
    let after = alice_members(&env_listing(&env));
    for (p, member) in &after {
        if p == "alice/large.bin" {
            assert_eq!(member, &victim, "nothing committed for the damaged member");
        } else {
            assert_ne!(&before[p], member, "{p} was re-keyed");
        }
    }
    // The re-key is over (what could be read is re-keyed): tier-outs run.
    assert!(run(&mut env.tier_cmd()).status.success());
}

#[test]
fn since_a_snapshot_only_what_was_first_stored_in_it_or_later_is_rekeyed() {
    let (mut env, first) = tiered(55);
    let in_first: BTreeSet<String> = alice_members(&env_listing(&env)).into_values().collect();
    let late = env.src.join("alice/late");
    std::fs::create_dir_all(&late).unwrap();
    for i in 0..5 {
        std::fs::write(late.join(format!("n{i}")), random_bytes(10_000)).unwrap();
    }
    std::fs::write(env.src.join("alice/docs/f2"), random_bytes(7_000)).unwrap();
    let second = env.tier()["sequence"].as_u64().unwrap();
    let before = alice_members(&env_listing(&env));
    let old: Vec<&String> = before
        .iter()
        .filter(|(_, m)| in_first.contains(*m))
        .map(|(p, _)| p)
        .collect();
    assert!(!old.is_empty() && old.len() < before.len());

    let report = rekey(&env, &["--since", &second.to_string()]);
    assert_eq!(
        report["before_since"].as_u64(),
        Some(old.len() as u64),
        "{report:#}"
    );
    assert_eq!(
        report["rekeyed"].as_u64(),
        Some((before.len() - old.len()) as u64),
        "{report:#}"
    );
    let after = alice_members(&env_listing(&env));
    for (p, member) in &after {
        if old.contains(&p) {
            assert_eq!(&before[p], member, "{p} was stored before --since");
        } else {
            assert_ne!(&before[p], member, "{p} was not re-keyed");
        }
    }
    assert_eq!(
        report["older_snapshots"],
        serde_json::json!([second]),
        "snapshot {first} names none of the re-keyed members: {report:#}"
    );
    let seq = report["sequence"].as_u64().unwrap();
    let state = env.states[&second].clone();
    env.states.insert(seq, state);
    env.assert_restores(seq);
}

fn forget_older_then_collect(mut env: Env) {
    add_alice(&env);
    let first = env.tier()["sequence"].as_u64().unwrap();
    env.change(4, 1, 60_000);
    let second = env.tier()["sequence"].as_u64().unwrap();
    // The segments that hold alice's members now.
    let objects = env.backend.objects();
    let old_segments: BTreeSet<String> = objects
        .iter()
        .filter(|(k, bytes)| {
            k.starts_with("lockboxes/") && Lockbox::from_bytes(bytes).unwrap().scope() == "alice"
        })
        .map(|(k, _)| k)
        .map(|k| {
            let seg = k
                .trim_start_matches("lockboxes/")
                .split('/')
                .next()
                .unwrap();
            format!("segments/{seg}.tar")
        })
        .collect();
    assert!(!old_segments.is_empty());

    let report = rekey(&env, &["--forget-older"]);
    assert_eq!(
        report["older_snapshots"],
        serde_json::json!([first, second]),
        "{report:#}"
    );
    assert!(
        report["forgotten"]["record"].as_str().is_some(),
        "{report:#}"
    );
    let seq = report["sequence"].as_u64().unwrap();
    let state = env.states[&second].clone();
    env.states.insert(seq, state);

    // Both phases of the collector, with a run of the agent between them.
    env.gc(&["--min-live", "100"]);
    env.tier();
    env.gc(&["--min-live", "100"]);
    let left: BTreeSet<String> = env.keys_under("segments/").into_iter().collect();
    assert!(
        left.is_disjoint(&old_segments),
        "old segments of alice still in the store: {:?}",
        left.intersection(&old_segments).collect::<Vec<_>>()
    );
    env.recover_fails(first);
    env.assert_restores(seq);
    env.assert_recovers(seq);
}

#[test]
fn forget_older_lets_the_collector_take_the_old_segments() {
    forget_older_then_collect(Env::local(60, 20));
}

#[test]
fn forget_older_lets_the_collector_take_the_old_segments_on_s3() {
    let server = S3Server::start();
    server.create_bucket("rekey");
    forget_older_then_collect(Env::new(61, 20, |_| Backend::S3 {
        server: Box::new(server),
        bucket: "rekey".into(),
        endpoint: None,
    }));
}

fn sha(p: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

#[test]
fn released_files_of_the_scope_recall_from_the_new_copies() {
    let t = hsm::Tiered::new(FsKind::Ext4, 64);
    std::fs::create_dir_all(t.path("alice")).unwrap();
    std::fs::create_dir_all(t.path("bob")).unwrap();
    std::fs::write(t.path("alice/big.bin"), random_bytes(1 << 20)).unwrap();
    std::fs::write(t.path("alice/note.txt"), b"alice's note").unwrap();
    std::fs::write(t.path("bob/b.bin"), random_bytes(100_000)).unwrap();
    let sums: Vec<(&str, String)> = ["alice/big.bin", "alice/note.txt", "bob/b.bin"]
        .into_iter()
        .map(|p| (p, sha(&t.path(p))))
        .collect();
    t.tier_out();
    let out = t.release(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(hsm::is_stub(&t.path("alice/big.bin")));

    let out = run(cbfs_cmd("cbfs-tier")
        .args(["--json", "rekey", "--store", &t.store])
        .arg("--index")
        .arg(&t.index)
        .arg("--keyset")
        .arg(t.keys.keyset())
        .args(["--writer-key", &t.keys.writer(), "--admin", &t.keys.admin()])
        .args(["--scope", "alice", "--forget-older", "--tree"])
        .arg(t.tree()));
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["stubs_updated"].as_u64(), Some(2), "{report:#}");
    assert!(report["forgotten"]["record"].is_string(), "{report:#}");
    for p in ["alice/big.bin", "alice/note.txt", "bob/b.bin"] {
        assert_eq!(t.state(p), "released", "{p}");
    }
    // The old snapshot is forgotten: the recall reads the new copy.
    let out = t.recall(&["alice/big.bin", "alice/note.txt", "bob/b.bin"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for (p, sum) in &sums {
        assert_eq!(&sha(&t.path(p)), sum, "{p}");
        assert!(!hsm::is_stub(&t.path(p)));
    }
    let r = t.tier_out();
    assert_eq!(
        r["files"].as_u64(),
        Some(0),
        "nothing to store again: {r:#}"
    );
}
