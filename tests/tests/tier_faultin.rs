//! Transparent fault-in end to end: `cbfs-tier watch` (a guard process and
//! its handler) on file systems the tests make and loop-mount, with real
//! readers: `cat`, `cp`, Python's `mmap`, an executed stub binary, a shell
//! that appends.
//!
//! - Every reader sees the real bytes; a written stub is filled first, is
//!   dirty, and the next run archives it.
//! - The handler killed while a reader waits: the reader gets EIO, never
//!   zeros, the stub stays, and the restarted handler serves the next
//!   reader. (Without the guard, the same kill lets the reader read zeros:
//!   the hazard the guard closes.)
//! - The store down: a reader gets EIO, `cbfs-tier recall` exit 5, the stub
//!   stays and is not marked lost; with the store back, it reads.
//! - On tmpfs, which takes no pre-content marks, `watch` says so (exit 8)
//!   and explicit recall still works.

#![forbid(unsafe_code)]

#[path = "tiering/hsm.rs"]
mod hsm;
#[path = "tiering/keys.rs"]
mod keys;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cbfs_tests::{
    Fault, FaultPlan, FaultyProxy, FsKind, S3Server, random_bytes, require_tool, run, run_ok,
};
use hsm::{Tiered, allocated, is_stub};
use sha2::{Digest, Sha256};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn sha_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn readers_see_the_real_bytes(kind: FsKind) {
    let t = Tiered::new(kind, 96);
    let files = ["cat.bin", "cp.bin", "mmap.bin", "append.txt"];
    let mut content = std::collections::BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        let data = random_bytes((1 << 20) + i * 333);
        std::fs::write(t.path(f), &data).unwrap();
        content.insert(*f, data);
    }
    // A folder to recall while the handler watches.
    std::fs::create_dir(t.path("d")).unwrap();
    for f in ["d/a.bin", "d/b.bin"] {
        let data = random_bytes(300_000);
        std::fs::write(t.path(f), &data).unwrap();
        content.insert(f, data);
    }
    // A program to run from a stub.
    let echo = require_tool("echo", "apt-get install coreutils");
    std::fs::copy(&echo, t.path("tool")).unwrap();
    t.tier_out();
    let out = t.release(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for f in files.iter().chain(["tool", "d/a.bin", "d/b.bin"].iter()) {
        assert!(is_stub(&t.path(f)), "{f}");
    }
    let watch = t.watch(&[], &[]);

    // A recall of a folder opens each stub it listed: the handler fills it
    // at that open, and the recall says so.
    let out = t.recall(&["d"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let outcomes: Vec<&str> = rep["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["result"]["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["filled-on-open"; 2], "{rep}");
    for f in ["d/a.bin", "d/b.bin"] {
        assert!(!is_stub(&t.path(f)), "{f}");
        assert_eq!(std::fs::read(t.path(f)).unwrap(), content[f], "{f}");
    }

    let cat = run_ok(
        Command::new(require_tool("cat", "apt-get install coreutils")).arg(t.path("cat.bin")),
    );
    assert_eq!(cat.stdout, content["cat.bin"], "cat");

    // cp seeks over holes without reading them: the stub is filled at open.
    let copy = t.work.path("copy.bin");
    run_ok(
        Command::new(require_tool("cp", "apt-get install coreutils"))
            .arg(t.path("cp.bin"))
            .arg(&copy),
    );
    assert_eq!(std::fs::read(&copy).unwrap(), content["cp.bin"], "cp");

    let py = run_ok(
        Command::new(require_tool("python3", "apt-get install python3"))
            .arg("-c")
            .arg(
                "import hashlib, mmap, sys\n\
                 f = open(sys.argv[1], 'rb')\n\
                 m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)\n\
                 print(hashlib.sha256(m).hexdigest())",
            )
            .arg(t.path("mmap.bin")),
    );
    assert_eq!(
        text(&py.stdout).trim(),
        sha_bytes(&content["mmap.bin"]),
        "mmap"
    );

    let ran = run_ok(Command::new(t.path("tool")).arg("run from a stub"));
    assert_eq!(text(&ran.stdout), "run from a stub\n", "exec");

    // A write: the stub is filled first, then the write lands after it.
    run_ok(
        Command::new(require_tool("sh", "apt-get install dash"))
            .arg("-c")
            .arg(format!(
                "printf tail >> '{}'",
                t.path("append.txt").display()
            )),
    );
    let mut want = content["append.txt"].clone();
    want.extend_from_slice(b"tail");
    assert_eq!(std::fs::read(t.path("append.txt")).unwrap(), want, "append");
    watch.wait_log("recalled on first access", 5, Duration::from_secs(30));

    for f in ["cat.bin", "cp.bin", "mmap.bin", "tool"] {
        assert!(!is_stub(&t.path(f)), "{f} was recalled");
        assert_eq!(t.state(f), "archived", "{f}");
    }
    assert_eq!(t.state("append.txt"), "dirty");
    let r = t.tier_out();
    assert_eq!(r["files"], 1, "only the written file is stored again: {r}");
    assert_eq!(t.state("append.txt"), "archived");

    watch.server.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !watch.log().contains("the guard stops") {
        assert!(Instant::now() < deadline, "{}", watch.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn readers_see_the_real_bytes_through_fault_in_on_ext4() {
    readers_see_the_real_bytes(FsKind::Ext4);
}

#[test]
fn readers_see_the_real_bytes_through_fault_in_on_xfs() {
    readers_see_the_real_bytes(FsKind::Xfs);
}

/// `cat PATH` started in the background: its output, exit status and
/// complaints once it ends.
struct Reader {
    child: std::process::Child,
}

impl Reader {
    fn start(path: &Path) -> Reader {
        let child = Command::new(require_tool("cat", "apt-get install coreutils"))
            .arg(path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Reader { child }
    }

    fn finish(mut self, within: Duration) -> (Option<i32>, Vec<u8>, String) {
        let mut out = Vec::new();
        let mut stdout = self.child.stdout.take().unwrap();
        let reading = std::thread::spawn(move || {
            let _ = stdout.read_to_end(&mut out);
            out
        });
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "the reader did not finish");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
        (status.code(), reading.join().unwrap(), err)
    }
}

/// Waits until the handler has begun to fill `path` (its blocks grow),
/// while a reader waits on it.
fn wait_for_filling(path: &Path) {
    let start = allocated(path);
    let deadline = Instant::now() + Duration::from_secs(60);
    while allocated(path) <= start + (64 << 10) {
        assert!(Instant::now() < deadline, "the handler never began to fill");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(pid: u32) {
    run_ok(Command::new("kill").arg("-KILL").arg(pid.to_string()));
}

#[test]
fn a_handler_killed_mid_read_gives_the_reader_eio_never_zeros() {
    let t = Tiered::new(FsKind::Ext4, 64);
    let data = random_bytes(2 << 20);
    std::fs::write(t.path("big.bin"), &data).unwrap();
    std::fs::write(t.path("other.bin"), &data[..1 << 20]).unwrap();
    t.tier_out();
    let out = t.release(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // Each 64 KiB of a recall takes 100 ms more: time to kill the handler
    // while the reader waits.
    let slow = [("CBFS_TEST_FILL_DELAY_MS", "100")];
    let watch = t.watch(&[], &slow);
    let first = watch.handler_pid();
    let reader = Reader::start(&t.path("big.bin"));
    wait_for_filling(&t.path("big.bin"));
    kill(first);
    let (code, bytes, err) = reader.finish(Duration::from_secs(30));
    assert_ne!(code, Some(0), "the reader must fail: {err}");
    assert!(err.contains("Input/output error"), "{err}");
    assert!(
        bytes.is_empty() || data.starts_with(&bytes),
        "the reader got {} bytes that are not the file's",
        bytes.len()
    );
    assert!(is_stub(&t.path("big.bin")), "the stub stays");
    assert_eq!(t.state("big.bin"), "released");
    assert!(watch.log().contains("got EIO"), "{}", watch.log());

    // The guard starts the handler again; the next reader gets the bytes.
    watch.wait_log("fault-in handler watching", 2, Duration::from_secs(60));
    assert_ne!(watch.handler_pid(), first);
    let (code, bytes, err) = Reader::start(&t.path("big.bin")).finish(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{err}");
    assert!(bytes == data, "the restarted handler serves the real bytes");
    drop(watch);

    // Without the guard, the same kill lets the reader through to the
    // holes: zeros. This is what the guard is for.
    let unguarded = t.watch(&["--no-guard"], &slow);
    let pid = unguarded.guard_pid();
    let reader = Reader::start(&t.path("other.bin"));
    wait_for_filling(&t.path("other.bin"));
    kill(pid);
    let (code, bytes, _) = reader.finish(Duration::from_secs(30));
    assert_eq!(code, Some(0));
    assert_eq!(bytes.len(), 1 << 20);
    assert!(
        bytes != data[..1 << 20] && bytes.ends_with(&[0u8; 4096]),
        "with no guard the kernel lets the reader read the holes"
    );
}

#[test]
fn with_the_store_down_a_reader_gets_eio_and_the_stub_stays() {
    let s3 = S3Server::start();
    s3.create_bucket("cbfs");
    let proxy = FaultyProxy::start(s3.socket_addr(), FaultPlan::new());
    let mut t = Tiered::new(FsKind::Ext4, 64);
    t.store = "s3://cbfs/fault-in".into();
    t.envs = s3.envs_with_endpoint(&proxy.endpoint());
    let data = random_bytes(1 << 20);
    std::fs::write(t.path("f.bin"), &data).unwrap();
    t.tier_out();
    let out = t.release(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let watch = t.watch(&["--store-timeout", "3"], &[]);

    proxy.force(Some(Fault::InternalError));
    let (code, bytes, err) = Reader::start(&t.path("f.bin")).finish(Duration::from_secs(60));
    assert_ne!(code, Some(0));
    assert!(err.contains("Input/output error"), "{err}");
    assert!(bytes.is_empty(), "nothing read");
    assert!(is_stub(&t.path("f.bin")));
    watch.wait_log("recall failed, readers get EIO", 1, Duration::from_secs(10));
    drop(watch);

    // The command says the store is unavailable (exit 5); nothing is lost.
    let out = t.recall(&["f.bin"], &["--store-timeout", "3"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    let rep = hsm::json(&out, "recall");
    assert!(
        rep["error"].as_str().unwrap().contains("unavailable"),
        "{rep}"
    );
    assert!(is_stub(&t.path("f.bin")));
    assert_eq!(t.state("f.bin"), "released");

    proxy.force(None);
    let watch = t.watch(&["--store-timeout", "10"], &[]);
    let (code, bytes, err) = Reader::start(&t.path("f.bin")).finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    assert!(bytes == data);
    drop(watch);
}

/// A tmpfs mounted by the test until dropped.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn on_tmpfs_watch_says_it_cannot_and_recall_still_works() {
    let mut t = Tiered::new(FsKind::Ext4, 16);
    let dir = t.work.mkdir("tmp-tree");
    run_ok(
        Command::new(require_tool("mount", "apt-get install mount"))
            .args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"])
            .arg(&dir),
    );
    let _mounted = Tmpfs(dir.clone());
    // The tree is the tmpfs now (the loop file system stays unused).
    let data = random_bytes(300_000);
    std::fs::write(dir.join("f.bin"), &data).unwrap();
    let mut out_cmd = cbfs_tests::cbfs_cmd("cbfs-tier");
    out_cmd
        .args(["--json", "out"])
        .arg(&dir)
        .args(["--store", &t.store])
        .arg("--index")
        .arg(&t.index)
        .arg("--keyset")
        .arg(t.keys.keyset())
        .args(["--writer-key", &t.keys.writer()]);
    run_ok(&mut out_cmd);
    let tier = |sub: &str, args: &[&str]| {
        let mut cmd = cbfs_tests::cbfs_cmd("cbfs-tier");
        cmd.args([sub, "--store", &t.store])
            .arg("--index")
            .arg(&t.index)
            .arg("--tree")
            .arg(&dir)
            .args(args);
        run(&mut cmd)
    };
    let out = tier("release", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(is_stub(&dir.join("f.bin")));
    let out = tier("watch", &["--identity", &t.keys.admin()]);
    assert_eq!(out.status.code(), Some(8), "{}", text(&out.stderr));
    let said = text(&out.stderr);
    assert!(
        said.contains("tmpfs does not") && said.contains("explicit recall"),
        "{said}"
    );
    let f = dir.join("f.bin");
    let out = tier(
        "recall",
        &["--identity", &t.keys.admin(), f.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(std::fs::read(&f).unwrap() == data);
    t.envs.clear();
}
