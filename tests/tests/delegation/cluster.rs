//! n real `cbfs-delegation serve` processes on 127.0.0.1, the keys of one
//! file system made with the real `cbfs-keytool`, and the client library
//! to fetch cfrags from the nodes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::thread;
use std::time::{Duration, Instant};

use cbfs_client::{FetchError, Fetched, NodeSet, fetch_cfrags};
use cbfs_core::TEST_CLOCK_ENV;
use cbfs_core::{AdminSecret, KeySource, Keyset, ScopeLabel, Seed, Unlock, UserName, UserSecret};
use cbfs_format::{GroupKey, Lockbox, SegmentId};
use cbfs_tests::{ServerProcess, Workdir, assert_no_secret, cbfs_bin, cbfs_cmd, run_ok};
use cbfs_wire::Access;

/// The scope every test delegates.
pub const SCOPE: &str = "proj";
/// The user every test delegates to.
pub const USER: &str = "alice";

/// One `cbfs-delegation serve` process, under the harness's supervisor: it
/// is killed when the test ends, even if the test panics or is killed.
pub struct NodeProc {
    pub url: String,
    pub data: PathBuf,
    server: ServerProcess,
}

impl NodeProc {
    /// Starts a node on a port the kernel picks (it says which on its
    /// first line of output) and waits until `/healthz` answers 200.
    pub fn start(work: &Workdir, name: &str, keyset: &Path, extra: &[String]) -> NodeProc {
        let data = work.mkdir(name);
        Self::start_at(work, name, &data, "127.0.0.1:0", keyset, extra)
    }

    /// [`start`](Self::start) listening on `listen`, with the data folder
    /// `data` (for a node restarted on its address, with its state); its
    /// log is `NAME.log`.
    pub fn start_at(
        work: &Workdir,
        name: &str,
        data: &Path,
        listen: &str,
        keyset: &Path,
        extra: &[String],
    ) -> NodeProc {
        let data = data.to_path_buf();
        let log = work.path(format!("{name}.log"));
        let mut cmd = Command::new(cbfs_bin("cbfs-delegation"));
        cmd.args(["serve", "--listen", listen, "--data"])
            .arg(&data)
            .arg("--keyset")
            .arg(keyset)
            .args(extra)
            .env("RUST_LOG", "cbfs_delegation=debug,cbfs_core=debug")
            .env(TEST_CLOCK_ENV, work.path(CLOCK_FILE))
            .env_remove("CBFS_AGE_IDENTITY")
            .env_remove("CBFS_PASSPHRASE_FILE");
        let mut server = ServerProcess::spawn(name, &cmd, &log, work.root());
        let url = server.listening_url(Duration::from_secs(60));
        let mut node = NodeProc { url, data, server };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = node.server.exit_status() {
                panic!(
                    "node {name} exited with {status} during start-up:\n{}",
                    node.log_text()
                );
            }
            let health = cbfs_tests::http_client()
                .get(format!("{}/healthz", node.url))
                .timeout(Duration::from_secs(2))
                .send();
            if health.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {name} did not become healthy within 60 s:\n{}",
                node.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
        node
    }

    /// Sends `signal` (`TERM`, `HUP`, ...) to the node process itself.
    pub fn signal(&self, signal: &str) {
        self.server.signal(signal);
    }

    /// Waits for the node to exit on its own.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.server.exit_status() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not exit within {within:?}:\n{}",
                self.url,
                self.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the node at once (SIGKILL), as a crash or a pulled plug would.
    pub fn kill(&mut self) {
        self.server.stop();
    }

    pub fn log_bytes(&self) -> Vec<u8> {
        self.server.log_contents()
    }

    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&self.log_bytes()).into_owned()
    }

    pub fn audit_path(&self) -> PathBuf {
        self.data.join("audit/audit.log")
    }
}

/// A file system's keys, a user, and n nodes.
pub struct Cluster {
    pub work: Workdir,
    pub nodes: Vec<NodeProc>,
    pub keyset: Keyset,
    pub user: UserSecret,
}

/// The file, in the work folder, that moves the clock of the nodes and key
/// tools a test starts (the test suite builds them with `cbfs-core/test-clock`).
const CLOCK_FILE: &str = "clock-offset";

/// Moves the time of the nodes and key tools started in `dir` to `secs`
/// seconds after the system's: a test waits for no clock.
pub fn move_clock(dir: &Path, secs: i64) {
    std::fs::write(dir.join(CLOCK_FILE), secs.to_string()).unwrap();
}

