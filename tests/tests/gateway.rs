//! `cbfs-gateway` end to end, with real processes on 127.0.0.1: the gateway
//! over TLS (certificates made by the test with `openssl`), three
//! `cbfs-delegation serve` nodes, a local directory store and a moto S3
//! store, and the real `cbfs-tier` as host and as users.
//!
//! - A host with no keys and no store credentials pushes a tree; a second
//!   push of the same tree stores nothing again.
//! - alice lists only what policy lets her list and restores her scope
//!   through the gateway with her own key (the nodes reached through the
//!   gateway's relay); bob is refused, and the refusal is audited.
//! - Bad requests get clear 4xx answers and commit nothing.
//! - A tier-out run is started, joined and awaited; a kill -9 of the
//!   gateway mid-run loses nothing committed, the restarted gateway reports
//!   the run as interrupted and the next run completes it.
//! - SIGHUP reloads the configuration under traffic and drops nothing; a
//!   client certificate authenticates a host.
//! - 32 clients list and read at once while a run goes: every answer is
//!   right (latencies printed, not asserted).

#![forbid(unsafe_code)]

#[allow(dead_code)]
#[path = "delegation/cluster.rs"]
mod cluster;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use cbfs_client::GatewayAuth;
use cbfs_core::{KeySource, Unlock, UserName, UserSecret};
use cbfs_tests::reqwest::blocking::Client;
use cbfs_tests::reqwest::{Certificate, Identity, Method};
use cbfs_tests::tls::ServerTls;
use cbfs_tests::{
    Compare, S3Server, ServerProcess, Workdir, cbfs_bin, cbfs_cmd, random_bytes, run_fail, run_ok,
};
use cluster::{NodeProc, keytool, text, words};
use serde_json::Value;

/// The JSON body limit the test configures (a larger body gets 413).
const MAX_BODY: usize = 4096;

/// A test CA, the gateway's certificate for 127.0.0.1, and a client
/// certificate for host1, all made with `openssl`.
struct Tls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    client: PathBuf,
    client_sha256: String,
}

fn make_tls(work: &Workdir) -> Tls {
    let server = ServerTls::make(&work.path("tls"));
    let client = server.client("host1");
    Tls {
        ca: server.ca,
        cert: server.cert,
        key: server.key,
        client: client.identity,
        client_sha256: client.sha256,
    }
}

/// One `cbfs-gateway serve` process.
struct GatewayProc {
    server: ServerProcess,
}

impl GatewayProc {
    fn signal(&self, signal: &str) {
        self.server.signal(signal);
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&self.server.log_contents()).into_owned()
    }
}

/// Keys, nodes, stores, the gateway and its configuration.
struct Site {
    work: Workdir,
    tls: Tls,
    nodes: Vec<NodeProc>,
    s3: Option<S3Server>,
    /// `https://127.0.0.1:PORT`, as the running gateway said.
    url: String,
    gateway: Option<GatewayProc>,
    /// Node URLs the configuration names after the nodes'.
    extra_nodes: Vec<String>,
}

