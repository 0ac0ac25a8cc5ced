//! Key rotation end to end, on a local store and on moto S3: `cbfs-keytool
//! rotate-scope` (lockboxes sealed again, segments untouched, resumable
//! after the tool is killed, restores working at every moment),
//! `rotate-admin` (readers and the agent follow the hand-over and refuse
//! the old key alone) and `rotate-writer` (old snapshots stay trusted, the
//! retired key is refused).

#![forbid(unsafe_code)]

#[path = "tiering/keys.rs"]
mod keys;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use cbfs_core::{AdminSecret, FsName, Keyset, ScopeLabel, Seed};
use cbfs_format::{Lockbox, layout};
use cbfs_tests::{
    Compare, S3Server, Workdir, assert_same_tree, cbfs_cmd, random_bytes, run, run_fail, run_ok,
};
use keys::Keys;
use serde_json::Value;

/// A store under test.
enum Backend {
    Local(PathBuf),
    S3 {
        server: Box<S3Server>,
        bucket: String,
    },
}

impl Backend {
    fn local(work: &Workdir) -> Backend {
        Backend::Local(work.path("store"))
    }
    fn s3() -> Backend {
        let server = Box::new(S3Server::start());
        server.create_bucket("rot");
        Backend::S3 {
            server,
            bucket: "rot".into(),
        }
    }
    fn spec(&self) -> String {
        match self {
            Backend::Local(p) => p.display().to_string(),
            Backend::S3 { bucket, .. } => format!("s3://{bucket}/cbfs"),
        }
    }
    fn envs(&self) -> Vec<(String, String)> {
        match self {
            Backend::Local(_) => Vec::new(),
            Backend::S3 { server, .. } => server.envs(),
        }
    }
    /// Every object: key relative to the store, and its bytes.
    fn objects(&self) -> BTreeMap<String, Vec<u8>> {
        match self {
            Backend::Local(root) => {
                let mut out = BTreeMap::new();
                let mut stack = vec![root.clone()];
                while let Some(d) = stack.pop() {
                    let Ok(entries) = std::fs::read_dir(&d) else {
                        continue;
                    };
                    for e in entries {
                        let p = e.unwrap().path();
                        if p.is_dir() {
                            stack.push(p);
                        } else {
                            let key = p.strip_prefix(root).unwrap().display().to_string();
                            if !key.starts_with('.') {
                                out.insert(key, std::fs::read(&p).unwrap());
                            }
                        }
                    }
                }
                out
            }
            Backend::S3 { server, bucket } => server
                .list_objects(bucket)
                .into_iter()
                .filter_map(|(k, _)| {
                    let rel = k.strip_prefix("cbfs/")?.to_owned();
                    Some((rel, server.get_object(bucket, &k)))
                })
                .collect(),
        }
    }
    fn delete(&self, key: &str) {
        match self {
            Backend::Local(root) => std::fs::remove_file(root.join(key)).unwrap(),
            Backend::S3 { server, bucket } => server.delete_object(bucket, &format!("cbfs/{key}")),
        }
    }
    fn put(&self, key: &str, bytes: &[u8]) {
        match self {
            Backend::Local(root) => {
                std::fs::create_dir_all(root.join(key).parent().unwrap()).unwrap();
                std::fs::write(root.join(key), bytes).unwrap()
            }
            Backend::S3 { server, bucket } => {
                server.put_object(bucket, &format!("cbfs/{key}"), bytes)
            }
        }
    }
}

fn keytool(keys: &Keys, backend: &Backend) -> Command {
    let mut cmd = cbfs_cmd("cbfs-keytool");
    cmd.current_dir(&keys.dir).envs(backend.envs());
    cmd
}

fn tier_out(backend: &Backend, keys: &Keys, index: &Path, src: &Path, writer: &str) -> Command {
    let mut cmd = cbfs_cmd("cbfs-tier");
    cmd.arg("--json")
        .arg("out")
        .arg(src)
        .arg("--store")
        .arg(backend.spec())
        .arg("--index")
        .arg(index)
        .arg("--keyset")
        .arg(keys.keyset())
        .arg("--writer-key")
        .arg(writer)
        .args(["--scope", "alice/**=alice", "--scope", "bob/**=bob"])
        .args(["--segment-size", "64K"])
        .envs(backend.envs());
    cmd
}

