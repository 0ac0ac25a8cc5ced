//! A real distributed object store on 127.0.0.1: a one-machine Ceph
//! cluster (one monitor, one manager, one OSD on `memstore`) with radosgw,
//! its S3 gateway, on the beast frontend.
//!
//! Every daemon runs in the foreground under the harness's supervisor
//! ([`ServerProcess`]), so it is killed when the [`CephServer`] is dropped,
//! also when the test panics, and when the test process dies outright; the
//! cluster's directory (configuration, keyrings, logs, the monitor's store)
//! is then removed. The OSD keeps its objects in memory (`memstore`, capped
//! at [`MEMSTORE_BYTES`]), so nothing is written to disk but small logs.

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::blocking::Client;
use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use crate::bins::require_tool;
use crate::net::{free_port, http_client, loopback, poll_http};
use crate::process::ServerProcess;
use crate::s3::{element, encode_path, list_pages, s3_envs, xml_unescape};

/// How long radosgw may take to answer after the daemons were started
/// (it waits for the OSD and creates its pools first).
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long one administrative command (`ceph`, `radosgw-admin`) may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);
const START_ATTEMPTS: usize = 2;
/// The OSD's memory store is capped at this many bytes.
pub const MEMSTORE_BYTES: u64 = 1 << 30;

/// Install hint for the Ceph programs.
const HINT: &str = "`apt-get install ceph-mon ceph-osd ceph-mgr radosgw ceph-common`";

/// A one-machine Ceph cluster with radosgw (S3) on 127.0.0.1, and an S3
/// user of its own. Starts in about 20 s; give a test one cluster and a
/// bucket per case.
///
/// Unlike `moto_server`, radosgw checks every request's SigV4 signature,
/// so the inspection methods here sign theirs.
///
/// ```no_run
/// let ceph = cbfs_tests::CephServer::start();
/// ceph.create_bucket("archive");
/// ceph.put_object("archive", "a/b", b"bytes");
/// assert_eq!(ceph.list_objects("archive"), vec![("a/b".to_string(), 5)]);
/// ```
pub struct CephServer {
    addr: SocketAddr,
    access_key: String,
    secret_key: String,
    client: Client,
    conf: PathBuf,
    started_in: Duration,
    // Stopped in reverse order of start (radosgw first, the monitor last),
    // then the directory goes.
    daemons: Vec<ServerProcess>,
    _dir: TempDir,
}

/// The programs a cluster needs, found on `PATH`.
struct Tools {
    ceph: PathBuf,
    authtool: PathBuf,
    monmaptool: PathBuf,
    mon: PathBuf,
    osd: PathBuf,
    mgr: PathBuf,
    radosgw: PathBuf,
    radosgw_admin: PathBuf,
}

impl Tools {
    fn find() -> Tools {
        Tools {
            ceph: require_tool("ceph", HINT),
            authtool: require_tool("ceph-authtool", HINT),
            monmaptool: require_tool("monmaptool", HINT),
            mon: require_tool("ceph-mon", HINT),
            osd: require_tool("ceph-osd", HINT),
            mgr: require_tool("ceph-mgr", HINT),
            radosgw: require_tool("radosgw", HINT),
            radosgw_admin: require_tool("radosgw-admin", HINT),
        }
    }
}