fn seed_secret(path: &Path) -> UserSecret {
    UserSecret::from_seed(
        KeySource::File(path.to_path_buf())
            .load(&Unlock::default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// What a signed request answers: status, JSON (or text) body.
struct Answer {
    status: u16,
    body: Value,
    bytes: Vec<u8>,
    retry_after: Option<String>,
}

impl Answer {
    fn code(&self) -> Option<&str> {
        self.body["error"].as_str()
    }

    /// Fails unless the answer is `status` with error code `code`.
    #[track_caller]
    fn expect(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.code()),
            (status, Some(code)),
            "{}",
            self.body
        );
    }
}

impl Site {
    /// The keys (scopes alice and bob, users host1, alice, bob, the writer),
    /// three nodes, alice's scope delegated to alice 2-of-3; with `s3`, a
    /// second file system `fs2` on moto whose source is `SRC2`.
    fn new(s3: bool) -> Site {
        let work = Workdir::new();
        let kt = || keytool(work.root());
        run_ok(kt().args(words(
            "create-admin --fs fs1 --secret file:admin.key --keyset keyset.json",
        )));
        for scope in ["alice", "bob"] {
            run_ok(kt().args(words(&format!(
                "add-scope --admin file:admin.key --keyset keyset.json --scope {scope}"
            ))));
        }
        for user in ["host1", "alice", "bob", "writer", "carol"] {
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
            "delegate --admin file:admin.key --keyset keyset.json --scope alice --to alice.pub --threshold 2",
        ));
        for n in &nodes {
            delegate.args(["--node", &n.url]);
        }
        run_ok(&mut delegate);
        let tls = make_tls(&work);
        let s3 = s3.then(|| {
            let s3 = S3Server::start();
            s3.create_bucket("cbfs");
            s3
        });
        work.mkdir("src2");
        let site = Site {
            work,
            tls,
            nodes,
            s3,
            url: String::new(),
            gateway: None,
            extra_nodes: Vec::new(),
        };
        site.write_config();
        site
    }

    fn config_path(&self) -> PathBuf {
        self.work.path("gateway.toml")
    }

    fn write_config(&self) {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| &n.url)
            .chain(&self.extra_nodes)
            .map(|u| format!("{u:?}"))
            .collect();
        let mut c = format!(
            r#"listen = "127.0.0.1:0"
state = "gw-state"

[tls]
cert = {cert:?}
key = {key:?}
client_ca = {ca:?}

[limits]
max_body = {MAX_BODY}
max_wait_secs = 300
store_timeout_secs = 4

[users.host1]
key = "host1.pub"
roles = ["host"]

[users.alice]
key = "alice.pub"
roles = ["user"]
homes = {{ fs1 = ["/home/alice"] }}

[users.bob]
key = "bob.pub"
roles = ["user"]
homes = {{ fs1 = ["/home/bob"] }}

[clients]
{fp} = "host1"

[fs.fs1]
store = "store1"
index = "index1"
keyset = "keyset.json"
scopes = ["home/alice/**=alice", "home/bob/**=bob"]
writer_key = "file:writer.key"
nodes = [{nodes}]
"#,
            cert = self.tls.cert,
            key = self.tls.key,
            ca = self.tls.ca,
            fp = self.tls.client_sha256,
            nodes = nodes.join(", "),
        );
        if self.s3.is_some() {
            c.push_str(&format!(
                r#"
[fs.fs2]
source = "src2"
store = "s3://cbfs/fs2"
index = "index2"
keyset = "keyset.json"
scopes = ["**=alice"]
writer_key = "file:writer.key"
nodes = [{}]
"#,
                nodes.join(", ")
            ));
        }
        fs::write(self.config_path(), c).unwrap();
    }

    fn url(&self) -> String {
        assert!(!self.url.is_empty(), "the gateway has not started");
        self.url.clone()
    }

    fn envs(&self) -> Vec<(String, String)> {
        let mut envs = vec![("CBFS_CA_FILE".to_owned(), self.tls.ca.display().to_string())];
        if let Some(s3) = &self.s3 {
            envs.extend(s3.envs());
        }
        envs
    }

    /// Starts the gateway and waits until it answers `/readyz`.
    fn start_gateway(&mut self) {
        let log = self.work.path("gateway.log");
        let mut cmd = Command::new(cbfs_bin("cbfs-gateway"));
        cmd.arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", "cbfs_gateway=debug,cbfs_tiering=info")
            .envs(self.envs());
        let mut server = ServerProcess::spawn("gateway", &cmd, &log, self.work.root());
        // A port the kernel picked: the gateway says which.
        self.url = server.listening_url(Duration::from_secs(60));
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = server.exit_status() {
                panic!(
                    "the gateway exited with {status}:\n{}",
                    String::from_utf8_lossy(&server.log_contents())
                );
            }
            let ready = client.get(format!("{}/readyz", self.url())).send();
            if ready.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway was not ready within 60 s:\n{}",
                String::from_utf8_lossy(&server.log_contents())
            );
            thread::sleep(Duration::from_millis(50));
        }
        self.gateway = Some(GatewayProc { server });
    }

    fn gw(&self) -> &GatewayProc {
        self.gateway.as_ref().expect("the gateway runs")
    }

    /// An HTTPS client that trusts the test CA (and nothing else).
    fn client(&self) -> Client {
        Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(Certificate::from_pem(&fs::read(&self.tls.ca).unwrap()).unwrap())
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap()
    }

    /// [`client`](Self::client) presenting host1's client certificate.
    fn client_with_certificate(&self) -> Client {
        Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(Certificate::from_pem(&fs::read(&self.tls.ca).unwrap()).unwrap())
            .identity(Identity::from_pem(&fs::read(&self.tls.client).unwrap()).unwrap())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    }

    fn auth(&self, user: &str, key_of: &str) -> GatewayAuth {
        let secret = seed_secret(&self.work.path(format!("{key_of}.key")));
        GatewayAuth::new(UserName::new(user).unwrap(), secret.signer())
    }

    /// A request signed by `user`'s own key at `timestamp`.
    fn request_as(
        &self,
        client: &Client,
        auth: &GatewayAuth,
        method: Method,
        path: &str,
        body: &[u8],
        timestamp: i64,
    ) -> cbfs_tests::reqwest::blocking::RequestBuilder {
        let url = format!("{}{path}", self.url());
        let mut request = client.request(method.clone(), &url).body(body.to_vec());
        for (name, value) in auth
            .headers(method.as_str(), &url, Some(body), timestamp)
            .unwrap()
        {
            request = request.header(name, value);
        }
        request
    }

    fn send(request: cbfs_tests::reqwest::blocking::RequestBuilder) -> Answer {
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = response.bytes().unwrap().to_vec();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            body,
            bytes,
            retry_after,
        }
    }

    /// `method path` signed by `user`, now.
    fn call(&self, user: &str, method: Method, path: &str, body: &[u8]) -> Answer {
        let auth = self.auth(user, user);
        Self::send(self.request_as(&self.client(), &auth, method, path, body, now()))
    }

    /// `cbfs-tier push DIR` to fs1 as `user`.
    fn push_command(&self, dir: &Path, prefix: &str, user: &str) -> std::process::Command {
        let mut cmd = cbfs_cmd("cbfs-tier");
        cmd.arg("--json")
            .arg("push")
            .arg(dir)
            .args(["--gateway", &self.url(), "--fs", "fs1", "--prefix", prefix])
            .args(self.identity_args(user))
            .envs(self.envs());
        cmd
    }

    /// `--identity KEY --user NAME.pub` of `user`'s own key.
    fn identity_args(&self, user: &str) -> [std::ffi::OsString; 4] {
        [
            "--identity".into(),
            format!("file:{}", self.work.path(format!("{user}.key")).display()).into(),
            "--user".into(),
            self.work.path(format!("{user}.pub")).into(),
        ]
    }

    /// `cbfs-tier push DIR` to fs1 as host1.
    fn push(&self, dir: &Path, prefix: &str) -> Value {
        let out = run_ok(&mut self.push_command(dir, prefix, "host1"));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("no job record ({e}): {}", text(&out.stdout));
        })
    }

    /// `cbfs-tier --json restore PATH DEST` of `fs` through the gateway, as
    /// `user` with their own key.
    fn restore(&self, fs: &str, user: &str, path: &str, dest: &str) -> Output {
        let mut cmd = cbfs_cmd("cbfs-tier");
        cmd.args(["--json", "restore", "--store"])
            .arg(format!("{}/v1/fs/{fs}", self.url()))
            .args(self.identity_args(user))
            .arg("--keyset")
            .arg(self.work.path("keyset.json"))
            .args(["--node-timeout", "30"])
            .arg(path)
            .arg(self.work.path(dest))
            .envs(self.envs());
        cbfs_tests::run(&mut cmd)
    }

    fn audit(&self) -> String {
        let dir = self.work.path("gw-state/audit");
        let mut all = String::new();
        for entry in fs::read_dir(&dir).unwrap() {
            all.push_str(&fs::read_to_string(entry.unwrap().path()).unwrap_or_default());
        }
        all
    }

    fn verify_audit(&self) {
        let out = run_ok(
            cbfs_cmd("cbfs-gateway")
                .args(["audit", "verify"])
                .arg(self.work.path("gw-state/audit")),
        );
        let said = text(&out.stdout) + &text(&out.stderr);
        assert!(said.contains("intact"), "{said}");
    }

    /// Starts a tier-out run of fs2 as host1; its record.
    fn start_run(&self) -> Answer {
        self.call("host1", Method::POST, "/v1/fs/fs2/jobs", b"")
    }

    fn wait_job(&self, fs: &str, id: &str) -> Value {
        let a = self.call(
            "host1",
            Method::GET,
            &format!("/v1/fs/{fs}/jobs/{id}?wait=240"),
            b"",
        );
        assert_eq!(a.status, 200, "{}", a.body);
        a.body
    }
}

