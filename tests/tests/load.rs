//! The delegation nodes and the gateway under a bounded loopback load, with
//! a node killed: three real `cbfs-delegation serve` nodes holding a 2-of-3
//! delegation of one scope to each of 64 users, a store of tiered files
//! pushed through a real `cbfs-gateway` over TLS, and 64 users, one thread
//! each, working for [`LOAD`] (ten minutes in the `#[ignore]`d longer
//! run) without pause:
//!
//! - re-encryption of their own lockboxes' capsules by the nodes directly
//!   (the client library: signed requests, cfrags verified against the
//!   delegation's verifying keys), each lockbox opened and its file key
//!   compared with the one it was sealed with;
//! - the same through the gateway's node relay, signed as the user;
//! - a listing of the pushed folder on the gateway, compared with the tree;
//! - a restore of one pushed file through the gateway with the real
//!   `cbfs-tier restore` (at most [`RESTORES_AT_ONCE`] at a time), its
//!   bytes compared with the original.
//!
//! A third of the way in, one node is killed with SIGKILL; [`DOWN_FOR`]
//! later it is started again on the same address with the same data
//! folder (its RocksDB and audit log reopened after the kill). Every answer
//! is right or a typed error of an expected kind (the dead node down, its
//! relay unavailable, a node too slow under the load), counted; work goes
//! on through the two other nodes while one is dead, and through all three
//! after. Afterwards `cbfs-delegation audit verify` passes on every node
//! (on the killed node's log right after the kill, too) and `cbfs-gateway
//! audit verify` on the gateway's.
//! The figures (requests, per second, p50/p99, errors by kind) are printed.

#![forbid(unsafe_code)]

#[allow(dead_code)]
#[path = "delegation/cluster.rs"]
mod cluster;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cbfs_client::{FetchError, GatewayAuth, NodeProblem, NodeSet, fetch_cfrags};
use cbfs_core::umbral_pre::PublicKey;
use cbfs_core::{KeySource, Keyset, ScopeLabel, Unlock, UserName, UserSecret};
use cbfs_format::{GroupKey, Lockbox, SegmentId};
use cbfs_tests::reqwest;
use cbfs_tests::tls::ServerTls;
use cbfs_tests::{ServerProcess, Workdir, cbfs_bin, cbfs_cmd, free_port, random_bytes, run_ok};
use cbfs_wire::Access;
use cluster::{NodeProc, keytool, text, words};
use serde_json::Value;

/// How long the users work (the test of the test command).
const LOAD: Duration = Duration::from_secs(60);
/// How long they work in the longer run.
const LONG_LOAD: Duration = Duration::from_secs(600);
/// How long the killed node stays dead before it is started again.
const DOWN_FOR: Duration = Duration::from_secs(5);
/// Concurrent users, each with its own key and delegation.
const USERS: usize = 64;
/// Lockboxes each user holds; a request asks for [`CAPSULES`] of them.
const LOCKBOXES: usize = 6;
const CAPSULES: usize = 3;
/// Restores (`cbfs-tier` processes) running at once, at most: each is a
/// process of its own, and the machine may have two cores.
const RESTORES_AT_ONCE: usize = 2;
/// Files pushed through the gateway, listed and restored.
const FILES: usize = 6;
/// The scope delegated to every user, and where its files lie.
const SCOPE: &str = "proj";
const FOLDER: &str = "data";
/// Which node is killed (0-based).
const VICTIM: usize = 1;
/// How long one node (or the relay to it) gets to answer one request.
const NODE_TIMEOUT: Duration = Duration::from_secs(30);
/// No restore starts later than this before the end of the load (a
/// restore through the busy gateway may take half a minute).
const RESTORE_TAIL: Duration = Duration::from_secs(30);
/// Requests that may fail for a node that was too slow (a timeout, on a
/// machine shared with other work), at most, in percent: counted, never a
/// wrong answer, but more would mean the load is not bounded.
const TIMEOUTS_PERCENT: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    /// Re-encryption by the nodes, asked directly.
    Nodes,
    /// Re-encryption through the gateway's relay.
    Relay,
    /// A listing on the gateway.
    List,
    /// A restore of one file through the gateway.
    Restore,
}

