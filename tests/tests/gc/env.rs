//! A store with a history, and the tools that tier, forget, collect,
//! restore and verify it: what the garbage-collection tests share.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use cbfs_tests::{
    Backend, Compare, TreeGen, Workdir, assert_same_tree, cbfs_cmd, random_bytes, run, run_ok,
};
use serde_json::Value;

#[path = "../tiering/keys.rs"]
mod keys;
pub use keys::Keys;

/// A tree tiered out again and again into one store, with a copy of the
/// tree as it was at each snapshot.
pub struct Env {
    pub work: Workdir,
    pub keys: Keys,
    pub backend: Backend,
    pub index: PathBuf,
    pub src: PathBuf,
    pub tree: TreeGen,
    /// The tree at each snapshot, by sequence.
    pub states: BTreeMap<u64, PathBuf>,
    /// `--segment-size` of the agent's runs.
    pub segment_size: &'static str,
    /// More arguments of the agent's runs.
    pub tier_args: Vec<&'static str>,
    round: u32,
}

impl Env {
    /// A fresh store on `backend` (made by `make` inside the new work
    /// directory) and a tree of about `files` files.
    pub fn new(seed: u64, files: usize, make: impl FnOnce(&Workdir) -> Backend) -> Env {
        let work = Workdir::new();
        let keys = Keys::new(&work);
        let backend = make(&work);
        let src = work.path("src");
        let mut tree = TreeGen::new(&src, seed);
        tree.populate(files);
        Env {
            index: work.path("index"),
            keys,
            backend,
            src,
            tree,
            states: BTreeMap::new(),
            segment_size: "64K",
            tier_args: Vec::new(),
            round: 0,
            work,
        }
    }

    /// A local directory store.
    pub fn local(seed: u64, files: usize) -> Env {
        Env::new(seed, files, |w| Backend::Local(w.path("store")))
    }

    /// One round of changes: `n` small changes, and `big` incompressible
    /// files of `size` bytes replaced (what makes space for the collector
    /// to reclaim).
    pub fn change(&mut self, n: usize, big: usize, size: usize) {
        self.round += 1;
        self.tree.update(n);
        for i in 0..big {
            let p = self.src.join(format!("big-{i}.bin"));
            let _ = std::fs::remove_file(&p);
            std::fs::write(&p, random_bytes(size)).unwrap();
        }
    }

    fn cmd(&self, tool: &str) -> Command {
        let mut c = cbfs_cmd(tool);
        c.envs(self.backend.envs());
        c
    }

    /// `cbfs-tier out` with small segments; records the tree's state under
    /// the snapshot it made. Returns the report.
    pub fn tier(&mut self) -> Value {
        let out = run_ok(&mut self.tier_cmd());
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        if let Some(seq) = v["sequence"].as_u64() {
            let state = self.work.path(format!("state-{seq}"));
            let _ = std::fs::remove_dir_all(&state);
            self.tree.copy_to(&state);
            self.states.insert(seq, state);
        }
        v
    }

    /// The command of [`tier`](Self::tier).
    pub fn tier_cmd(&self) -> Command {
        self.tier_cmd_into(&self.backend.spec(), &self.index)
    }

    /// The agent's run of [`tier_cmd`](Self::tier_cmd) into another store
    /// and index.
    pub fn tier_cmd_into(&self, store: &str, index: &Path) -> Command {
        let mut c = self.cmd("cbfs-tier");
        c.arg("--json")
            .arg("out")
            .arg(&self.src)
            .arg("--store")
            .arg(store)
            .arg("--index")
            .arg(index)
            .arg("--keyset")
            .arg(self.keys.keyset())
            .arg("--writer-key")
            .arg(self.keys.writer())
            .args([
                "--scope",
                "alice/**=alice",
                "--segment-size",
                self.segment_size,
            ])
            .args(["--jobs", "1"])
            .args(&self.tier_args);
        c
    }