/// A tree of homes: alice's files (with a subfolder), bob's.
fn homes(work: &Workdir) -> PathBuf {
    let root = work.mkdir("pushed");
    fs::create_dir_all(root.join("alice/docs/deep")).unwrap();
    fs::create_dir_all(root.join("bob")).unwrap();
    for i in 0..8 {
        fs::write(
            root.join(format!("alice/file-{i}")),
            random_bytes(20_000 + i),
        )
        .unwrap();
    }
    fs::write(root.join("alice/docs/deep/note.txt"), b"alice's own words").unwrap();
    std::os::unix::fs::symlink("deep/note.txt", root.join("alice/docs/link")).unwrap();
    fs::write(root.join("bob/secret.txt"), b"bob's, not alice's").unwrap();
    root
}

fn names_in(listing: &Value) -> Vec<String> {
    listing
        .as_array()
        .unwrap_or_else(|| panic!("not a listing: {listing}"))
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_owned())
        .collect()
}

fn report_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

#[test]
fn a_host_pushes_alice_restores_her_scope_through_the_gateway_and_bob_is_refused() {
    let mut site = Site::new(false);
    site.start_gateway();
    let tree = homes(&site.work);

    // The host pushes: every entry stored, one snapshot.
    let first = site.push(&tree, "/home");
    assert_eq!(first["state"], "succeeded", "{first:#}");
    let files = first["report"]["files"].as_u64().unwrap();
    assert!(files >= 12, "{first:#}");
    assert!(first["report"]["snapshot"].is_string(), "{first:#}");
    // The same tree again: nothing stored again, no new snapshot.
    let second = site.push(&tree, "/home");
    assert_eq!(second["state"], "succeeded", "{second:#}");
    assert_eq!(second["report"]["files"], 0, "{second:#}");
    assert!(
        second["report"]["unchanged"].as_u64().unwrap() >= files - 1,
        "{second:#}"
    );
    assert!(second["report"]["snapshot"].is_null(), "{second:#}");
    // One file changed: that one is stored.
    fs::write(tree.join("alice/file-0"), b"changed").unwrap();
    let third = site.push(&tree, "/home");
    assert_eq!(third["report"]["files"], 1, "{third:#}");

    // The snapshots, as a user sees them.
    let snaps = site.call("alice", Method::GET, "/v1/fs/fs1/snapshots", b"");
    assert_eq!(snaps.status, 200, "{}", snaps.body);
    assert_eq!(snaps.body["snapshots"].as_array().unwrap().len(), 2);

    // alice lists her home, and from the top sees only her own paths.
    let mine = site.call("alice", Method::GET, "/v1/fs/fs1/ls?path=/home/alice", b"");
    assert_eq!(mine.status, 200, "{}", mine.body);
    let names = names_in(&mine.body);
    assert!(
        names.contains(&"home/alice/docs/deep/note.txt".to_owned()),
        "{names:?}"
    );
    let top = site.call("alice", Method::GET, "/v1/fs/fs1/ls?path=/", b"");
    assert_eq!(top.status, 200, "{}", top.body);
    let names = names_in(&top.body);
    assert!(!names.is_empty());
    assert!(
        names.iter().all(|n| !n.starts_with("home/bob")),
        "alice sees bob's paths: {names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("home/alice/")),
        "{names:?}"
    );

    // bob may not list alice's home: refused, and the refusal is audited.
    let refused = site.call("bob", Method::GET, "/v1/fs/fs1/ls?path=/home/alice", b"");
    assert_eq!(
        (refused.status, refused.code()),
        (403, Some("denied")),
        "{}",
        refused.body
    );
    let audit = site.audit();
    assert!(
        audit.lines().any(|l| l.contains("\"user\":\"bob\"")
            && l.contains("\"deny\"")
            && l.contains("fs1:/home/alice")),
        "no audited refusal of bob:\n{audit}"
    );

    // alice restores her home through the gateway, with her own key: the
    // gateway serves ciphertext and relays to the nodes; her client decrypts.
    let out = site.restore("fs1", "alice", "home/alice", "restored");
    let report = report_of(&out);
    assert!(out.status.success(), "{report:#}\n{}", text(&out.stderr));
    let restored = site.work.path("restored");
    let got = fs::read(restored.join("home/alice/docs/deep/note.txt"))
        .or_else(|_| fs::read(restored.join("docs/deep/note.txt")))
        .unwrap_or_else(|e| panic!("note.txt not restored ({e}): {report:#}"));
    assert_eq!(got, b"alice's own words");
    let everything = cbfs_tests::describe(&restored, Compare::default());
    assert!(
        everything
            .keys()
            .all(|k| !String::from_utf8_lossy(k).contains("bob")),
        "bob's files came back to alice: {:?}",
        everything.keys().collect::<Vec<_>>()
    );

    // The administrator turns the store back into a plain tar with
    // cbfs-recover through the gateway, with no store credentials: the root
    // secret decrypts, a gateway user's key (alice's here) signs the reads.
    let recover = |user: &str, key: &str| {
        let mut cmd = cbfs_cmd("cbfs-recover");
        cmd.arg("--identity")
            .arg(format!("file:{}", site.work.path("admin.key").display()))
            .arg("--keyset")
            .arg(site.work.path("keyset.json"))
            .arg("--store")
            .arg(format!("{}/v1/fs/fs1", site.url()))
            .arg("--gateway-user")
            .arg(site.work.path(format!("{user}.pub")))
            .arg("--gateway-identity")
            .arg(format!(
                "file:{}",
                site.work.path(format!("{key}.key")).display()
            ))
            .arg("-o")
            .arg(site.work.path("recovered.tar"))
            .arg("--force")
            .envs(site.envs());
        cbfs_tests::run(&mut cmd)
    };
    let out = recover("alice", "alice");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tar = fs::read(site.work.path("recovered.tar")).unwrap();
    let listed = run_ok(
        Command::new("tar")
            .arg("-tf")
            .arg(site.work.path("recovered.tar")),
    );
    let listed = text(&listed.stdout);
    for name in ["home/alice/docs/deep/note.txt", "home/bob/secret.txt"] {
        assert!(listed.contains(name), "{name} not in the tar:\n{listed}");
    }
    assert!(tar.windows(18).any(|w| w == b"bob's, not alice's"));
    // A key that is not the named user's is refused before anything is read.
    let out = recover("alice", "bob");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not the key of user `alice`"),
        "{}",
        text(&out.stderr)
    );
    // A host may not read the store: a refusal naming the object, exit 1.
    let out = recover("host1", "host1");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("403 denied"),
        "{}",
        text(&out.stderr)
    );

    // bob, restoring alice's home, gets none of it: the nodes hold no
    // delegation of her scope for him, and the gateway cannot decrypt.
    let out = site.restore("fs1", "bob", "home/alice", "bob-restored");
    let bob_dir = site.work.path("bob-restored");
    let leaked = bob_dir.exists()
        && cbfs_tests::describe(&bob_dir, Compare::default())
            .keys()
            .any(|k| String::from_utf8_lossy(k).contains("note.txt"));
    assert!(!leaked, "bob restored alice's file: {}", text(&out.stdout));

    // The metrics count what happened.
    let metrics = site
        .client()
        .get(format!("{}/metrics", site.url()))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for needle in [
        "cbfs_gateway_requests_total{route=\"/v1/fs/{fs}/push\",status=\"200\"} 3",
        "cbfs_gateway_requests_total{route=\"/v1/fs/{fs}/ls\",status=\"403\"} 1",
        "cbfs_gateway_bytes_total{direction=\"in\",route=\"push\"}",
        "cbfs_gateway_bytes_total{direction=\"out\",route=\"store\"}",
        // The restore read its members' heads in one request per segment.
        "cbfs_gateway_requests_total{route=\"/v1/fs/{fs}/ranges/{*key}\",status=\"200\"}",
        "cbfs_gateway_job_seconds_count{kind=\"push\",state=\"succeeded\"} 3",
        "cbfs_gateway_node_seconds",
        "cbfs_gateway_decisions_total{action=\"List\",decision=\"deny\"}",
    ] {
        assert!(metrics.contains(needle), "{needle} not in\n{metrics}");
    }

    // No secret of any key reaches the gateway's log or its audit log.
    let log = site.gw().log();
    for user in ["alice", "bob", "host1", "admin"] {
        let seed = fs::read(site.work.path(format!("{user}.key"))).unwrap();
        cbfs_tests::assert_no_secret(log.as_bytes(), &seed, &format!("gateway log ({user})"));
        cbfs_tests::assert_no_secret(audit.as_bytes(), &seed, &format!("audit ({user})"));
    }
    site.verify_audit();
}