/// `cbfs-recover` with the root secret into a fresh directory, which must
/// equal `src`.
fn recover_equals(work: &Workdir, backend: &Backend, keys: &Keys, src: &Path, name: &str) {
    let out = work.path(name);
    run_ok(
        cbfs_cmd("cbfs-recover")
            .arg("--identity")
            .arg(keys.admin())
            .arg("--store")
            .arg(backend.spec())
            .arg("-C")
            .arg(&out)
            .envs(backend.envs()),
    );
    assert_same_tree(src, &out, Compare::default());
}

fn source(work: &Workdir) -> PathBuf {
    let src = work.mkdir("src");
    for scope in ["alice", "bob"] {
        std::fs::create_dir_all(src.join(scope)).unwrap();
        for i in 0..8 {
            std::fs::write(
                src.join(scope).join(format!("f{i}")),
                random_bytes(150_000 + i * 7),
            )
            .unwrap();
        }
    }
    src
}

/// The lockboxes of the store by (segment, group): their key versions and
/// scope.
fn lockboxes(backend: &Backend) -> BTreeMap<(String, String), (String, BTreeSet<u32>)> {
    let mut out: BTreeMap<(String, String), (String, BTreeSet<u32>)> = BTreeMap::new();
    for (key, bytes) in backend.objects() {
        let Some(rest) = key.strip_prefix(layout::LOCKBOXES) else {
            continue;
        };
        let (seg, name) = rest.split_once('/').unwrap();
        let (group, version) = layout::parse_lockbox_name(name).expect("a lockbox name");
        let lb = Lockbox::from_bytes(&bytes).unwrap();
        assert_eq!(lb.key_version(), version, "{key}");
        let entry = out
            .entry((seg.to_owned(), group.to_string()))
            .or_insert((lb.scope().to_owned(), BTreeSet::new()));
        entry.1.insert(version);
    }
    out
}

