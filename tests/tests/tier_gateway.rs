//! Recall through `cbfs-gateway`, end to end: the gateway's own user key,
//! delegated 2-of-3 through three real `cbfs-delegation serve` nodes (no
//! root secret online), a tree on a loop-mounted ext4 the test makes.
//!
//! - `POST /v1/fs/{fs}/recall` brings a released file back in place and
//!   awaits it; requests for the same file at once share one job; a recall
//!   goes ahead of a tier-out job started behind it; policy decides who
//!   may recall what, and a refusal is audited.
//! - `cbfs-tier recall` with the same delegated key brings a file back;
//!   once the delegation is revoked, a recall is refused and the stub
//!   stays as it was.
//! - With `fault_in = true` the gateway runs the fault-in handler under a
//!   guard: `cat` of a stub reads the real bytes; the gateway killed while a
//!   reader waits gives the reader EIO, and the guard starts it again.

#![forbid(unsafe_code)]

#[allow(dead_code)]
#[path = "delegation/cluster.rs"]
mod cluster;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use cbfs_client::GatewayAuth;
use cbfs_core::{KeySource, Unlock, UserName, UserSecret};
use cbfs_tests::reqwest::Method;
use cbfs_tests::reqwest::blocking::Client;
use cbfs_tests::{
    FsKind, LoopFs, ServerProcess, Workdir, cbfs_bin, cbfs_cmd, free_port, random_bytes,
    require_tool, run, run_ok,
};
use cluster::{NodeProc, keytool, text, words};
use serde_json::Value;