/// What one request came to.
struct Outcome {
    op: Op,
    started: Instant,
    ended: Instant,
    /// `Ok` for a right answer; the error's kind for an expected error.
    result: Result<(), String>,
    /// Nodes that did not help a fetch that succeeded, by kind.
    absorbed: Vec<String>,
}

/// Everything the users share: read-only but for the restore slots and
/// the stop flag.
struct Shared {
    work: PathBuf,
    gateway: String,
    nodes: Vec<String>,
    ca_pem: Vec<u8>,
    ca_file: PathBuf,
    keyset: Keyset,
    scope_pk: PublicKey,
    /// The pushed files: name under the folder, bytes.
    files: Vec<(String, Vec<u8>)>,
    /// The listing of the folder, as the gateway gave it before the load.
    listing: Vec<String>,
    restores: AtomicUsize,
    stop: AtomicBool,
    /// Answers that were wrong, or errors of a kind that must not happen.
    wrong: Mutex<Vec<String>>,
}

fn user_name(u: usize) -> String {
    format!("u{u:02}")
}

fn load_user(path: &Path) -> UserSecret {
    UserSecret::from_seed(
        KeySource::File(path.to_path_buf())
            .load(&Unlock::default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
}

/// Runs `job(i)` for every `i` below `n` on `threads` threads.
fn in_parallel(n: usize, threads: usize, job: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    job(i);
                }
            });
        }
    });
}

/// The kind of a node's failure, for counting.
fn problem_kind(problem: &NodeProblem) -> String {
    match problem {
        NodeProblem::Down(_) => "down".into(),
        NodeProblem::Timeout(_) => "timeout".into(),
        NodeProblem::Refused { code, .. } => format!("refused {code}"),
        NodeProblem::Lied(_) => "LIED".into(),
        NodeProblem::Duplicate(_) => "duplicate".into(),
        NodeProblem::Protocol(_) => "protocol".into(),
        _ => "other".into(),
    }
}

/// Whether a node failure is what a dead (or restarting) node, asked
/// directly or through the relay, may cause.
fn expected_kind(kind: &str) -> bool {
    matches!(kind, "down" | "timeout" | "refused node_unavailable")
}

/// One user's keys, lockboxes and clients.
struct User {
    name: String,
    secret: UserSecret,
    access: Access,
    lockboxes: Vec<(Lockbox, GroupKey)>,
    http: reqwest::Client,
    auth: GatewayAuth,
    direct: NodeSet,
    relayed: NodeSet,
}