impl CephServer {
    /// Creates and starts a cluster in a fresh temporary directory, with
    /// the monitor and radosgw on free 127.0.0.1 ports; waits until radosgw
    /// answers HTTP and creates an S3 user with random keys.
    ///
    /// # Panics
    ///
    /// If a Ceph program is missing (the message says which packages bring
    /// them), or the cluster does not come up; the message then carries the
    /// end of each daemon's log.
    pub fn start() -> CephServer {
        let tools = Tools::find();
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            match CephServer::try_start(&tools) {
                Ok(server) => return server,
                Err(e) => {
                    let retry = e.contains("Address already in use");
                    failures.push(format!("attempt {attempt}: {e}"));
                    if !retry {
                        break;
                    }
                }
            }
        }
        panic!("the Ceph cluster did not start:\n{}", failures.join("\n"));
    }

    fn try_start(tools: &Tools) -> Result<CephServer, String> {
        let began = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("cbfs-ceph-")
            .tempdir()
            .map_err(|e| format!("cannot create a directory for the cluster: {e}"))?;
        let root = dir.path().to_path_buf();
        for sub in [
            "run",
            "log",
            "mon/ceph-a",
            "osd/ceph-0",
            "mgr/ceph-x",
            "rgw",
        ] {
            fs::create_dir_all(root.join(sub))
                .map_err(|e| format!("cannot create {}: {e}", root.join(sub).display()))?;
        }
        let fsid = uuid();
        let mon_port = free_port();
        let rgw_port = free_port();
        let conf = root.join("ceph.conf");
        fs::write(&conf, config(&root, &fsid, mon_port, rgw_port))
            .map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
        let keyring = root.join("keyring");
        let admin = Admin {
            tools,
            conf: &conf,
            logs: root.join("log"),
        };

        admin.run(
            Command::new(&tools.authtool)
                .arg("--create-keyring")
                .arg(&keyring)
                .args(["--gen-key", "-n", "mon.", "--cap", "mon", "allow *"]),
        )?;
        admin.run(Command::new(&tools.authtool).arg(&keyring).args([
            "--gen-key",
            "-n",
            "client.admin",
            "--cap",
            "mon",
            "allow *",
            "--cap",
            "osd",
            "allow *",
            "--cap",
            "mgr",
            "allow *",
        ]))?;
        let monmap = root.join("monmap");
        admin.run(
            Command::new(&tools.monmaptool)
                .args(["--create", "--addv", "a"])
                .arg(format!("[v2:127.0.0.1:{mon_port}]"))
                .args(["--fsid", &fsid])
                .arg(&monmap),
        )?;
        admin.run(
            Command::new(&tools.mon)
                .arg("-c")
                .arg(&conf)
                .args(["--mkfs", "-i", "a", "--monmap"])
                .arg(&monmap)
                .arg("--keyring")
                .arg(&keyring),
        )?;

        let mut daemons = Vec::new();
        // The monitor owns the directory: it is stopped last, and if the
        // test process dies, its supervisor removes the directory.
        daemons.push(ServerProcess::spawn_owning(
            "ceph-mon",
            Command::new(&tools.mon)
                .arg("-c")
                .arg(&conf)
                .args(["-f", "-i", "a"]),
            &root.join("log/mon.out"),
            &root,
        ));

        let osd_uuid = uuid();
        let id = admin.ceph(&["osd", "new", &osd_uuid])?;
        let id = id.trim().to_string();
        if id != "0" {
            return Err(format!("the new OSD got id {id}, not 0"));
        }
        let osd_keyring = root.join("osd/ceph-0/keyring");
        admin.run(
            Command::new(&tools.authtool)
                .arg("--create-keyring")
                .arg(&osd_keyring)
                .args(["--gen-key", "-n", "osd.0"]),
        )?;
        admin.ceph(&[
            "auth",
            "add",
            "osd.0",
            "osd",
            "allow *",
            "mon",
            "allow profile osd",
            "mgr",
            "allow profile osd",
            "-i",
            &osd_keyring.display().to_string(),
        ])?;
        admin.run(
            Command::new(&tools.osd)
                .arg("-c")
                .arg(&conf)
                .args(["-i", "0", "--mkfs", "--osd-uuid", &osd_uuid, "--keyring"])
                .arg(&osd_keyring),
        )?;
        daemons.push(admin.daemon("ceph-osd", &tools.osd, &["-i", "0"], &osd_keyring));

        let mgr_keyring = root.join("mgr/ceph-x/keyring");
        admin.key(
            "mgr.x",
            &["mon", "allow profile mgr", "osd", "allow *"],
            &mgr_keyring,
        )?;
        daemons.push(admin.daemon("ceph-mgr", &tools.mgr, &["-i", "x"], &mgr_keyring));

        let rgw_keyring = root.join("rgw/keyring");
        admin.key(
            "client.rgw.a",
            &["mon", "allow rw", "osd", "allow rwx", "mgr", "allow rw"],
            &rgw_keyring,
        )?;
        daemons.push(admin.daemon(
            "radosgw",
            &tools.radosgw,
            &["-n", "client.rgw.a"],
            &rgw_keyring,
        ));

        let addr = loopback(rgw_port);
        let client = http_client();
        let ready = poll_http(&client, &format!("http://{addr}/"), START_TIMEOUT, || {
            for daemon in daemons.iter_mut() {
                if let Some(status) = daemon.exit_status() {
                    return Err(format!("a daemon exited during start-up ({status})"));
                }
            }
            Ok(())
        });
        if let Err(e) = ready {
            return Err(format!("{e}\n{}", logs(&root)));
        }

        let access_key = format!("CBFS{}", crate::random_hex(8).to_uppercase());
        let secret_key = crate::random_hex(20);
        admin.run(
            Command::new(&tools.radosgw_admin)
                .arg("-c")
                .arg(&conf)
                .args(["-n", "client.admin", "user", "create", "--uid", "cbfs"])
                .args(["--display-name", "cbfs tests", "--access-key", &access_key])
                .args(["--secret-key", &secret_key]),
        )?;
        let server = CephServer {
            addr,
            access_key,
            secret_key,
            client,
            conf,
            started_in: began.elapsed(),
            daemons,
            _dir: dir,
        };
        // The user is there once a signed request gets through.
        let deadline = Instant::now() + Duration::from_secs(30);
        // A connection radosgw drops while it settles is tried again too.
        loop {
            let why = match server.try_send(Method::GET, "", "", &[], &[], Vec::new()) {
                Ok(answer) if answer.status.is_success() => break,
                Ok(answer) => format!(
                    "radosgw refuses the new user's requests ({}): {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                ),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(why);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(server)
    }

    /// How long [`start`](CephServer::start) took, from nothing to the
    /// first signed request served.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The resident memory of the cluster's daemons together, in bytes
    /// (from `/proc`), and each daemon's, by name.
    pub fn resident_bytes(&self) -> (u64, Vec<(&'static str, u64)>) {
        let names = ["ceph-mon", "ceph-osd", "ceph-mgr", "radosgw"];
        let each: Vec<(&'static str, u64)> = names
            .iter()
            .zip(&self.daemons)
            .map(|(name, daemon)| (*name, daemon.pid().map_or(0, rss_bytes)))
            .collect();
        (each.iter().map(|(_, b)| b).sum(), each)
    }

    /// The endpoint URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The gateway's socket address, for a [`FaultyProxy`](crate::FaultyProxy).
    pub fn socket_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The S3 user's access key id.
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// The S3 user's secret key.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The cluster's configuration file, for `ceph -c CONF ...` by hand.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// Environment for a child process that talks S3 to this server:
    /// `AWS_ENDPOINT_URL`, the user's `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION=us-east-1` and
    /// `AWS_ALLOW_HTTP=true`.
    pub fn envs(&self) -> Vec<(String, String)> {
        self.envs_with_endpoint(&self.endpoint())
    }

    /// [`envs`](CephServer::envs) with another endpoint, such as a
    /// [`FaultyProxy`](crate::FaultyProxy) in front of this server.
    pub fn envs_with_endpoint(&self, endpoint: &str) -> Vec<(String, String)> {
        s3_envs(endpoint, &self.access_key, &self.secret_key)
    }

    /// Creates the bucket `name`.
    pub fn create_bucket(&self, name: &str) {
        check(
            self.send(Method::PUT, name, "", &[], &[], Vec::new()),
            &format!("create bucket {name}"),
        );
    }

    /// Every object in `bucket` as `(key, size)`, in key order.
    pub fn list_objects(&self, bucket: &str) -> Vec<(String, u64)> {
        list_pages(bucket, |query| {
            check(
                self.send(Method::GET, bucket, "", query, &[], Vec::new()),
                &format!("list bucket {bucket}"),
            )
        })
    }

    /// The bytes of `bucket/key`; fails the test if the object is missing.
    pub fn get_object(&self, bucket: &str, key: &str) -> Vec<u8> {
        self.try_get_object(bucket, key)
            .unwrap_or_else(|| panic!("object {bucket}/{key} does not exist"))
    }

    /// The bytes of `bucket/key`, or `None` if there is no such object.
    pub fn try_get_object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let answer = self.send(Method::GET, bucket, key, &[], &[], Vec::new());
        if answer.status == StatusCode::NOT_FOUND {
            return None;
        }
        Some(check(answer, &format!("get object {bucket}/{key}")))
    }

    /// Stores `data` as `bucket/key`, replacing any object there.
    pub fn put_object(&self, bucket: &str, key: &str, data: &[u8]) {
        check(
            self.send(Method::PUT, bucket, key, &[], &[], data.to_vec()),
            &format!("put object {bucket}/{key}"),
        );
    }

    /// Deletes `bucket/key` (no error if it does not exist).
    pub fn delete_object(&self, bucket: &str, key: &str) {
        check(
            self.send(Method::DELETE, bucket, key, &[], &[], Vec::new()),
            &format!("delete object {bucket}/{key}"),
        );
    }

    /// One signed S3 request, path style: `METHOD /bucket/key?query` with
    /// `headers` (not signed) and `body`. Returns the answer, whatever its
    /// status; fails the test only if the server cannot be reached.
    pub fn send(
        &self,
        method: Method,
        bucket: &str,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Answer {
        self.try_send(method, bucket, key, query, headers, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`send`](Self::send), with a server that could not be reached (or
    /// dropped the connection) as an error.
    fn try_send(
        &self,
        method: Method,
        bucket: &str,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Answer, String> {
        let mut path = format!("/{}", encode_path(bucket));
        if !key.is_empty() {
            path.push('/');
            path.push_str(&encode_path(key));
        }
        let mut pairs: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (uri_encode(k), uri_encode(v)))
            .collect();
        pairs.sort();
        let canonical_query = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let host = self.addr.to_string();
        let payload = hex(&Sha256::digest(&body));
        let (date, stamp) = amz_date(SystemTime::now());
        let signed_headers = "host;x-amz-content-sha256;x-amz-date";
        let canonical = format!(
            "{method}\n{path}\n{canonical_query}\nhost:{host}\nx-amz-content-sha256:{payload}\n\
             x-amz-date:{stamp}\n\n{signed_headers}\n{payload}"
        );
        let scope = format!("{date}/us-east-1/s3/aws4_request");
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let mut signing_key = hmac(
            format!("AWS4{}", self.secret_key).as_bytes(),
            date.as_bytes(),
        );
        for part in ["us-east-1", "s3", "aws4_request"] {
            signing_key = hmac(&signing_key, part.as_bytes());
        }
        let signature = hex(&hmac(&signing_key, to_sign.as_bytes()));
        let mut url = format!("{}{path}", self.endpoint());
        if !canonical_query.is_empty() {
            url.push('?');
            url.push_str(&canonical_query);
        }
        let mut request = self
            .client
            .request(method.clone(), &url)
            .header("x-amz-date", &stamp)
            .header("x-amz-content-sha256", &payload)
            .header(
                "Authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, \
                     Signature={signature}",
                    self.access_key
                ),
            );
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request
            .body(body)
            .send()
            .map_err(|e| format!("S3 {method} {url}: {e}"))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .map_err(|e| format!("S3 {method} {url}: reading the answer: {e}"))?
            .to_vec();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

/// An answer of radosgw to a request made with [`CephServer::send`].
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The text of the first `<tag>` element of the body, if any.
    pub fn element(&self, tag: &str) -> Option<String> {
        element(&String::from_utf8_lossy(&self.body), tag).map(xml_unescape)
    }
}

impl Drop for CephServer {
    fn drop(&mut self) {
        // radosgw first, the monitor last; the directory goes after.
        while let Some(mut daemon) = self.daemons.pop() {
            daemon.stop();
        }
    }
}

impl std::fmt::Debug for CephServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CephServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn check(answer: Answer, what: &str) -> Vec<u8> {
    if !answer.status.is_success() {
        panic!(
            "S3 {what}: radosgw answered {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    answer.body
}

/// Runs the administrative commands of the start-up, each with a time limit,
/// their output kept in files under the cluster's log directory (the keys
/// they print stay out of the harness's captured output).
struct Admin<'a> {
    tools: &'a Tools,
    conf: &'a Path,
    logs: PathBuf,
}

impl Admin<'_> {
    /// `ceph -c CONF ARGS...`: its standard output.
    fn ceph(&self, args: &[&str]) -> Result<String, String> {
        self.run(
            Command::new(&self.tools.ceph)
                .arg("-c")
                .arg(self.conf)
                .args(["--connect-timeout", "30"])
                .args(args),
        )
    }

    /// `ceph auth get-or-create ENTITY CAPS...`, the key written to `keyring`.
    fn key(&self, entity: &str, caps: &[&str], keyring: &Path) -> Result<String, String> {
        let keyring = keyring.display().to_string();
        let mut args = vec!["auth", "get-or-create", entity];
        args.extend_from_slice(caps);
        args.extend(["-o", &keyring]);
        self.ceph(&args)
    }

    /// Starts the daemon `program` in the foreground (`-f`) with `args`
    /// and its `keyring`, its output in `log/NAME.out`.
    fn daemon(&self, name: &str, program: &Path, args: &[&str], keyring: &Path) -> ServerProcess {
        let root = self.logs.parent().unwrap_or(&self.logs);
        ServerProcess::spawn(
            name,
            Command::new(program)
                .arg("-c")
                .arg(self.conf)
                .arg("-f")
                .args(args)
                .arg("--keyring")
                .arg(keyring),
            &self.logs.join(format!("{name}.out")),
            root,
        )
    }

    fn run(&self, cmd: &mut Command) -> Result<String, String> {
        let line = crate::command_line(cmd);
        let out = self.logs.join("admin.out");
        let err = self.logs.join("admin.err");
        let file = |p: &Path| {
            fs::File::create(p).map_err(|e| format!("cannot create {}: {e}", p.display()))
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(file(&out)?)
            .stderr(file(&err)?)
            .spawn()
            .map_err(|e| format!("cannot start `{line}`: {e}"))?;
        let status = crate::run::wait_with_timeout(&mut child, ADMIN_TIMEOUT);
        let stdout = fs::read_to_string(&out).unwrap_or_default();
        let stderr = fs::read_to_string(&err).unwrap_or_default();
        match status {
            Some(status) if status.success() => Ok(stdout),
            Some(status) => Err(format!(
                "`{line}` failed ({status}): {}\n{}",
                stderr.trim(),
                logs(self.logs.parent().unwrap_or(&self.logs))
            )),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "`{line}` did not finish within {ADMIN_TIMEOUT:?}: {}\n{}",
                    stderr.trim(),
                    logs(self.logs.parent().unwrap_or(&self.logs))
                ))
            }
        }
    }
}

/// The end of every daemon's log, for failure messages.
fn logs(root: &Path) -> String {
    let mut text = String::new();
    for name in [
        "mon.out",
        "mon.a.log",
        "ceph-osd.out",
        "osd.0.log",
        "ceph-mgr.out",
        "radosgw.out",
        "rgw.log",
    ] {
        let path = root.join("log").join(name);
        if path.exists() {
            let _ = writeln!(text, "--- {name}:\n{}", crate::process::log_tail(&path, 15));
        }
    }
    text
}

/// The cluster's configuration: everything under `root`, the monitor on
/// `mon_port`, radosgw on `rgw_port`, small logs, modest memory.
fn config(root: &Path, fsid: &str, mon_port: u16, rgw_port: u16) -> String {
    let r = root.display();
    format!(
        "[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
mon initial members = a
public addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = {r}/keyring
run dir = {r}/run
admin socket = {r}/run/$name.asok
pid file = {r}/run/$name.pid
log file = {r}/log/$name.log
log to stderr = false
err to stderr = true
mon cluster log file = {r}/log/cluster.log
mon data = {r}/mon/$cluster-$id
osd data = {r}/osd/$cluster-$id
mgr data = {r}/mgr/$cluster-$id
# Nearly full disks are the test machines' normal state: the monitor must
# not stop for it.
mon data avail crit = 0
mon data avail warn = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = {MEMSTORE_BYTES}
osd op num shards = 1
osd op num threads per shard = 2
mgr initial modules = iostat
debug ms = 0/0
debug monc = 0/0
debug auth = 0/0

[client.rgw.a]
log file = {r}/log/rgw.log
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw thread pool size = 32
rgw data = {r}/rgw
debug rgw = 0/0
"
    )
}

/// A random UUID, version 4.
fn uuid() -> String {
    let mut b = crate::random_bytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Resident memory of process `pid`, in bytes (0 if it is gone).
fn rss_bytes(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 64;
    let mut k = if key.len() > BLOCK {
        Sha256::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(BLOCK, 0);
    let pad = |byte: u8| k.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// SigV4's URI encoding of a query name or value: everything but the
/// unreserved characters, `/` included.
fn uri_encode(text: &str) -> String {
    encode_path(text).replace('/', "%2F")
}

/// `(YYYYMMDD, YYYYMMDDTHHMMSSZ)` for `time`, in UTC.
fn amz_date(time: SystemTime) -> (String, String) {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let date = format!("{year:04}{month:02}{day:02}");
    let stamp = format!(
        "{date}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    (date, stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231, test case 2.
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        let t = UNIX_EPOCH + Duration::from_secs(1_709_251_199); // 2024-02-29T23:59:59Z
        assert_eq!(
            amz_date(t),
            ("20240229".to_string(), "20240229T235959Z".to_string())
        );
        assert_eq!(amz_date(UNIX_EPOCH).1, "19700101T000000Z");
    }

    #[test]
    fn uuids_are_version_4() {
        let u = uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, uuid());
    }
}