fn segments(backend: &Backend) -> BTreeMap<String, Vec<u8>> {
    backend
        .objects()
        .into_iter()
        .filter(|(k, _)| k.starts_with(layout::SEGMENTS))
        .collect()
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn rotate_scope_on(backend: Backend) {
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let src = source(&work);
    let index = work.path("index");
    run_ok(&mut tier_out(&backend, &keys, &index, &src, &keys.writer()));
    let before = segments(&backend);
    let alice_groups = lockboxes(&backend)
        .values()
        .filter(|(scope, _)| scope == "alice")
        .count();
    assert!(alice_groups >= 3, "several segments hold alice's files");

    // Killed after 2 lockboxes: some are sealed again, the keyset says
    // version 2, the journal says where it stopped.
    let rotate = |extra: &[(&str, &str)]| {
        let mut cmd = keytool(&keys, &backend);
        cmd.args(["--json", "rotate-scope", "--admin", "file:admin.key"])
            .args(["--keyset", "keyset.json", "--scope", "alice", "--store"])
            .arg(backend.spec());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd
    };
    let killed = run(&mut rotate(&[("CBFS_TEST_ABORT_AFTER", "2")]));
    assert!(!killed.status.success(), "the tool was stopped");
    assert!(
        keys.dir.join("keyset.json.rotation").exists(),
        "the journal stays"
    );
    let mid = lockboxes(&backend);
    let done = mid
        .values()
        .filter(|(s, v)| s == "alice" && v.contains(&2))
        .count();
    assert!(done >= 2 && done < alice_groups, "{done} of {alice_groups}");
    let ks = Keyset::load(&keys.keyset()).unwrap();
    assert_eq!(
        ks.scope_version(&ScopeLabel::new("alice").unwrap()),
        Some(2)
    );
    // A restore works in the middle of it: either lockbox opens.
    recover_equals(&work, &backend, &keys, &src, "mid");

    // The rerun resumes: the same version, every group done once.
    let out = run_ok(&mut rotate(&[]));
    let v = json_of(&out);
    assert_eq!(v["resumed"], true, "{v}");
    assert_eq!(v["finished"], true, "{v}");
    assert_eq!(v["to_version"], 2, "{v}");
    assert_eq!(
        v["resealed"].as_u64().unwrap() as usize + done,
        alice_groups,
        "{v}"
    );
    assert!(!keys.dir.join("keyset.json.rotation").exists());
    let after = lockboxes(&backend);
    for ((seg, group), (scope, versions)) in &after {
        match scope.as_str() {
            "alice" => assert_eq!(versions, &BTreeSet::from([1, 2]), "{seg}/{group}"),
            _ => assert_eq!(versions, &BTreeSet::from([1]), "{scope} is untouched"),
        }
    }
    assert_eq!(segments(&backend), before, "no segment is rewritten");
    // The keyset is in the store for readers and agents.
    assert!(backend.objects().contains_key(&layout::keyset(ks.serial())));

    // The old lockboxes are garbage: gone, everything still recovers with
    // the root secret (every version derives from it).
    for (key, _) in backend.objects() {
        if let Some(rest) = key.strip_prefix(layout::LOCKBOXES)
            && rest.ends_with(".lockbox")
            && !rest.contains(".v")
            && after
                .get(&{
                    let (s, n) = rest.split_once('/').unwrap();
                    (
                        s.to_owned(),
                        layout::parse_lockbox_name(n).unwrap().0.to_string(),
                    )
                })
                .is_some_and(|(scope, _)| scope == "alice")
        {
            backend.delete(&key);
        }
    }
    recover_equals(&work, &backend, &keys, &src, "after-gc");

    // The agent seals new lockboxes to the current key only.
    std::fs::write(src.join("alice/new"), random_bytes(5000)).unwrap();
    let seen: BTreeSet<_> = lockboxes(&backend).keys().cloned().collect();
    run_ok(&mut tier_out(&backend, &keys, &index, &src, &keys.writer()));
    let new: Vec<_> = lockboxes(&backend)
        .into_iter()
        .filter(|(k, _)| !seen.contains(k))
        .collect();
    assert!(!new.is_empty());
    for ((seg, group), (scope, versions)) in new {
        if scope == "alice" {
            assert_eq!(versions, BTreeSet::from([2]), "{seg}/{group}");
        }
    }
    recover_equals(&work, &backend, &keys, &src, "after-new-run");

    // Without a journal, the next run is the next rotation: version 3,
    // every group of alice again.
    let out = run_ok(&mut rotate(&[]));
    let v = json_of(&out);
    assert_eq!(v["to_version"].as_u64(), Some(3), "{v}");
    assert!(
        v["resealed"].as_u64().unwrap() as usize > alice_groups,
        "{v}"
    );
    recover_equals(&work, &backend, &keys, &src, "v3");
}

#[test]
fn rotate_scope_reseals_resumes_after_kill_and_recovers_every_version_local() {
    let work = Workdir::new();
    rotate_scope_on(Backend::local(&work));
}

#[test]
fn rotate_scope_reseals_resumes_after_kill_and_recovers_every_version_s3() {
    rotate_scope_on(Backend::s3());
}

fn admin_of(keys: &Keys) -> AdminSecret {
    let bytes = std::fs::read(keys.dir.join("admin.key")).unwrap();
    AdminSecret::from_seed(Seed::from_slice(&bytes, "admin.key").unwrap())
}

#[test]
fn rotate_admin_hands_over_and_the_old_key_alone_is_refused() {
    for backend in [Backend::local(&Workdir::new()), Backend::s3()] {
        let work = Workdir::new();
        let backend = match backend {
            Backend::Local(_) => Backend::local(&work),
            b => b,
        };
        let keys = Keys::new(&work);
        let src = source(&work);
        let index = work.path("index");
        run_ok(&mut tier_out(&backend, &keys, &index, &src, &keys.writer()));
        let old = Keyset::load(&keys.keyset()).unwrap();
        let old_fp = cbfs_core::fingerprint(old.admin_verifying_key());

        let out = run_ok(
            keytool(&keys, &backend)
                .args(["--json", "rotate-admin", "--admin", "file:admin.key"])
                .args(["--keyset", "keyset.json", "--store"])
                .arg(backend.spec()),
        );
        let v = json_of(&out);
        assert_eq!(v["from"], old_fp.as_str(), "{v}");
        let new = Keyset::load(&keys.keyset()).unwrap();
        assert_ne!(new.admin_verifying_key(), old.admin_verifying_key());
        assert!(new.chains_from(old.admin_verifying_key()));

        // The agent's index pinned the old key: it follows the hand-over.
        std::fs::write(src.join("bob/after"), b"written after the hand-over").unwrap();
        run_ok(&mut tier_out(&backend, &keys, &index, &src, &keys.writer()));
        // The administrator still administers, with the new key.
        run_ok(keytool(&keys, &backend).args([
            "add-scope",
            "--admin",
            "file:admin.key",
            "--keyset",
            "keyset.json",
            "--scope",
            "carol",
        ]));
        let newest = Keyset::load(&keys.keyset()).unwrap();
        run_ok(&mut tier_out(&backend, &keys, &index, &src, &keys.writer()));

        // The old key, alone, signs a keyset with a higher serial (its
        // secret leaked): planted in the store, it is refused, and a reader
        // pinned to the old key by fingerprint still trusts the chain.
        let leaked = admin_of(&keys);
        let mut forged = Keyset::new(FsName::new("test").unwrap(), &leaked);
        for i in 0..(newest.serial() + 5) {
            forged
                .add_scope(&leaked, &ScopeLabel::new(format!("x{i}")).unwrap())
                .unwrap();
        }
        backend.put(
            &layout::keyset(forged.serial()),
            &forged.to_signed_bytes(&leaked).unwrap(),
        );
        let out = work.path("pinned-old");
        let r = run_ok(
            cbfs_cmd("cbfs-recover")
                .args(["--json", "--admin-key", &old_fp])
                .arg("--identity")
                .arg(keys.admin())
                .arg("--trust-file")
                .arg(work.path("trust.json"))
                .arg("--store")
                .arg(backend.spec())
                .arg("-C")
                .arg(&out)
                .envs(backend.envs()),
        );
        assert_same_tree(&src, &out, Compare::default());
        let report = String::from_utf8_lossy(&r.stdout);
        assert!(
            !report.contains("\"x0\""),
            "the forged keyset's scopes are nowhere: {report}"
        );
        // The trust records now pin the new key: the old fingerprint given
        // again still follows the chain; the forged keyset stays out.
        let trust = std::fs::read_to_string(work.path("trust.json")).unwrap();
        assert!(
            trust.contains(&cbfs_core::fingerprint(newest.admin_verifying_key())),
            "{trust}"
        );
        // The agent, with the newest keyset file, refuses nothing real and
        // ignores the forgery; a keyset file signed by the old key alone
        // is refused by its index.
        std::fs::write(
            work.path("forged.json"),
            forged.to_signed_bytes(&leaked).unwrap(),
        )
        .unwrap();
        let mut cmd = tier_out(&backend, &keys, &index, &src, &keys.writer());
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mut forged_cmd = cbfs_cmd("cbfs-tier");
        for a in &args {
            forged_cmd.arg(if a == &keys.keyset().display().to_string() {
                work.path("forged.json").display().to_string()
            } else {
                a.clone()
            });
        }
        forged_cmd.envs(backend.envs());
        let refused = run_fail(&mut forged_cmd);
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("another administrator"),
            "{}",
            String::from_utf8_lossy(&refused.stderr)
        );
        run_ok(&mut cmd);
    }
}