struct Site {
    /// First: unmounted before the work folder goes.
    fs: LoopFs,
    work: Workdir,
    nodes: Vec<NodeProc>,
    port: u16,
    gateway: Option<ServerProcess>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl Site {
    /// Keys (scope `proj`; users host1, alice, bob, gw, the writer), three
    /// nodes, `proj` delegated 2-of-3 to the gateway's own user `gw`, and
    /// a tree of files archived and released.
    fn new(fault_in: bool) -> Site {
        let work = Workdir::new();
        let kt = || keytool(work.root());
        run_ok(kt().args(words(
            "create-admin --fs fs1 --secret file:admin.key --keyset keyset.json",
        )));
        run_ok(kt().args(words(
            "add-scope --admin file:admin.key --keyset keyset.json --scope proj",
        )));
        for user in ["host1", "alice", "bob", "gw", "writer"] {
            run_ok(kt().args(words(&format!(
                "create-user {user} --secret file:{user}.key --public {user}.pub"
            ))));
        }
        run_ok(kt().args(words(
            "add-writer --admin file:admin.key --keyset keyset.json --public writer.pub",
        )));
        let nodes: Vec<NodeProc> = (1..=3)
            .map(|i| NodeProc::start(&work, &format!("node{i}"), &work.path("keyset.json"), &[]))
            .collect();
        let mut delegate = kt();
        delegate.args(words(
            "delegate --admin file:admin.key --keyset keyset.json --scope proj --to gw.pub --threshold 2",
        ));
        for n in &nodes {
            delegate.args(["--node", &n.url]);
        }
        run_ok(&mut delegate);
        let fs = LoopFs::new(&work, "tree", FsKind::Ext4, 96);
        let site = Site {
            fs,
            work,
            nodes,
            port: free_port(),
            gateway: None,
        };
        site.write_config(fault_in);
        site
    }

    fn tree(&self) -> &Path {
        self.fs.dir()
    }

    fn write_config(&self, fault_in: bool) {
        let nodes: Vec<String> = self.nodes.iter().map(|n| format!("{:?}", n.url)).collect();
        let c = format!(
            r#"listen = "127.0.0.1:{port}"
state = "gw-state"

[limits]
max_wait_secs = 300
store_timeout_secs = 10

[users.host1]
key = "host1.pub"
roles = ["host"]

[users.alice]
key = "alice.pub"
roles = ["user"]
homes = {{ fs1 = ["/home/alice"] }}

[fs.fs1]
source = {tree:?}
store = "store"
index = "index"
keyset = "keyset.json"
scopes = ["**=proj"]
writer_key = "file:writer.key"
nodes = [{nodes}]
identity = {{ secret = "file:gw.key", public = "gw.pub" }}
fault_in = {fault_in}
"#,
            port = self.port,
            tree = self.tree(),
            nodes = nodes.join(", "),
        );
        fs::write(self.work.path("gateway.toml"), c).unwrap();
    }

    /// `cbfs-tier ARGS` on the gateway's index (while it is not running).
    fn tier(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = cbfs_cmd("cbfs-tier");
        cmd.current_dir(self.work.root()).args(args);
        run(&mut cmd)
    }

    /// Archives the tree and releases every file.
    fn archive_and_release(&self) {
        let out = self.tier(&[
            "out",
            self.tree().to_str().unwrap(),
            "--store",
            "store",
            "--index",
            "index",
            "--keyset",
            "keyset.json",
            "--writer-key",
            "file:writer.key",
            "--scope",
            "**=proj",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = self.tier(&[
            "release",
            "--store",
            "store",
            "--index",
            "index",
            "--tree",
            self.tree().to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start_gateway(&mut self, envs: &[(&str, &str)]) {
        let log = self.work.path("gateway.log");
        let mut cmd = Command::new(cbfs_bin("cbfs-gateway"));
        cmd.current_dir(self.work.root())
            .arg("serve")
            .arg("--config")
            .arg(self.work.path("gateway.toml"))
            .env("RUST_LOG", "cbfs_gateway=debug,cbfs_tiering=info");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let server = ServerProcess::spawn("gateway", &cmd, &log, self.work.root());
        self.gateway = Some(server);
        self.wait_ready(1);
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&self.gateway.as_ref().unwrap().log_contents()).into_owned()
    }

    /// Waits until `/readyz` answers and `listening` was logged `times` times.
    fn wait_ready(&self, times: usize) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let ready = Client::new()
                .get(format!("{}/readyz", self.url()))
                .timeout(Duration::from_secs(2))
                .send()
                .is_ok_and(|r| r.status() == 200);
            if ready && self.log().matches("serving file systems").count() >= times {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway was not ready:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn auth(&self, user: &str) -> GatewayAuth {
        let secret = UserSecret::from_seed(
            KeySource::File(self.work.path(format!("{user}.key")))
                .load(&Unlock::default())
                .unwrap(),
        );
        GatewayAuth::new(UserName::new(user).unwrap(), secret.signer())
    }

    /// `method path` signed by `user`: status and JSON body.
    fn call(&self, user: &str, method: Method, path: &str) -> (u16, Value) {
        let url = format!("{}{path}", self.url());
        let mut request = Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap()
            .request(method.clone(), &url);
        for (name, value) in self
            .auth(user)
            .headers(method.as_str(), &url, Some(b""), now())
            .unwrap()
        {
            request = request.header(name, value);
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        let body = serde_json::from_slice(&response.bytes().unwrap()).unwrap_or(Value::Null);
        (status, body)
    }

    fn recall(&self, user: &str, path: &str, wait: Option<u64>) -> (u16, Value) {
        let q = match wait {
            Some(w) => format!("/v1/fs/fs1/recall?path={path}&wait={w}"),
            None => format!("/v1/fs/fs1/recall?path={path}"),
        };
        self.call(user, Method::POST, &q)
    }
}

fn is_stub(p: &Path) -> bool {
    xattr::get(p, "trusted.cbfs.stub").unwrap_or(None).is_some()
}

fn write_tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for (rel, size) in [
        ("home/alice/a.bin", 600_000),
        ("home/alice/big.bin", 2 << 20),
        ("home/bob/b.bin", 400_000),
        ("shared/c.bin", 700_000),
        ("shared/d.bin", 300_000),
    ] {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let data = random_bytes(size);
        fs::write(&p, &data).unwrap();
        files.push((p, data));
    }
    files
}

#[test]
fn the_gateway_recalls_with_its_own_delegated_key_one_job_per_file_ahead_of_tier_out() {
    let mut site = Site::new(false);
    let files = write_tree(site.tree());
    site.archive_and_release();
    assert!(files.iter().all(|(p, _)| is_stub(p)));
    site.start_gateway(&[("CBFS_TEST_FILL_DELAY_MS", "40")]);

    // A host recalls a file and waits for it.
    let (status, rec) = site.recall("host1", "/shared/c.bin", Some(120));
    assert_eq!(status, 201, "{rec}");
    assert_eq!(rec["state"], "succeeded", "{rec}");
    assert_eq!(rec["result"]["outcome"], "recalled", "{rec}");
    assert_eq!(fs::read(&files[3].0).unwrap(), files[3].1);
    assert!(!is_stub(&files[3].0));
    // Again: nothing to do.
    let (status, rec) = site.recall("host1", "/shared/c.bin", Some(60));
    assert_eq!(
        (status, &rec["result"]["outcome"]),
        (201, &"resident".into()),
        "{rec}"
    );

    // Four requests at once for one file share one job.
    let ids: Vec<String> = thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| site.recall("host1", "/home/alice/big.bin", Some(120))))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let (status, rec) = h.join().unwrap();
                assert!(status == 200 || status == 201, "{rec}");
                assert_eq!(rec["state"], "succeeded", "{rec}");
                rec["id"].as_str().unwrap().to_owned()
            })
            .collect()
    });
    assert!(ids.iter().all(|i| *i == ids[0]), "one job: {ids:?}");
    assert_eq!(fs::read(&files[1].0).unwrap(), files[1].1);