impl User {
    fn new(shared: &Shared, u: usize) -> User {
        let name = user_name(u);
        let secret = load_user(&shared.work.join(format!("{name}.key")));
        let access = Access::from_keyset(
            &shared.keyset,
            UserName::new(&name).unwrap(),
            ScopeLabel::new(SCOPE).unwrap(),
        )
        .unwrap();
        let lockboxes = (0..LOCKBOXES)
            .map(|_| Lockbox::seal(SCOPE, &shared.scope_pk, SegmentId::random()).unwrap())
            .collect();
        let http = reqwest::Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&shared.ca_pem).unwrap())
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let auth = GatewayAuth::new(UserName::new(&name).unwrap(), secret.signer());
        let direct = NodeSet::new(&shared.nodes)
            .unwrap()
            .with_timeout(NODE_TIMEOUT)
            .with_http_client(http.clone());
        let relayed = NodeSet::new(
            (0..shared.nodes.len()).map(|i| format!("{}/v1/fs/fs1/nodes/{i}", shared.gateway)),
        )
        .unwrap()
        .with_timeout(NODE_TIMEOUT)
        .with_http_client(http.clone())
        .with_gateway_auth(auth.clone());
        User {
            name,
            secret,
            access,
            lockboxes,
            http,
            auth,
            direct,
            relayed,
        }
    }

    /// Re-encryption of `CAPSULES` lockboxes from `at` on, through `nodes`:
    /// every lockbox opened with the verified cfrags, its key compared.
    async fn unlock(
        &self,
        shared: &Shared,
        relayed: bool,
        at: usize,
    ) -> (Result<(), String>, Vec<String>) {
        let boxes: Vec<&(Lockbox, GroupKey)> = (0..CAPSULES)
            .map(|k| &self.lockboxes[(at + k) % LOCKBOXES])
            .collect();
        let capsules: Vec<_> = boxes.iter().map(|(l, _)| l.capsule().clone()).collect();
        let nodes = if relayed { &self.relayed } else { &self.direct };
        let via = if relayed { "relay" } else { "nodes" };
        let path = format!("/{FOLDER}/");
        match fetch_cfrags(nodes, &self.secret, &self.access, &path, &capsules).await {
            Ok(fetched) => {
                let absorbed: Vec<String> = fetched
                    .failures
                    .iter()
                    .map(|f| problem_kind(&f.problem))
                    .collect();
                if let Some(bad) = absorbed.iter().find(|k| !expected_kind(k)) {
                    shared.flag(format!(
                        "{} ({via}): a fetch succeeded past a node that failed unexpectedly ({bad}): {:?}",
                        self.name, fetched.failures
                    ));
                }
                if fetched.cfrags.len() != boxes.len() {
                    shared.flag(format!(
                        "{} ({via}): {} capsules asked, cfrags for {}",
                        self.name,
                        boxes.len(),
                        fetched.cfrags.len()
                    ));
                    return (Ok(()), absorbed);
                }
                let sk = self.secret.secret_key();
                for ((lockbox, key), cfrags) in boxes.iter().zip(fetched.cfrags) {
                    match lockbox.open_reencrypted(&sk, &shared.scope_pk, cfrags) {
                        Ok(opened) if opened.expose_secret() == key.expose_secret() => {}
                        Ok(_) => shared.flag(format!(
                            "{} ({via}): a lockbox opened to the WRONG file key",
                            self.name
                        )),
                        Err(e) => shared.flag(format!(
                            "{} ({via}): verified cfrags do not open the lockbox: {e}",
                            self.name
                        )),
                    }
                }
                (Ok(()), absorbed)
            }
            Err(e) => {
                let kinds: Vec<String> = e
                    .failures()
                    .iter()
                    .map(|f| problem_kind(&f.problem))
                    .collect();
                if !matches!(e, FetchError::NotEnoughNodes { .. })
                    || kinds.is_empty()
                    || !kinds.iter().all(|k| expected_kind(k))
                {
                    shared.flag(format!("{} ({via}): {e}", self.name));
                }
                let mut kinds = kinds;
                kinds.sort();
                kinds.dedup();
                (
                    Err(format!("{via}: too few nodes ({})", kinds.join(", "))),
                    Vec::new(),
                )
            }
        }
    }

    /// The folder's listing on the gateway, compared with the one taken
    /// before the load.
    async fn list(&self, shared: &Shared) -> Result<(), String> {
        let url = format!("{}/v1/fs/fs1/ls?path=/{FOLDER}", shared.gateway);
        let request = self
            .auth
            .sign(self.http.get(&url), "GET", &url, Some(b""), now())
            .unwrap();
        let response = match request.timeout(NODE_TIMEOUT).send().await {
            Ok(r) => r,
            Err(e) => {
                shared.flag(format!(
                    "{}: the gateway did not answer a listing: {e}",
                    self.name
                ));
                return Err("list: gateway unreachable".into());
            }
        };
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status != 200 {
            shared.flag(format!("{}: listing answered {status}: {body}", self.name));
            return Err(format!("list: {status}"));
        }
        if names_in(&body) != shared.listing {
            shared.flag(format!(
                "{}: WRONG listing: {body}, expected {:?}",
                self.name, shared.listing
            ));
        }
        Ok(())
    }

    /// `cbfs-tier restore` of pushed file `k` through the gateway, as this
    /// user with their own key; the bytes compared with the original.
    fn restore(&self, shared: &Shared, k: usize, round: usize) -> Result<(), String> {
        let (name, original) = &shared.files[k];
        let dest = shared.work.join(format!("restored/{}-{round}", self.name));
        let out = cbfs_tests::run(
            cbfs_cmd("cbfs-tier")
                .args(["--json", "restore", "--store"])
                .arg(format!("{}/v1/fs/fs1", shared.gateway))
                .arg("--identity")
                .arg(format!(
                    "file:{}",
                    shared.work.join(format!("{}.key", self.name)).display()
                ))
                .arg("--user")
                .arg(shared.work.join(format!("{}.pub", self.name)))
                .arg("--keyset")
                .arg(shared.work.join("keyset.json"))
                .args(["--node-timeout", &NODE_TIMEOUT.as_secs().to_string()])
                .arg(format!("{FOLDER}/{name}"))
                .arg(&dest)
                .env("CBFS_CA_FILE", &shared.ca_file),
        );
        let stderr = text(&out.stderr);
        let result = if !out.status.success()
            && (stderr.contains("did not answer within") || stderr.contains("timed out"))
        {
            // Too slow under the load: counted with the timeouts.
            Err(format!("restore: exit {:?}, timeout", out.status.code()))
        } else if !out.status.success() {
            shared.flag(format!(
                "{}: restore of {FOLDER}/{name} failed ({}): {}",
                self.name, out.status, stderr
            ));
            Err(format!("restore: exit {:?}", out.status.code()))
        } else {
            let got = fs::read(dest.join(FOLDER).join(name)).or_else(|_| fs::read(dest.join(name)));
            match got {
                Ok(bytes) if bytes == *original => {}
                Ok(_) => shared.flag(format!(
                    "{}: restore of {FOLDER}/{name} gave WRONG bytes",
                    self.name
                )),
                Err(e) => shared.flag(format!(
                    "{}: restore of {FOLDER}/{name} said it succeeded, but the file is not there ({e}): {}",
                    self.name,
                    text(&out.stdout)
                )),
            }
            Ok(())
        };
        let _ = fs::remove_dir_all(&dest);
        result
    }

    /// Works until the stop flag is set; one outcome per request.
    /// Restores start only before `restores_until`.
    fn work(&self, shared: &Shared, u: usize, restores_until: Instant) -> Vec<Outcome> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut outcomes = Vec::new();
        let mut round = u;
        while !shared.stop.load(Ordering::Relaxed) {
            round += 1;
            let mut op = match round % 4 {
                0 => Op::Nodes,
                1 => Op::Relay,
                2 => Op::List,
                _ => Op::Restore,
            };
            let restore_slot = op == Op::Restore
                && Instant::now() < restores_until
                && shared
                    .restores
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < RESTORES_AT_ONCE).then_some(n + 1)
                    })
                    .is_ok();
            if op == Op::Restore && !restore_slot {
                op = Op::Nodes;
            }
            let started = Instant::now();
            let (result, absorbed) = match op {
                Op::Nodes => runtime.block_on(self.unlock(shared, false, round)),
                Op::Relay => runtime.block_on(self.unlock(shared, true, round)),
                Op::List => (runtime.block_on(self.list(shared)), Vec::new()),
                Op::Restore => {
                    let r = self.restore(shared, round % FILES, round);
                    shared.restores.fetch_sub(1, Ordering::AcqRel);
                    (r, Vec::new())
                }
            };
            outcomes.push(Outcome {
                op,
                started,
                ended: Instant::now(),
                result,
                absorbed,
            });
        }
        outcomes
    }
}