#[test]
fn rotate_writer_keeps_old_snapshots_and_refuses_the_retired_key() {
    for s3 in [false, true] {
        let work = Workdir::new();
        let backend = if s3 {
            Backend::s3()
        } else {
            Backend::local(&work)
        };
        let keys = Keys::new(&work);
        let src = source(&work);
        let index = work.path("index");
        run_ok(&mut tier_out(&backend, &keys, &index, &src, &keys.writer()));
        std::fs::write(src.join("alice/second"), b"second snapshot").unwrap();
        let second = json_of(&run_ok(&mut tier_out(
            &backend,
            &keys,
            &index,
            &src,
            &keys.writer(),
        )));
        assert_eq!(second["sequence"], 2, "{second}");
        run_ok(keytool(&keys, &backend).args([
            "create-user",
            "agent2",
            "--secret",
            "file:agent2.key",
            "--public",
            "agent2.pub",
        ]));
        let out = run_ok(
            keytool(&keys, &backend)
                .args(["--json", "rotate-writer", "--admin", "file:admin.key"])
                .args([
                    "--keyset",
                    "keyset.json",
                    "--writer",
                    "agent",
                    "--public",
                    "agent2.pub",
                ])
                .arg("--store")
                .arg(backend.spec()),
        );
        let v = json_of(&out);
        assert_eq!(v["last_sequence"], 2, "{v}");

        // The retired key is refused by the agent, naming what to do.
        let refused = run_fail(&mut tier_out(&backend, &keys, &index, &src, &keys.writer()));
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(err.contains("was retired"), "{err}");
        let new_writer = format!("file:{}", keys.dir.join("agent2.key").display());
        std::fs::write(src.join("bob/third"), b"third snapshot").unwrap();
        run_ok(&mut tier_out(&backend, &keys, &index, &src, &new_writer));

        // Every snapshot is trusted: the old writer's (before it retired)
        // and the new one's.
        let snaps = run_ok(
            cbfs_cmd("cbfs-tier")
                .args(["--json", "snapshots", "--store"])
                .arg(backend.spec())
                .arg("--index")
                .arg(&index)
                .envs(backend.envs()),
        );
        let v = json_of(&snaps);
        let text = v.to_string();
        assert!(!text.contains("untrusted"), "{text}");
        recover_equals(&work, &backend, &keys, &src, "all");
        for seq in [1, 2] {
            let out = work.path(format!("snap{seq}"));
            run_ok(
                cbfs_cmd("cbfs-recover")
                    .arg("--identity")
                    .arg(keys.admin())
                    .arg("--store")
                    .arg(backend.spec())
                    .args(["--snapshot", &seq.to_string()])
                    .arg("-C")
                    .arg(&out)
                    .envs(backend.envs()),
            );
            assert!(out.join("alice/f0").exists());
        }
    }
}