    // A recall goes ahead of a tier-out started behind it.
    let (status, recall) = site.recall("host1", "/shared/d.bin", None);
    assert_eq!(status, 202, "{recall}");
    let (status, job) = site.call("host1", Method::POST, "/v1/fs/fs1/jobs");
    assert_eq!(status, 201, "{job}");
    let id = recall["id"].as_str().unwrap();
    let (_, recall) = site.call(
        "host1",
        Method::GET,
        &format!("/v1/fs/fs1/recall/{id}?wait=120"),
    );
    assert_eq!(recall["state"], "succeeded", "{recall}");
    let jid = job["id"].as_str().unwrap();
    let (_, job) = site.call(
        "host1",
        Method::GET,
        &format!("/v1/fs/fs1/jobs/{jid}?wait=120"),
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(
        job["started"].as_str().unwrap() >= recall["ended"].as_str().unwrap(),
        "the tier-out waited for the recall: {job} {recall}"
    );
    // The recalled files are not archived again.
    assert_eq!(job["report"]["files"], 0, "{job}");
    assert_eq!(fs::read(&files[4].0).unwrap(), files[4].1);

    // Policy: alice recalls in her home, not in bob's; the refusal is audited.
    let (status, rec) = site.recall("alice", "/home/alice/a.bin", Some(120));
    assert_eq!((status, &rec["state"]), (201, &"succeeded".into()), "{rec}");
    assert_eq!(fs::read(&files[0].0).unwrap(), files[0].1);
    let (status, body) = site.recall("alice", "/home/bob/b.bin", Some(10));
    assert_eq!((status, &body["error"]), (403, &"denied".into()), "{body}");
    assert!(is_stub(&files[2].0));
    let audit: String = fs::read_dir(site.work.path("gw-state/audit"))
        .unwrap()
        .flatten()
        .map(|e| fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(
        audit.contains("\"Recall\"") && audit.contains("fs1:/home/bob/b.bin"),
        "{audit}"
    );
    // A bad path is a clear 400.
    let (status, body) = site.recall("host1", "/home/../etc", Some(1));
    assert_eq!(
        (status, &body["error"]),
        (400, &"bad_path".into()),
        "{body}"
    );
    // The nodes answered the gateway's own key: no root secret online.
    let node_log = site.nodes[0].log_text();
    assert!(node_log.contains("gw"), "{node_log}");
}

/// `cbfs-tier recall` of `rel` with the gateway's user key `gw` through
/// the three nodes (no root or scope secret).
fn recall_as_gw(site: &Site, rel: &str) -> std::process::Output {
    let tree = site.tree().to_str().unwrap().to_owned();
    let file = site.tree().join(rel);
    let mut args = vec![
        "--json",
        "recall",
        "--store",
        "store",
        "--index",
        "index",
        "--tree",
        &tree,
        "--identity",
        "file:gw.key",
        "--user",
        "gw.pub",
        "--store-timeout",
        "10",
    ];
    for n in &site.nodes {
        args.extend(["--node", n.url.as_str()]);
    }
    args.push(file.to_str().unwrap());
    site.tier(&args)
}

#[test]
fn cbfs_tier_recalls_with_a_delegated_user_key_and_a_revoked_one_leaves_the_stub() {
    let site = Site::new(false);
    let files = write_tree(site.tree());
    site.archive_and_release();
    assert!(files.iter().all(|(p, _)| is_stub(p)));

    // An unattended agent's own key, delegated 2-of-3: the file is back.
    let out = recall_as_gw(&site, "shared/c.bin");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["files"][0]["result"]["outcome"], "recalled", "{rep}");
    assert_eq!(fs::read(&files[3].0).unwrap(), files[3].1);
    assert!(!is_stub(&files[3].0));

    // The administrator revokes it: the nodes refuse, the recall says so
    // (not a retryable outage, not a bad stored copy) and the stub stays.
    let mut revoke = keytool(site.work.root());
    revoke.args(words(
        "revoke --admin file:admin.key --keyset keyset.json --scope proj --user gw.pub",
    ));
    for n in &site.nodes {
        revoke.args(["--node", &n.url]);
    }
    run_ok(&mut revoke);
    let before = fs::metadata(&files[4].0).unwrap();
    let out = recall_as_gw(&site, "shared/d.bin");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    let result = &rep["files"][0]["result"];
    assert_eq!(
        (&result["outcome"], &result["kind"]),
        (&"failed".into(), &"refused".into()),
        "{rep}"
    );
    assert!(is_stub(&files[4].0), "the stub stays");
    let after = fs::metadata(&files[4].0).unwrap();
    assert_eq!(
        (after.len(), after.modified().unwrap()),
        (before.len(), before.modified().unwrap())
    );
    assert!(
        fs::read(&files[4].0).unwrap() != files[4].1,
        "still released: its content is not here"
    );
}

#[test]
fn the_gateway_faults_stubs_in_and_a_killed_gateway_gives_readers_eio() {
    let mut site = Site::new(true);
    let files = write_tree(site.tree());
    site.archive_and_release();
    site.start_gateway(&[("CBFS_TEST_FILL_DELAY_MS", "60")]);

    let cat = require_tool("cat", "apt-get install coreutils");
    let out = run_ok(Command::new(&cat).arg(&files[3].0));
    assert!(out.stdout == files[3].1, "cat reads the real bytes");
    assert!(
        site.log().contains("recalled on first access"),
        "{}",
        site.log()
    );

    // The gateway (the guard's child) killed while a reader waits.
    let guard = site.gateway.as_ref().unwrap().pid().unwrap();
    let child = children_of(guard)[0];
    let big = &files[1];
    let reader = Command::new(&cat)
        .arg(&big.0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let start = std::fs::metadata(&big.0)
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m))
        .unwrap();
    while std::fs::metadata(&big.0)
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m))
        .unwrap()
        <= start + 128
    {
        assert!(Instant::now() < deadline, "the fill never began");
        thread::sleep(Duration::from_millis(20));
    }
    run_ok(Command::new("kill").arg("-KILL").arg(child.to_string()));
    let out = reader.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Input/output error"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty() || big.1.starts_with(&out.stdout));
    assert!(is_stub(&big.0));

    // The guard starts the gateway again; the next reader gets the bytes.
    site.wait_ready(2);
    let out = run_ok(Command::new(&cat).arg(&big.0));
    assert!(out.stdout == big.1);
    // The API recall of a watched file: filled by the handler.
    let (status, rec) = site.recall("host1", "/shared/d.bin", Some(120));
    assert_eq!(status, 201, "{rec}");
    assert_eq!(rec["result"]["outcome"], "filled-on-open", "{rec}");
    assert_eq!(fs::read(&files[4].0).unwrap(), files[4].1);
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        if after
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok())
            == Some(pid)
        {
            out.push(p);
        }
    }
    out
}