impl Shared {
    fn flag(&self, what: String) {
        eprintln!("WRONG: {what}");
        self.wrong.lock().unwrap().push(what);
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn names_in(listing: &Value) -> Vec<String> {
    let mut names: Vec<String> = listing
        .as_array()
        .unwrap_or_else(|| panic!("not a listing: {listing}"))
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `cbfs-delegation audit verify DATA` must pass: its report.
fn verify_node_audit(data: &Path) -> String {
    let out = run_ok(
        cbfs_cmd("cbfs-delegation")
            .args(["audit", "verify"])
            .arg(data),
    );
    let said = text(&out.stdout);
    assert!(said.contains("chain intact"), "{said}{}", text(&out.stderr));
    said.trim().to_owned()
}

/// The gateway, over TLS, in front of the store and the nodes.
struct Gateway {
    server: ServerProcess,
    url: String,
}

impl Gateway {
    fn start(work: &Workdir, tls: &ServerTls) -> Gateway {
        let mut cmd = Command::new(cbfs_bin("cbfs-gateway"));
        cmd.arg("serve")
            .arg("--config")
            .arg(work.path("gateway.toml"))
            .env("RUST_LOG", "cbfs_gateway=info,cbfs_tiering=info")
            .env("CBFS_CA_FILE", &tls.ca);
        let mut server =
            ServerProcess::spawn("gateway", &cmd, &work.path("gateway.log"), work.root());
        let url = server.listening_url(Duration::from_secs(60));
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&tls.ca_pem()).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !client
            .get(format!("{url}/readyz"))
            .send()
            .is_ok_and(|r| r.status() == 200)
        {
            if let Some(status) = server.exit_status() {
                panic!(
                    "the gateway exited with {status}:\n{}",
                    text(&server.log_contents())
                );
            }
            assert!(
                Instant::now() < deadline,
                "the gateway was not ready within 60 s:\n{}",
                text(&server.log_contents())
            );
            thread::sleep(Duration::from_millis(50));
        }
        Gateway { server, url }
    }

    /// Stops the gateway with SIGTERM and waits for it to exit cleanly.
    fn stop(&mut self) {
        self.server.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.server.exit_status() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not stop within 30 s:\n{}",
                text(&self.server.log_contents())
            );
            thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "the gateway exited with {status}:\n{}",
            text(&self.server.log_contents())
        );
    }
}