/// A tar stream with one raw (unchecked) name.
fn tar_with_name(name: &[u8], data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    h.set_cksum();
    b.append(&h, data).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn bad_requests_get_clear_errors_and_commit_nothing() {
    let mut site = Site::new(false);
    site.start_gateway();
    let tree = homes(&site.work);
    site.push(&tree, "/home");
    let client = site.client();
    let alice = site.auth("alice", "alice");
    let url = site.url();

    // Not signed.
    let a = Site::send(client.get(format!("{url}/v1/fs")));
    a.expect(401, "unauthenticated");
    // Signed by someone else's key in alice's name.
    let forged = site.auth("alice", "bob");
    let a = Site::send(site.request_as(
        &client,
        &forged,
        Method::GET,
        "/v1/fs/fs1/snapshots",
        b"",
        now(),
    ));
    a.expect(401, "bad_signature");
    assert!(
        a.body["reason"].as_str().unwrap().contains("alice"),
        "{}",
        a.body
    );
    // Replayed.
    let once = site.request_as(
        &client,
        &alice,
        Method::GET,
        "/v1/fs/fs1/snapshots",
        b"",
        now(),
    );
    let again = once.try_clone().unwrap();
    assert_eq!(Site::send(once).status, 200);
    let a = Site::send(again);
    a.expect(409, "replayed");
    // Stale.
    let a = Site::send(site.request_as(
        &client,
        &alice,
        Method::GET,
        "/v1/fs/fs1/snapshots",
        b"",
        now() - 3600,
    ));
    a.expect(401, "stale_request");
    // An unknown file system.
    let a = site.call("alice", Method::GET, "/v1/fs/nope/snapshots", b"");
    a.expect(404, "unknown_fs");
    assert!(a.body["reason"].as_str().unwrap().contains("nope"));
    // An oversize body.
    let a = site.call(
        "host1",
        Method::POST,
        "/v1/fs/fs1/jobs",
        &vec![b'x'; MAX_BODY * 2],
    );
    a.expect(413, "too_large");
    // Path traversal in every path parameter.
    for path in [
        "/v1/fs/fs1/ls?path=/home/../etc",
        "/v1/fs/fs1/ls?path=home",
        "/v1/fs/fs1/store/segments/..%2F..%2Fetc%2Fpasswd",
    ] {
        let a = site.call("alice", Method::GET, path, b"");
        assert_eq!(a.status, 400, "{path}: {}", a.body);
        assert!(a.body["reason"].is_string(), "{path}: {}", a.body);
    }
    let a = site.call("host1", Method::PUT, "/v1/fs/fs1/push?prefix=/../x", b"");
    a.expect(400, "bad_path");
    // An unknown job.
    let a = site.call(
        "host1",
        Method::GET,
        "/v1/fs/fs1/jobs/0123456789abcdef",
        b"",
    );
    a.expect(404, "unknown_job");
    // A host may not list; a user may not push.
    let a = site.call("host1", Method::GET, "/v1/fs/fs1/ls?path=/", b"");
    a.expect(403, "denied");
    let push_url = format!("{url}/v1/fs/fs1/push?prefix=/home");
    let mut request = client.put(&push_url).body(tar_with_name(b"x", b"x"));
    for (name, value) in alice.headers("PUT", &push_url, None, now()).unwrap() {
        request = request.header(name, value);
    }
    let a = Site::send(request);
    a.expect(403, "denied");
    // Refused before the gateway reads the stream: `cbfs-tier push` of a
    // tree of 24 MiB still shows the gateway's answer, not a broken pipe.
    let big = site.work.mkdir("big");
    for i in 0..3 {
        fs::write(big.join(format!("part-{i}")), random_bytes(8 << 20)).unwrap();
    }
    let out = run_fail(&mut site.push_command(&big, "/../x", "host1"));
    let err = text(&out.stderr);
    assert!(err.contains("400") && err.contains("bad_path"), "{err}");
    let out = run_fail(&mut site.push_command(&big, "/home", "alice"));
    let err = text(&out.stderr);
    assert!(err.contains("403") && err.contains("denied"), "{err}");
    // A streamed body must say so: a push signed as a small body is refused.
    let a = site.call("host1", Method::PUT, "/v1/fs/fs1/push?prefix=/home", b"");
    a.expect(400, "bad_request");
    // A missing object, and a range outside one.
    let a = site.call("alice", Method::GET, "/v1/fs/fs1/store/segments/none", b"");
    assert_eq!(a.status, 404, "{}", a.body);
    // Many ranges of a segment in one request: the same bytes as a
    // ranged GET of each; a range outside it, a bad body, too many ranges
    // and a missing object are refused, naming the problem.
    let listed = site.call(
        "alice",
        Method::GET,
        "/v1/fs/fs1/store?prefix=segments/",
        b"",
    );
    let seg = &listed.body["objects"][0];
    let (key, size) = (seg["key"].as_str().unwrap(), seg["size"].as_u64().unwrap());
    let whole = site.call(
        "alice",
        Method::GET,
        &format!("/v1/fs/fs1/store/{key}"),
        b"",
    );
    assert_eq!(whole.bytes.len() as u64, size);
    let ranges_path = format!("/v1/fs/fs1/ranges/{key}");
    let asked = [(0u64, 10u64), (size - 7, size), (512, 1536)];
    let body =
        serde_json::json!({ "ranges": asked.iter().map(|(a, b)| [a, b]).collect::<Vec<_>>() });
    let a = site.call(
        "alice",
        Method::POST,
        &ranges_path,
        body.to_string().as_bytes(),
    );
    assert_eq!(a.status, 200);
    let expected: Vec<u8> = asked
        .iter()
        .flat_map(|&(s, e)| whole.bytes[s as usize..e as usize].to_vec())
        .collect();
    assert_eq!(a.bytes, expected);
    let past = serde_json::json!({ "ranges": [[0, 10], [size - 5, size + 1]] });
    let a = site.call(
        "alice",
        Method::POST,
        &ranges_path,
        past.to_string().as_bytes(),
    );
    a.expect(416, "bad_range");
    assert!(
        a.body["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("{}", size + 1))
    );
    let a = site.call(
        "alice",
        Method::POST,
        &ranges_path,
        b"{\"ranges\": [[5, 5]]}",
    );
    a.expect(416, "bad_range");
    let a = site.call("alice", Method::POST, &ranges_path, b"[1, 2]");
    a.expect(400, "bad_request");
    // More bytes than one answer may hold (16 MiB): the whole object,
    // again and again.
    let n = (16u64 << 20) / size + 1;
    let many = serde_json::json!({ "ranges": vec![[0, size]; n as usize] });
    let many = many.to_string();
    assert!(
        many.len() < MAX_BODY,
        "{n} ranges of a {size}-byte segment fit a body"
    );
    let a = site.call("alice", Method::POST, &ranges_path, many.as_bytes());
    a.expect(400, "too_many_ranges");
    // More ranges than a body of this gateway holds.
    let many = serde_json::json!({ "ranges": vec![[0, 1]; 5000] });
    let a = site.call(
        "alice",
        Method::POST,
        &ranges_path,
        many.to_string().as_bytes(),
    );
    a.expect(413, "too_large");
    let a = site.call(
        "alice",
        Method::POST,
        "/v1/fs/fs1/ranges/segments/none",
        br#"{"ranges": [[0, 1]]}"#,
    );
    a.expect(404, "missing_object");
    // A host may not read the store.
    let a = site.call(
        "host1",
        Method::POST,
        &ranges_path,
        body.to_string().as_bytes(),
    );
    a.expect(403, "denied");

    // Malicious and broken pushes are refused whole: no new snapshot, no
    // object in the store, no file written anywhere.
    let before = site.call("alice", Method::GET, "/v1/fs/fs1/snapshots", b"");
    let store_before = cbfs_tests::describe(&site.work.path("store1"), Compare::default());
    let mut truncated = tar_with_name(b"big", &[7u8; 8192]);
    truncated.truncate(512 + 1000);
    // Cut exactly at an entry's end: every header is whole, the end marker
    // is missing.
    let mut cut = tar_with_name(b"x", b"x");
    cut.truncate(1024);
    // A good entry first (it is stored while the stream goes on), then a
    // bad one: still nothing is committed.
    let mut late = tar_with_name(b"fine", &random_bytes(200_000));
    late.truncate(late.len() - 1024);
    late.extend(tar_with_name(b"../late-evil", b"x"));
    let streams: Vec<(&str, Vec<u8>)> = vec![
        ("climbs", tar_with_name(b"../../evil", b"x")),
        ("absolute", tar_with_name(b"/tmp/cbfs-gateway-evil", b"x")),
        ("truncated", truncated),
        ("cut at an entry's end", cut),
        ("a bad entry after a good one", late),
        ("not a tar", random_bytes(3000)),
    ];
    for (what, stream) in streams {
        let auth = site.auth("host1", "host1");
        let push_url = format!("{url}/v1/fs/fs1/push?prefix=/home");
        let mut request = client.put(&push_url).body(stream);
        for (name, value) in auth.headers("PUT", &push_url, None, now()).unwrap() {
            request = request.header(name, value);
        }
        let a = Site::send(request);
        assert_eq!(
            (a.status, a.code()),
            (400, Some("bad_stream")),
            "{what}: {}",
            a.body
        );
        assert!(
            a.body["reason"]
                .as_str()
                .unwrap()
                .contains("nothing was committed"),
            "{what}: {}",
            a.body
        );
    }
    assert!(!Path::new("/tmp/cbfs-gateway-evil").exists());
    assert!(!site.work.path("evil").exists() && !site.work.path("gw-state/evil").exists());
    let after = site.call("alice", Method::GET, "/v1/fs/fs1/snapshots", b"");
    assert_eq!(before.body, after.body, "a refused push made a snapshot");
    let store_after = cbfs_tests::describe(&site.work.path("store1"), Compare::default());
    assert_eq!(
        store_before, store_after,
        "a refused push wrote to the store"
    );
    // The runs' spools are gone with them.
    let spool = site.work.path("index1/spool");
    let left: Vec<_> = fs::read_dir(&spool)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "spool left behind: {left:?}");

    // A push with `tar -c . | curl -T -` style: a plain tar stream from
    // standard input through cbfs-tier push -.
    let mut tar = Command::new("tar");
    tar.arg("-C").arg(tree.join("bob")).args(["-cf", "-", "."]);
    let stream = run_ok(&mut tar).stdout;
    let out = cbfs_tests::run_ok_with_stdin(
        cbfs_cmd("cbfs-tier")
            .args(["--json", "push", "-", "--gateway", &url, "--fs", "fs1"])
            .args(["--prefix", "/home/bob2"])
            .arg("--identity")
            .arg(format!("file:{}", site.work.path("host1.key").display()))
            .arg("--user")
            .arg(site.work.path("host1.pub"))
            .envs(site.envs()),
        &stream,
    );
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["state"], "succeeded", "{record:#}");
    assert!(
        record["report"]["files"].as_u64().unwrap() >= 1,
        "{record:#}"
    );

    // A node that is down: the relay answers 503 with Retry-After, naming it.
    let a = site.call("alice", Method::GET, "/v1/fs/fs1/nodes/0/v1/node", b"");
    assert_eq!(a.status, 200, "{}", a.body);
    site.nodes[0].kill();
    let a = site.call("alice", Method::GET, "/v1/fs/fs1/nodes/0/v1/node", b"");
    a.expect(503, "node_unavailable");
    assert_eq!(a.retry_after.as_deref(), Some("5"));
    assert!(
        a.body["reason"]
            .as_str()
            .unwrap()
            .contains(&site.nodes[0].url),
        "{}",
        a.body
    );
    let a = site.call("alice", Method::GET, "/v1/fs/fs1/nodes/7/v1/node", b"");
    a.expect(404, "unknown_node");
    site.verify_audit();

    // A node that answers without end: the relay reads no more than its
    // limit (max_body) and refuses the answer, 502 too_large; the node
    // gets to send only what the sockets hold, never the whole flood.
    let flood = Flood::start(256 << 20);
    site.extra_nodes.push(flood.url.clone());
    site.gateway.take().unwrap().server.stop();
    site.write_config();
    site.start_gateway();
    let node = site.nodes.len();
    let a = site.call(
        "alice",
        Method::GET,
        &format!("/v1/fs/fs1/nodes/{node}/v1/node"),
        b"",
    );
    a.expect(502, "too_large");
    let sent = flood.wait_done(Duration::from_secs(60));
    assert!(
        sent < 32 << 20,
        "the gateway read {sent} bytes of an answer it may take {MAX_BODY} of"
    );
}

