//! A tiered tree on a loop-mounted file system made by the test, with its
//! store and index outside it, and the `cbfs-tier` commands of tiering
//! proper: status, release, recall, watch, flag.
#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

use cbfs_tests::{FsKind, LoopFs, ServerProcess, Workdir, cbfs_cmd, run, run_ok};
use serde_json::Value;

use super::keys::Keys;

/// The tree (a loop mount), its store and index, the keys.
pub struct Tiered {
    /// First: unmounted before the work folder goes.
    pub fs: LoopFs,
    pub work: Workdir,
    pub keys: Keys,
    pub store: String,
    pub index: PathBuf,
    /// Extra environment for every command (an S3 store's).
    pub envs: Vec<(String, String)>,
}

impl Tiered {
    pub fn new(kind: FsKind, mib: u64) -> Tiered {
        Self::with_options(kind, mib, "loop")
    }

    /// With these mount options.
    pub fn with_options(kind: FsKind, mib: u64, options: &str) -> Tiered {
        let work = Workdir::new();
        let keys = Keys::new(&work);
        let fs = LoopFs::with_options(&work, "tree", kind, mib, options);
        let store = work.path("store").display().to_string();
        let index = work.path("index");
        Tiered {
            work,
            keys,
            fs,
            store,
            index,
            envs: Vec::new(),
        }
    }

    pub fn tree(&self) -> &Path {
        self.fs.dir()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tree().join(rel)
    }

    fn cmd(&self, sub: &str) -> Command {
        let mut cmd = cbfs_cmd("cbfs-tier");
        cmd.args(["--json", sub, "--store", &self.store])
            .arg("--index")
            .arg(&self.index)
            .envs(self.envs.clone());
        cmd
    }

    fn tree_cmd(&self, sub: &str) -> Command {
        let mut cmd = self.cmd(sub);
        cmd.arg("--tree").arg(self.tree());
        cmd
    }

    /// `cbfs-tier out` of the tree: its JSON report.
    pub fn tier_out(&self) -> Value {
        let mut cmd = cbfs_cmd("cbfs-tier");
        cmd.args(["--json", "out"])
            .arg(self.tree())
            .args(["--store", &self.store])
            .arg("--index")
            .arg(&self.index)
            .arg("--keyset")
            .arg(self.keys.keyset())
            .args(["--writer-key", &self.keys.writer()])
            .args(["--scope", "alice/**=alice", "--scope", "bob/**=bob"])
            .envs(self.envs.clone());
        json(&run(&mut cmd), "out")
    }

    /// `cbfs-tier status` of `paths` (the whole tree if none).
    pub fn status(&self, paths: &[&str]) -> Value {
        let mut cmd = self.tree_cmd("status");
        for p in paths {
            cmd.arg(self.path(p));
        }
        json(&run_ok(&mut cmd), "status")
    }

    /// The state `status` gives one file.
    pub fn state(&self, rel: &str) -> String {
        let s = self.status(&[rel]);
        s["files"][0]["state"].as_str().unwrap_or("?").to_owned()
    }

    /// `cbfs-tier release ARGS`.
    pub fn release(&self, args: &[&str]) -> Output {
        let mut cmd = self.tree_cmd("release");
        cmd.args(args);
        run(&mut cmd)
    }

    /// `cbfs-tier recall` of `paths` with the administrator's key.
    pub fn recall(&self, paths: &[&str], extra: &[&str]) -> Output {
        run(&mut self.recall_cmd(paths, extra))
    }

    /// The command [`recall`](Self::recall) runs, for a test to run its
    /// own way (killed, in the background, under limits).
    pub fn recall_cmd(&self, paths: &[&str], extra: &[&str]) -> Command {
        let mut cmd = self.tree_cmd("recall");
        cmd.args(["--identity", &self.keys.admin()]).args(extra);
        for p in paths {
            cmd.arg(self.path(p));
        }
        cmd
    }