/// A lockbox whose capsule fails Umbral's check, among good ones: the
/// rotation checks capsules in batches, and a batch that fails is checked
/// one by one, so that exactly that lockbox is named and every other is
/// sealed again; once it is put right, the rerun finishes.
#[test]
fn rotate_scope_names_the_one_damaged_lockbox_and_seals_the_rest() {
    let work = Workdir::new();
    let backend = Backend::local(&work);
    let keys = Keys::new(&work);
    let src = source(&work);
    let index = work.path("index");
    run_ok(&mut tier_out(&backend, &keys, &index, &src, &keys.writer()));
    let alice: Vec<(String, Vec<u8>)> = backend
        .objects()
        .into_iter()
        .filter(|(k, b)| {
            k.starts_with(layout::LOCKBOXES) && Lockbox::from_bytes(b).unwrap().scope() == "alice"
        })
        .collect();
    assert!(alice.len() >= 3, "several lockboxes of alice");
    // The capsule's signature (its last 32 bytes, before the ciphertext's
    // length and bytes) replaced by another valid scalar: the points still
    // decode, the check fails.
    let (bad_key, good_bytes) = alice[1].clone();
    let mut bad = good_bytes.clone();
    let ciphertext_len = 24 + 32 + 32 + 16;
    let sig_at = bad.len() - ciphertext_len - 2 - 32;
    bad[sig_at..sig_at + 32].copy_from_slice(&[0x11; 32]);
    assert!(Lockbox::from_bytes(&bad).is_err(), "umbral refuses it too");
    backend.put(&bad_key, &bad);

    let rotate = || {
        let mut cmd = keytool(&keys, &backend);
        cmd.args(["--json", "rotate-scope", "--admin", "file:admin.key"])
            .args(["--keyset", "keyset.json", "--scope", "alice", "--store"])
            .arg(backend.spec());
        cmd
    };
    let out = run_fail(&mut rotate());
    // The report, then the error, each a JSON document.
    let docs: Vec<Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    let [v, error] = &docs[..] else {
        panic!("two documents: {docs:?}")
    };
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("could not be sealed again"),
        "{error}"
    );
    assert_eq!(v["finished"], false, "{v}");
    assert_eq!(v["resealed"].as_u64(), Some(alice.len() as u64 - 1), "{v}");
    let damaged = v["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{v}");
    let named = damaged[0].as_str().unwrap();
    assert!(
        named.contains(bad_key.as_str()) && named.contains("invalid Umbral capsule"),
        "{named}"
    );
    // Put right (as a restore from a replica would), the rerun finishes.
    backend.put(&bad_key, &good_bytes);
    let v = json_of(&run_ok(&mut rotate()));
    assert_eq!(v["finished"], true, "{v}");
    assert_eq!(v["resealed"].as_u64(), Some(1), "{v}");
    assert_eq!(v["already"].as_u64(), Some(alice.len() as u64 - 1), "{v}");
    recover_equals(&work, &backend, &keys, &src, "out");
}