/// A node that answers every request with a chunked body of `total` bytes
/// (or until the reader hangs up), counting what it managed to send.
struct Flood {
    url: String,
    sent: Arc<std::sync::atomic::AtomicU64>,
    done: Arc<AtomicBool>,
}

impl Flood {
    fn start(total: u64) -> Flood {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (counter, finished) = (sent.clone(), done.clone());
        thread::spawn(move || {
            let Ok((conn, _)) = listener.accept() else {
                return;
            };
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let mut conn = conn;
            let chunk = vec![b' '; 64 << 10];
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
            );
            while counter.load(Ordering::SeqCst) < total {
                let framed = [
                    format!("{:x}\r\n", chunk.len()).as_bytes(),
                    &chunk[..],
                    b"\r\n",
                ]
                .concat();
                if conn.write_all(&framed).is_err() {
                    break;
                }
                counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
            let _ = conn.write_all(b"0\r\n\r\n");
            finished.store(true, Ordering::SeqCst);
        });
        Flood { url, sent, done }
    }

    /// What was sent, once the node stopped sending (the reader hung up, or
    /// all of it went).
    fn wait_done(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        while !self.done.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the flood never stopped");
            thread::sleep(Duration::from_millis(20));
        }
        self.sent.load(Ordering::SeqCst)
    }
}