/// The gateway's configuration: host1 pushes, every user lists and
/// restores the folder, the scope `proj` covers it, the three nodes.
fn gateway_config(work: &Workdir, tls: &ServerTls, nodes: &[String]) {
    let mut c = format!(
        r#"listen = "127.0.0.1:0"
state = "gw-state"

[tls]
cert = {cert:?}
key = {key:?}

[limits]
max_wait_secs = 120
store_timeout_secs = 20

[users.host1]
key = "host1.pub"
roles = ["host"]
"#,
        cert = tls.cert,
        key = tls.key,
    );
    for u in 0..USERS {
        let name = user_name(u);
        c.push_str(&format!(
            "\n[users.{name}]\nkey = \"{name}.pub\"\nroles = [\"user\"]\nhomes = {{ fs1 = [\"/{FOLDER}\"] }}\n"
        ));
    }
    let nodes: Vec<String> = nodes.iter().map(|u| format!("{u:?}")).collect();
    c.push_str(&format!(
        r#"
[fs.fs1]
store = "store1"
index = "index1"
keyset = "keyset.json"
scopes = ["{FOLDER}/**={SCOPE}"]
writer_key = "file:writer.key"
nodes = [{}]
"#,
        nodes.join(", ")
    ));
    fs::write(work.path("gateway.toml"), c).unwrap();
}

/// Per-op figures: requests, successes, p50 and p99 of all.
fn op_line(outcomes: &[&Outcome]) -> String {
    let mut times: Vec<Duration> = outcomes.iter().map(|o| o.ended - o.started).collect();
    times.sort();
    format!(
        "{} ({} ok), p50 {:.0?}, p99 {:.0?}",
        outcomes.len(),
        outcomes.iter().filter(|o| o.result.is_ok()).count(),
        percentile(&times, 0.5),
        percentile(&times, 0.99)
    )
}

#[test]
fn sixty_four_users_load_the_nodes_and_the_gateway_while_a_node_is_killed() {
    run_load(LOAD);
}