    /// Starts `cbfs-tier watch` (guarded unless `--no-guard` is in
    /// `extra`) with the administrator's key, and waits until it watches.
    pub fn watch(&self, extra: &[&str], envs: &[(&str, &str)]) -> Watch {
        let mut cmd = cbfs_cmd("cbfs-tier");
        cmd.args(["watch", "--store", &self.store])
            .arg("--index")
            .arg(&self.index)
            .arg("--tree")
            .arg(self.tree())
            .args(["--identity", &self.keys.admin()])
            .args(extra)
            .env("RUST_LOG", "cbfs_tiering=info")
            .envs(self.envs.clone());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let log = self.work.path(format!("watch-{}.log", rand_name()));
        let server = ServerProcess::spawn("watch", &cmd, &log, self.work.root());
        let w = Watch { server };
        w.wait_log("fault-in handler watching", 1, Duration::from_secs(60));
        w
    }
}

fn rand_name() -> String {
    format!(
        "{}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// The JSON a command printed, or a failure that shows what it said.
pub fn json(out: &Output, what: &str) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: no JSON ({e}), exit {:?}:\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A running `cbfs-tier watch`.
pub struct Watch {
    pub server: ServerProcess,
}

impl Watch {
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.server.log_contents()).into_owned()
    }

    /// Waits until `needle` shows `times` times in the log.
    #[track_caller]
    pub fn wait_log(&self, needle: &str, times: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.log().matches(needle).count() >= times {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "`{needle}` not logged {times} times within {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The guard's pid (the process the test started).
    pub fn guard_pid(&self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(p) = self.server.pid() {
                return p;
            }
            assert!(Instant::now() < deadline, "no pid for the watch");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The handler: the guard's child.
    pub fn handler_pid(&self) -> u32 {
        let guard = self.guard_pid();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = children_of(guard).first() {
                return *c;
            }
            assert!(Instant::now() < deadline, "the guard has no handler");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: the comm may hold spaces.
        let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        let ppid = after
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// Whether a file carries a stub record.
pub fn is_stub(p: &Path) -> bool {
    xattr::get(p, "trusted.cbfs.stub").unwrap_or(None).is_some()
}

/// What `stat` says that a release must keep.
#[derive(Debug, PartialEq, Eq)]
pub struct Identity {
    pub ino: u64,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub mtime: (i64, i64),
}

pub fn identity(p: &Path) -> Identity {
    let m = std::fs::symlink_metadata(p).unwrap();
    Identity {
        ino: m.ino(),
        size: m.size(),
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        nlink: m.nlink(),
        mtime: (m.mtime(), m.mtime_nsec()),
    }
}

/// Bytes of disk a file takes.
pub fn allocated(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).unwrap().blocks() * 512
}

/// Whether a file holds no data at all: its first data, sought from the
/// start, is past its end (a stub's content is all hole). Opens the file:
/// not for a file a fault-in handler watches.
pub fn holds_no_data(p: &Path) -> bool {
    let f = std::fs::File::open(p).unwrap();
    match rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(0)) {
        Err(rustix::io::Errno::NXIO) => true,
        Ok(_) => false,
        Err(e) => panic!("{}: cannot seek its data: {e}", p.display()),
    }
}

/// Sets a file's access and modification times to `atime_ago` and
/// `mtime_ago` seconds before now.
pub fn age(p: &Path, atime_ago: u64, mtime_ago: u64) {
    let now = SystemTime::now();
    let f = std::fs::File::options().write(true).open(p).unwrap();
    f.set_times(
        std::fs::FileTimes::new()
            .set_accessed(now - Duration::from_secs(atime_ago))
            .set_modified(now - Duration::from_secs(mtime_ago)),
    )
    .unwrap();
}

/// The paths a release JSON report says it released, sorted.
pub fn released(report: &Value) -> Vec<String> {
    let mut v: Vec<String> = report["released"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}