/// A source tree big enough that a run takes a while.
fn big_source(dir: &Path, files: usize, size: usize) {
    for i in 0..files {
        let sub = dir.join(format!("d{:02}", i % 16));
        fs::create_dir_all(&sub).unwrap();
        fs::write(sub.join(format!("f{i:05}")), random_bytes(size)).unwrap();
    }
}

#[test]
fn a_killed_gateway_loses_nothing_and_the_next_run_completes() {
    let mut site = Site::new(true);
    let src = site.work.path("src2");
    big_source(&src, 200, 128 * 1024);
    site.start_gateway();

    // Start a run; a second request joins it.
    let started = site.start_run();
    assert_eq!(started.status, 201, "{}", started.body);
    let id = started.body["id"].as_str().unwrap().to_owned();
    let joined = site.start_run();
    assert_eq!(joined.status, 200, "{}", joined.body);
    assert_eq!(joined.body["id"], id.as_str());

    // Kill -9 once it has stored something.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let a = site.call("host1", Method::GET, &format!("/v1/fs/fs2/jobs/{id}"), b"");
        let p = &a.body["progress"];
        if p["files_stored"].as_u64().unwrap_or(0) > 0 || p["segments"].as_u64().unwrap_or(0) > 0 {
            assert_eq!(a.body["state"], "running", "{}", a.body);
            break;
        }
        assert!(
            a.body["state"] == "running" || a.body["state"] == "queued",
            "{}",
            a.body
        );
        assert!(
            Instant::now() < deadline,
            "the run never got going: {}",
            a.body
        );
        thread::sleep(Duration::from_millis(20));
    }
    site.gateway.take().unwrap().server.stop();

    // Restarted, it reports the run as interrupted.
    site.start_gateway();
    let a = site.call("host1", Method::GET, &format!("/v1/fs/fs2/jobs/{id}"), b"");
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["state"], "interrupted", "{}", a.body);
    let jobs = site.call("host1", Method::GET, "/v1/fs/fs2/jobs", b"");
    assert!(jobs.body.to_string().contains(&id), "{}", jobs.body);

    // The next run finishes the snapshot; a restore through the gateway
    // brings back the whole tree.
    let next = site.start_run();
    assert_eq!(next.status, 201, "{}", next.body);
    let next_id = next.body["id"].as_str().unwrap().to_owned();
    assert_ne!(next_id, id);
    let done = site.wait_job("fs2", &next_id);
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert!(done["report"]["snapshot"].is_string(), "{done:#}");
    let out = site.restore("fs2", "alice", ".", "restored2");
    let report = report_of(&out);
    assert!(out.status.success(), "{report:#}\n{}", text(&out.stderr));
    cbfs_tests::assert_same_tree(&src, &site.work.path("restored2"), Compare::default());

    // A run cancelled at a safe point says so, and the next one completes.
    fs::write(src.join("d00/new"), random_bytes(1 << 20)).unwrap();
    let third = site.start_run();
    let third_id = third.body["id"].as_str().unwrap().to_owned();
    let cancel = site.call(
        "host1",
        Method::DELETE,
        &format!("/v1/fs/fs2/jobs/{third_id}"),
        b"",
    );
    assert_eq!(cancel.status, 202, "{}", cancel.body);
    let ended = site.wait_job("fs2", &third_id);
    assert!(
        ended["state"] == "cancelled" || ended["state"] == "succeeded",
        "{ended:#}"
    );
    let last = site.start_run();
    let last_id = last.body["id"].as_str().unwrap().to_owned();
    let done = site.wait_job("fs2", &last_id);
    assert_eq!(done["state"], "succeeded", "{done:#}");

    // The store goes down: its readers get 503 with Retry-After naming
    // the store, within the store timeout, and a restore exits 5 (retry).
    let keys = site.call(
        "alice",
        Method::GET,
        "/v1/fs/fs2/store?prefix=keysets/",
        b"",
    );
    assert_eq!(keys.status, 200, "{}", keys.body);
    let key = keys.body["objects"][0]["key"].as_str().unwrap().to_owned();
    drop(site.s3.take());
    for path in [
        "/v1/fs/fs2/store?prefix=keysets/".to_owned(),
        format!("/v1/fs/fs2/store/{key}"),
    ] {
        let t = Instant::now();
        let a = site.call("alice", Method::GET, &path, b"");
        a.expect(503, "unavailable");
        assert_eq!(a.retry_after.as_deref(), Some("5"), "{path}");
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{path}: {:?}",
            t.elapsed()
        );
    }
    let out = site.restore("fs2", "alice", ".", "restored-down");
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));

    // SIGTERM: the gateway stops cleanly.
    let mut gw = site.gateway.take().unwrap();
    gw.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(60);
    while gw.server.exit_status().is_none() {
        assert!(
            Instant::now() < deadline,
            "no exit after SIGTERM:\n{}",
            gw.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert!(gw.server.exit_status().unwrap().success(), "{}", gw.log());
    site.verify_audit();
}

#[test]
fn sighup_reloads_under_traffic_and_a_client_certificate_authenticates_a_host() {
    let mut site = Site::new(false);
    site.start_gateway();
    site.push(&homes(&site.work), "/home");

    // A client certificate mapped to host1 needs no signature.
    let a = Site::send(
        site.client_with_certificate()
            .get(format!("{}/v1/fs/fs1/jobs", site.url())),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    // Without it, the same request is unauthenticated.
    let a = Site::send(site.client().get(format!("{}/v1/fs/fs1/jobs", site.url())));
    assert_eq!(a.status, 401, "{}", a.body);

    // carol is not configured yet.
    let a = site.call("carol", Method::GET, "/v1/fs/fs1/snapshots", b"");
    assert_eq!(a.status, 401, "{}", a.body);

    // Four clients list while the gateway reloads five times: each reload
    // waits for requests to have been served since the last one, and for
    // the gateway to say it reloaded (no clock is waited on).
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let site = Arc::new(site);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (site, stop, served) = (site.clone(), stop.clone(), served.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let a = site.call("alice", Method::GET, "/v1/fs/fs1/ls?path=/home/alice", b"");
                    assert_eq!(a.status, 200, "dropped during a reload: {}", a.body);
                    assert!(!names_in(&a.body).is_empty());
                    served.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "{what}:\n{}", site.gw().log());
            thread::sleep(Duration::from_millis(10));
        }
    };
    let said = format!("reloaded {}", site.config_path().display());
    let reloads = || site.gw().log().matches(&said).count();
    let original = fs::read_to_string(site.config_path()).unwrap();
    for i in 0..5 {
        let before = served.load(Ordering::SeqCst);
        wait_for("no request was served between reloads", &|| {
            served.load(Ordering::SeqCst) >= before + 4
        });
        if i == 2 {
            // The new configuration: carol is a user.
            fs::write(
                site.config_path(),
                format!("{original}\n[users.carol]\nkey = \"carol.pub\"\nroles = [\"user\"]\n"),
            )
            .unwrap();
        }
        site.gw().signal("HUP");
        wait_for("the gateway did not say it reloaded", &|| reloads() > i);
    }
    let before = served.load(Ordering::SeqCst);
    wait_for("no request was served after the reloads", &|| {
        served.load(Ordering::SeqCst) >= before + 4
    });
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    let log = site.gw().log();
    assert!(!log.contains("NOT reloaded"), "{log}");
    let a = site.call("carol", Method::GET, "/v1/fs/fs1/snapshots", b"");
    assert_eq!(a.status, 200, "carol after the reload: {}\n{log}", a.body);

    // A configuration that does not load is refused; the old one stays.
    fs::write(site.config_path(), "listen = \"not an address\"\n").unwrap();
    site.gw().signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !site.gw().log().contains("NOT reloaded") {
        assert!(Instant::now() < deadline, "{}", site.gw().log());
        thread::sleep(Duration::from_millis(20));
    }
    let a = site.call("carol", Method::GET, "/v1/fs/fs1/snapshots", b"");
    assert_eq!(a.status, 200, "{}", a.body);
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[test]
fn thirty_two_clients_list_and_read_while_a_run_goes() {
    let mut site = Site::new(true);
    big_source(&site.work.path("src2"), 150, 128 * 1024);
    site.start_gateway();
    site.push(&homes(&site.work), "/home");
    let expected = names_in(
        &site
            .call("alice", Method::GET, "/v1/fs/fs1/ls?path=/home/alice", b"")
            .body,
    );
    let objects = site.call("alice", Method::GET, "/v1/fs/fs1/store", b"");
    let objects: Vec<(String, u64)> = objects.body["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["key"].as_str().unwrap().to_owned(),
                o["size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(!objects.is_empty());
    let run = site.start_run();
    assert_eq!(run.status, 201, "{}", run.body);
    let run_id = run.body["id"].as_str().unwrap().to_owned();

    let site = Arc::new(site);
    let objects = Arc::new(objects);
    let expected = Arc::new(expected);
    let clients: Vec<_> = (0..32)
        .map(|i| {
            let (site, objects, expected) = (site.clone(), objects.clone(), expected.clone());
            thread::spawn(move || {
                let mut times = Vec::new();
                for j in 0..10 {
                    let t = Instant::now();
                    if (i + j) % 2 == 0 {
                        let a =
                            site.call("alice", Method::GET, "/v1/fs/fs1/ls?path=/home/alice", b"");
                        assert_eq!(a.status, 200, "{}", a.body);
                        assert_eq!(names_in(&a.body), *expected);
                    } else {
                        let (key, size) = &objects[(i * 7 + j) % objects.len()];
                        let a = site.call(
                            "alice",
                            Method::GET,
                            &format!("/v1/fs/fs1/store/{key}"),
                            b"",
                        );
                        assert_eq!(a.status, 200, "{key}: {}", a.body);
                        assert_eq!(a.bytes.len() as u64, *size, "{key}");
                        let on_disk = fs::read(site.work.path("store1").join(key)).unwrap();
                        assert_eq!(a.bytes, on_disk, "{key}");
                    }
                    times.push(t.elapsed());
                }
                times
            })
        })
        .collect();
    let mut times: Vec<Duration> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    times.sort();
    println!(
        "32 clients, {} requests during a run: p50 {:?}, p99 {:?}, max {:?}",
        times.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.last().unwrap()
    );
    let done = site.wait_job("fs2", &run_id);
    assert_eq!(done["state"], "succeeded", "{done:#}");
}