/// A `cbfs-keytool` command in `dir`, in a clean environment.
pub fn keytool(dir: &Path) -> Command {
    let mut cmd = cbfs_cmd("cbfs-keytool");
    cmd.current_dir(dir)
        .env(TEST_CLOCK_ENV, dir.join(CLOCK_FILE));
    for var in [
        "CBFS_AGE_IDENTITY",
        "CBFS_PASSPHRASE_FILE",
        "RUST_LOG",
        "BAO_ADDR",
        "BAO_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// With the keytool in `dir`: the root secret `admin.key` of file system
/// `fs1`, its keyset `keyset.json`, and `scope` in it.
pub fn create_admin(dir: &Path, scope: &str) {
    run_ok(keytool(dir).args(words(
        "create-admin --fs fs1 --secret file:admin.key --keyset keyset.json",
    )));
    run_ok(keytool(dir).args(words(&format!(
        "add-scope --admin file:admin.key --keyset keyset.json --scope {scope}"
    ))));
}

/// `line` split on whitespace.
pub fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn load_seed(path: &Path) -> Seed {
    KeySource::File(path.to_path_buf())
        .load(&Unlock::default())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl Cluster {
    /// Keys made with the keytool, and `n` nodes started with `extra` serve
    /// arguments each.
    pub fn start(n: usize, extra: &[String]) -> Cluster {
        let work = Workdir::new();
        let kt = || keytool(work.root());
        create_admin(work.root(), SCOPE);
        run_ok(kt().args(words(&format!(
            "create-user {USER} --secret file:{USER}.key --public {USER}.pub"
        ))));
        let keyset = Keyset::load(&work.path("keyset.json")).unwrap();
        let user = UserSecret::from_seed(load_seed(&work.path(format!("{USER}.key"))));
        let nodes = (1..=n)
            .map(|i| NodeProc::start(&work, &format!("node{i}"), &work.path("keyset.json"), extra))
            .collect();
        Cluster {
            work,
            nodes,
            keyset,
            user,
        }
    }

    pub fn admin(&self) -> AdminSecret {
        AdminSecret::from_seed(load_seed(&self.work.path("admin.key")))
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }

    pub fn node_args(urls: &[String]) -> Vec<String> {
        urls.iter()
            .flat_map(|u| ["--node".to_owned(), u.clone()])
            .collect()
    }

    /// `cbfs-keytool delegate` of the scope to the user, `threshold` of the
    /// nodes, through `--node`.
    pub fn delegate_cmd(&self, threshold: u32, extra: &[&str]) -> Command {
        let mut cmd = keytool(self.work.root());
        cmd.args(words(&format!(
            "delegate --admin file:admin.key --keyset keyset.json --scope {SCOPE} --to {USER}.pub --threshold {threshold}"
        )))
        .args(Self::node_args(&self.urls()))
        .args(extra);
        cmd
    }

    pub fn delegate(&self, threshold: u32, extra: &[&str]) -> Output {
        run_ok(&mut self.delegate_cmd(threshold, extra))
    }

    pub fn revoke_cmd(&self, extra: &[&str]) -> Command {
        let mut cmd = keytool(self.work.root());
        cmd.args(words(&format!(
            "revoke --admin file:admin.key --scope {SCOPE} --user {USER}.pub"
        )))
        .args(Self::node_args(&self.urls()))
        .args(extra);
        cmd
    }

    pub fn scope_key(&self) -> cbfs_core::umbral_pre::PublicKey {
        *self.keyset.scope(&ScopeLabel::new(SCOPE).unwrap()).unwrap()
    }

    /// `n` lockboxes sealed under the scope's public key, as the write path does.
    pub fn lockboxes(&self, n: usize) -> Vec<(Lockbox, GroupKey)> {
        let pk = self.scope_key();
        (0..n)
            .map(|_| Lockbox::seal(SCOPE, &pk, SegmentId::random()).unwrap())
            .collect()
    }

    pub fn access(&self) -> Access {
        Access::from_keyset(
            &self.keyset,
            UserName::new(USER).unwrap(),
            ScopeLabel::new(SCOPE).unwrap(),
        )
        .unwrap()
    }

    /// The client library against `urls`: all at once, the first m verified
    /// (m as the delegation record says).
    pub fn fetch(
        &self,
        urls: &[String],
        path: &str,
        lockboxes: &[(Lockbox, GroupKey)],
    ) -> Result<Fetched, FetchError> {
        self.fetch_within(Duration::from_secs(60), urls, path, lockboxes)
    }

    /// [`fetch`](Self::fetch), giving each node `timeout` to answer.
    pub fn fetch_within(
        &self,
        timeout: Duration,
        urls: &[String],
        path: &str,
        lockboxes: &[(Lockbox, GroupKey)],
    ) -> Result<Fetched, FetchError> {
        let http = cbfs_tests::reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap();
        let nodes = NodeSet::new(urls)
            .unwrap()
            .with_timeout(timeout)
            .with_http_client(http);
        let capsules: Vec<_> = lockboxes.iter().map(|(l, _)| l.capsule().clone()).collect();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(fetch_cfrags(
            &nodes,
            &self.user,
            &self.access(),
            path,
            &capsules,
        ))
    }

    /// Opens every lockbox with the fetched cfrags and checks the group keys.
    pub fn open_all(&self, fetched: Fetched, lockboxes: &[(Lockbox, GroupKey)]) {
        assert_eq!(fetched.cfrags.len(), lockboxes.len());
        let sk = self.user.secret_key();
        for ((lockbox, key), cfrags) in lockboxes.iter().zip(fetched.cfrags) {
            let opened = lockbox
                .open_reencrypted(&sk, &self.scope_key(), cfrags)
                .unwrap_or_else(|e| panic!("lockbox does not open: {e}"));
            assert_eq!(opened.expose_secret(), key.expose_secret());
        }
    }

    /// Fails if a seed of this test (root, user, any node) shows up in any
    /// node's log or audit log, in any encoding.
    pub fn assert_no_secrets(&self) {
        let mut secrets = vec![
            ("root seed", fs::read(self.work.path("admin.key")).unwrap()),
            (
                "user seed",
                fs::read(self.work.path(format!("{USER}.key"))).unwrap(),
            ),
        ];
        let admin = self.admin();
        secrets.push((
            "scope seed",
            admin
                .scope(&ScopeLabel::new(SCOPE).unwrap())
                .seed()
                .expose_secret_bytes()
                .to_vec(),
        ));
        for node in &self.nodes {
            secrets.push(("node seed", fs::read(node.data.join("node.key")).unwrap()));
        }
        for node in &self.nodes {
            let audit = fs::read(node.audit_path()).unwrap_or_default();
            for (name, secret) in &secrets {
                assert_no_secret(
                    &node.log_bytes(),
                    secret,
                    &format!("log of {} ({name})", node.url),
                );
                assert_no_secret(
                    &audit,
                    secret,
                    &format!("audit log of {} ({name})", node.url),
                );
            }
        }
    }
}