#[test]
#[ignore = "ten minutes of load: run on its own"]
fn sixty_four_users_load_the_nodes_and_the_gateway_for_ten_minutes_while_a_node_is_killed() {
    run_load(LONG_LOAD);
}

/// The whole test: setup, `load` of work with a node killed a third of the
/// way in, the checks and the figures.
fn run_load(load: Duration) {
    let kill_at = load / 3;
    let work = Workdir::new();
    let kt = || keytool(work.root());
    cluster::create_admin(work.root(), SCOPE);
    for user in ["host1", "writer"] {
        run_ok(kt().args(words(&format!(
            "create-user {user} --secret file:{user}.key --public {user}.pub"
        ))));
    }
    run_ok(kt().args(words(
        "add-writer --admin file:admin.key --keyset keyset.json --public writer.pub",
    )));

    // Three nodes on addresses of their own (the killed one comes back on
    // its address).
    let keyset_path = work.path("keyset.json");
    let mut nodes: Vec<NodeProc> = (0..3)
        .map(|i| {
            let name = format!("node{}", i + 1);
            let data = work.mkdir(&name);
            let listen = format!("127.0.0.1:{}", free_port());
            NodeProc::start_at(&work, &name, &data, &listen, &keyset_path, &[])
        })
        .collect();
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();

    // 64 users, each with a key pair and a 2-of-3 delegation of the scope.
    let setup = Instant::now();
    in_parallel(USERS, 4, |u| {
        let name = user_name(u);
        run_ok(kt().args(words(&format!(
            "create-user {name} --secret file:{name}.key --public {name}.pub"
        ))));
        let mut delegate = kt();
        delegate
            .args(words(&format!(
                "delegate --admin file:admin.key --keyset keyset.json --scope {SCOPE} --to {name}.pub --threshold 2"
            )))
            .args(cluster::Cluster::node_args(&urls));
        run_ok(&mut delegate);
    });
    eprintln!(
        "{USERS} users created and delegated in {:?}",
        setup.elapsed()
    );

    // The gateway over TLS, and a tree pushed through it by the host.
    let tls = ServerTls::make(&work.path("tls"));
    gateway_config(&work, &tls, &urls);
    let mut gateway = Gateway::start(&work, &tls);
    let src = work.mkdir(format!("src/{FOLDER}"));
    let files: Vec<(String, Vec<u8>)> = (0..FILES)
        .map(|i| {
            let name = format!("file-{i}");
            let bytes = random_bytes(1000 + 7000 * i);
            fs::write(src.join(&name), &bytes).unwrap();
            (name, bytes)
        })
        .collect();
    let out = run_ok(
        cbfs_cmd("cbfs-tier")
            .args(["--json", "push"])
            .arg(&src)
            .args(["--gateway", &gateway.url, "--fs", "fs1", "--prefix"])
            .arg(format!("/{FOLDER}"))
            .arg("--identity")
            .arg(format!("file:{}", work.path("host1.key").display()))
            .arg("--user")
            .arg(work.path("host1.pub"))
            .env("CBFS_CA_FILE", &tls.ca),
    );
    let pushed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pushed["state"], "succeeded", "{pushed:#}");
    assert_eq!(pushed["report"]["files"], FILES as u64, "{pushed:#}");

    let keyset = Keyset::load(&keyset_path).unwrap();
    let scope_pk = *keyset.scope(&ScopeLabel::new(SCOPE).unwrap()).unwrap();
    let mut shared = Shared {
        work: work.root().to_path_buf(),
        gateway: gateway.url.clone(),
        nodes: urls.clone(),
        ca_pem: tls.ca_pem(),
        ca_file: tls.ca.clone(),
        keyset,
        scope_pk,
        files,
        listing: Vec::new(),
        restores: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        wrong: Mutex::new(Vec::new()),
    };
    // The listing every user must see: each pushed file, nothing else.
    let first = User::new(&shared, 0);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let url = format!("{}/v1/fs/fs1/ls?path=/{FOLDER}", gateway.url);
    let listing: Value = runtime.block_on(async {
        first
            .auth
            .sign(first.http.get(&url), "GET", &url, Some(b""), now())
            .unwrap()
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    // A restore alone, as the baseline of the restores under load.
    let alone = Instant::now();
    first.restore(&shared, 0, 0).unwrap();
    let alone = alone.elapsed();
    drop((first, runtime));
    let listing = names_in(&listing);
    for (name, _) in &shared.files {
        assert!(
            listing.contains(&format!("{FOLDER}/{name}")),
            "{name} not listed: {listing:?}"
        );
    }
    shared.listing = listing;
    assert!(
        shared.wrong.lock().unwrap().is_empty(),
        "the restore before the load went wrong"
    );
    eprintln!("one restore through the gateway, before the load: {alone:?}");
    let shared = Arc::new(shared);

    // The load: 64 users, one thread each.
    let t0 = Instant::now();
    let restores_until = t0 + load.saturating_sub(RESTORE_TAIL);
    let users: Vec<_> = (0..USERS)
        .map(|u| {
            let shared = shared.clone();
            thread::Builder::new()
                .name(user_name(u))
                .spawn(move || User::new(&shared, u).work(&shared, u, restores_until))
                .unwrap()
        })
        .collect();

    // The kill: SIGKILL, no warning; then the same node again.
    thread::sleep(kill_at.saturating_sub(t0.elapsed()));
    let victim_url = urls[VICTIM].clone();
    let victim_data = nodes[VICTIM].data.clone();
    nodes[VICTIM].signal("KILL");
    let status = nodes[VICTIM].wait_exit(Duration::from_secs(10));
    let killed = Instant::now();
    // The supervisor exits with the server's status: 128 + SIGKILL.
    assert_eq!(status.code(), Some(137), "not killed by SIGKILL: {status}");
    // The log the kill left behind verifies as it is.
    let after_kill = verify_node_audit(&victim_data);
    eprintln!(
        "killed node {victim_url} at {:?}: {after_kill}",
        killed - t0
    );
    thread::sleep(DOWN_FOR);
    let listen = victim_url.trim_start_matches("http://").to_owned();
    let restarted = NodeProc::start_at(
        &work,
        &format!("node{}-restarted", VICTIM + 1),
        &victim_data,
        &listen,
        &keyset_path,
        &[],
    );
    let back = Instant::now();
    assert_eq!(restarted.url, victim_url);
    eprintln!(
        "node {victim_url} back after {:?} down (restart took {:?})",
        back - killed,
        back - killed - DOWN_FOR
    );
    nodes[VICTIM] = restarted;

    thread::sleep(load.saturating_sub(t0.elapsed()));
    shared.stop.store(true, Ordering::Relaxed);
    let outcomes: Vec<Outcome> = users
        .into_iter()
        .flat_map(|t| t.join().expect("a user thread panicked"))
        .collect();
    let elapsed = t0.elapsed();

    // The restarted node did work again.
    let metrics = cbfs_tests::http_client()
        .get(format!("{victim_url}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let reencrypted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cbfs_delegation_capsules_reencrypted_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);

    // Every node stops, and its audit log verifies; the gateway's too.
    for node in &mut nodes {
        node.signal("TERM");
        assert!(
            node.wait_exit(Duration::from_secs(30)).success(),
            "{}",
            node.log_text()
        );
    }
    let audits: Vec<String> = nodes.iter().map(|n| verify_node_audit(&n.data)).collect();
    gateway.stop();
    let gw_audit = run_ok(
        cbfs_cmd("cbfs-gateway")
            .args(["audit", "verify"])
            .arg(work.path("gw-state/audit")),
    );
    let gw_said = text(&gw_audit.stdout) + &text(&gw_audit.stderr);
    assert!(gw_said.contains("intact"), "{gw_said}");
    drop(gateway);

    // The figures.
    let mut times: Vec<Duration> = outcomes.iter().map(|o| o.ended - o.started).collect();
    times.sort();
    let ok = outcomes.iter().filter(|o| o.result.is_ok()).count();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut absorbed: BTreeMap<String, usize> = BTreeMap::new();
    for o in &outcomes {
        if let Err(kind) = &o.result {
            *errors.entry(kind.clone()).or_default() += 1;
        }
        for kind in &o.absorbed {
            *absorbed
                .entry(format!("{:?}: {kind}", o.op).to_lowercase())
                .or_default() += 1;
        }
    }
    let during = |o: &&Outcome| o.started >= killed && o.ended <= back;
    let outage_ok: Vec<&Outcome> = outcomes
        .iter()
        .filter(during)
        .filter(|o| o.result.is_ok())
        .collect();
    let after_ok = outcomes
        .iter()
        .filter(|o| o.started >= back && o.result.is_ok())
        .count();
    eprintln!(
        "load: {USERS} users, {} requests in {:.1} s ({:.1}/s), {ok} right, p50 {:.0?}, p99 {:.0?}, max {:.0?}; errors {errors:?}; node failures absorbed {absorbed:?}; {} right during the {:.1} s outage, {after_ok} after the restart; restarted node re-encrypted {reencrypted} capsules",
        outcomes.len(),
        elapsed.as_secs_f64(),
        outcomes.len() as f64 / elapsed.as_secs_f64(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.last().copied().unwrap_or_default(),
        outage_ok.len(),
        (back - killed).as_secs_f64(),
    );
    for op in [Op::Nodes, Op::Relay, Op::List, Op::Restore] {
        let of: Vec<&Outcome> = outcomes.iter().filter(|o| o.op == op).collect();
        eprintln!("  {op:?}: {}", op_line(&of));
    }
    for said in &audits {
        eprintln!("  {said}");
    }

    let wrong = shared.wrong.lock().unwrap();
    assert!(
        wrong.is_empty(),
        "{} wrong answers or unexpected errors, the first: {:#?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert_eq!(ok + errors.values().sum::<usize>(), outcomes.len());
    // With 2 of 3 nodes up, nothing fails for want of reachable nodes:
    // a failed fetch names a node too slow under the load, or it is a bug
    // (the client did not fall back, or a live node was unreachable).
    let unreachable: Vec<&String> = errors.keys().filter(|k| !k.contains("timeout")).collect();
    assert!(
        unreachable.is_empty(),
        "requests failed although two nodes were up: {errors:?}"
    );
    assert!(
        errors.values().sum::<usize>() * 100 <= outcomes.len() * TIMEOUTS_PERCENT,
        "too many requests timed out: {errors:?} of {}",
        outcomes.len()
    );
    assert!(
        outcomes.len() >= USERS * 4,
        "only {} requests in {elapsed:?}",
        outcomes.len()
    );
    for op in [Op::Nodes, Op::Relay, Op::List, Op::Restore] {
        assert!(
            outcomes.iter().any(|o| o.op == op && o.result.is_ok()),
            "no {op:?} request succeeded"
        );
    }
    // While the node was dead, the users went on through the two others,
    // past the dead one (asked and found down, directly and through the relay).
    for op in [Op::Nodes, Op::Relay] {
        assert!(
            outage_ok.iter().any(|o| o.op == op),
            "no {op:?} request succeeded while the node was dead"
        );
    }
    assert!(
        absorbed.keys().any(|k| k.starts_with("nodes: down")),
        "no direct request found the dead node down: {absorbed:?}"
    );
    assert!(
        absorbed
            .keys()
            .any(|k| k == "relay: refused node_unavailable"),
        "no relayed request found the dead node unavailable: {absorbed:?}"
    );
    assert!(
        after_ok > 0,
        "no request succeeded after the node came back"
    );
    assert!(
        reencrypted > 0,
        "the restarted node re-encrypted nothing:\n{metrics}"
    );
    // The restarted node's audit log holds the entries of both lives.
    let entries = |said: &str| -> u64 {
        said.split(": ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no entry count in `{said}`"))
    };
    assert!(
        entries(&audits[VICTIM]) > entries(&after_kill),
        "{after_kill} / {}",
        audits[VICTIM]
    );
}