    /// `cbfs-tier forget` with the writer key, `args` the policy.
    pub fn forget(&self, args: &[&str]) -> Value {
        let out = run_ok(
            self.cmd("cbfs-tier")
                .args(["--json", "forget", "--store", &self.backend.spec()])
                .arg("--index")
                .arg(&self.index)
                .arg("--writer-key")
                .arg(self.keys.writer())
                .args(args),
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The `cbfs-gc` command: trusting the keyset file, no grace period.
    pub fn gc_cmd(&self, args: &[&str]) -> Command {
        let mut c = self.cmd("cbfs-gc");
        c.args(["--json", "--store", &self.backend.spec()])
            .arg("--keyset")
            .arg(self.keys.keyset())
            .args(["--grace", "0s", "--spool"])
            .arg(self.work.mkdir("gc-spool"))
            .args(args);
        c
    }

    /// A successful `cbfs-gc` run's report.
    pub fn gc(&self, args: &[&str]) -> Value {
        let out = run_ok(&mut self.gc_cmd(args));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `cbfs-gc` dying at a crash point.
    pub fn gc_crash(&self, point: &str, args: &[&str]) {
        let out = run(self.gc_cmd(args).args(["--crash-at", point]));
        assert!(!out.status.success(), "cbfs-gc was to die at {point}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("crashing on purpose"),
            "cbfs-gc died for another reason at {point}: {err}"
        );
    }

    /// `cbfs-gc` paused at `point` until the test lets it go: the child and
    /// the file whose removal releases it (already there when this returns).
    pub fn gc_paused(&self, point: &str, args: &[&str]) -> (Child, PathBuf) {
        let flag = self.work.path(format!("pause-{}", point.replace(':', "-")));
        let _ = std::fs::remove_file(&flag);
        let child = self
            .gc_cmd(args)
            .args(["--pause-at", point, "--pause-file"])
            .arg(&flag)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start cbfs-gc");
        let start = Instant::now();
        while !flag.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "cbfs-gc did not reach {point}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        (child, flag)
    }

    /// A read-only `cbfs-tier` command's JSON (`snapshots`, `verify`, `ls`).
    pub fn tier_json(&self, args: &[&str]) -> Value {
        let out = run_ok(
            self.cmd("cbfs-tier")
                .arg("--json")
                .args(args)
                .arg("--store")
                .arg(self.backend.spec())
                .arg("--index")
                .arg(&self.index),
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `cbfs-tier verify`: the report, which must have no problem.
    pub fn verify(&self) -> Value {
        let v = self.tier_json(&["verify"]);
        assert_eq!(v["problems"], serde_json::json!([]), "verify: {v:#}");
        v
    }

    /// The sequences `cbfs-tier snapshots` lists.
    pub fn sequences(&self) -> Vec<u64> {
        self.tier_json(&["snapshots"])["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["sequence"].as_u64().unwrap())
            .collect()
    }

    /// `cbfs-tier restore` of snapshot `seq` as the administrator.
    pub fn restore_cmd(&self, seq: u64, dest: &Path) -> Command {
        let mut c = self.cmd("cbfs-tier");
        c.args(["--json", "restore", "--store", &self.backend.spec()])
            .arg("--identity")
            .arg(self.keys.admin())
            .arg("--index")
            .arg(&self.index)
            .args(["--snapshot", &seq.to_string(), "."])
            .arg(dest);
        c
    }

    /// Snapshot `seq` restored with `cbfs-tier restore` equals the tree as
    /// it was.
    pub fn assert_restores(&self, seq: u64) {
        let dest = self
            .work
            .path(format!("restored-tier-{seq}-{}", rand_suffix()));
        run_ok(&mut self.restore_cmd(seq, &dest));
        assert_same_tree(&self.states[&seq], &dest, Compare::default());
        let _ = std::fs::remove_dir_all(&dest);
    }

    /// Snapshot `seq` recovered with `cbfs-recover` to a tar and extracted
    /// with GNU tar equals the tree as it was.
    pub fn assert_recovers(&self, seq: u64) {
        let tag = rand_suffix();
        let tar = self.work.path(format!("recovered-{seq}-{tag}.tar"));
        run_ok(
            self.cmd("cbfs-recover")
                .arg("--identity")
                .arg(self.keys.admin())
                .args(["--store", &self.backend.spec()])
                .args(["--snapshot", &seq.to_string(), "-o"])
                .arg(&tar),
        );
        let dest = self.work.mkdir(format!("recovered-{seq}-{tag}"));
        run_ok(
            Command::new("tar")
                .args(["--xattrs", "--xattrs-include=*", "-xpf"])
                .arg(&tar)
                .arg("-C")
                .arg(&dest),
        );
        assert_same_tree(&self.states[&seq], &dest, Compare::default());
        let _ = std::fs::remove_dir_all(&dest);
        let _ = std::fs::remove_file(&tar);
    }

    /// `cbfs-recover` of snapshot `seq` fails (a forgotten snapshot).
    pub fn recover_fails(&self, seq: u64) -> Output {
        let tar = self.work.path(format!("gone-{seq}.tar"));
        let out = run(self
            .cmd("cbfs-recover")
            .arg("--identity")
            .arg(self.keys.admin())
            .args(["--store", &self.backend.spec()])
            .args(["--snapshot", &seq.to_string(), "-o"])
            .arg(&tar));
        assert!(!out.status.success(), "snapshot {seq} should be gone");
        out
    }

    /// Keys of the store's objects under `prefix`.
    pub fn keys_under(&self, prefix: &str) -> Vec<String> {
        self.backend
            .objects()
            .into_keys()
            .filter(|k| k.starts_with(prefix))
            .collect()
    }

    /// Bytes of the store's objects under `prefix` (all with "").
    pub fn bytes_under(&self, prefix: &str) -> u64 {
        self.backend
            .objects()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.len() as u64)
            .sum()
    }
}

fn rand_suffix() -> String {
    hex::encode(random_bytes(4))
}

/// `cbfs-gc` with no key file within reach and an empty HOME: only the
/// store and the public keyset. The key files of the test are moved out of
/// the file system for the run and put back afterwards.
pub fn gc_without_any_key(env: &Env, args: &[&str]) -> Value {
    let stash: Vec<(std::path::PathBuf, Vec<u8>)> = std::fs::read_dir(&env.keys.dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "key"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            std::fs::remove_file(&p).unwrap();
            (p, bytes)
        })
        .collect();
    assert!(!stash.is_empty());
    let home = Workdir::new();
    let mut cmd = env.gc_cmd(args);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.root())
        .envs(env.backend.envs())
        .current_dir(home.root());
    let out = run(&mut cmd);
    for (p, bytes) in stash {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    assert!(
        out.status.success(),
        "cbfs-gc without a key: {}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_dir(home.root()).unwrap().count(),
        0,
        "cbfs-gc wrote into HOME"
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The entry of a `cbfs-gc` report's `phase_two` for `collection`.
pub fn phase_two<'a>(report: &'a Value, collection: &str) -> &'a Value {
    report["phase_two"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["collection"] == collection)
        .unwrap_or_else(|| panic!("no phase two of {collection}: {report:#}"))
}

/// What the output of a failed command says, for messages.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
