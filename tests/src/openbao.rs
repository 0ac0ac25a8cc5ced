//! A real OpenBao dev server with the transit engine, on 127.0.0.1.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::Method;
use reqwest::blocking::Client;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::bins::{hints, require_tool};
use crate::net::{free_port_pair, http_client, loopback, poll_http};
use crate::process::ServerProcess;

const START_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 3;

/// An OpenBao server (`bao server -dev`) on 127.0.0.1 with the transit
/// secrets engine mounted at `transit/`.
///
/// Storage is in memory and the root token is random, so every test gets a
/// server of its own. Dropping it kills the server, which is also how a test
/// simulates a KMS outage: keep [`envs`](OpenBao::envs) and drop the server.
///
/// ```no_run
/// let bao = cbfs_tests::OpenBao::start();
/// bao.create_transit_key("fs1");
/// let wrapped = bao.transit_encrypt("fs1", b"sixteen byte key");
/// assert_eq!(bao.transit_decrypt("fs1", &wrapped), b"sixteen byte key");
/// ```
pub struct OpenBao {
    addr: SocketAddr,
    token: String,
    client: Client,
    // Field order matters: the server goes before its directory.
    server: ServerProcess,
    _dir: TempDir,
}

impl OpenBao {
    /// Starts a dev server on a free port, waits (up to 30 s) until
    /// `GET /v1/sys/health` answers, and mounts the transit engine.
    ///
    /// The root token reaches the server through `BAO_DEV_ROOT_TOKEN_ID`, not
    /// the command line, so it does not show in process listings. `HOME` and
    /// the working directory are a fresh temporary directory, and the server's
    /// output goes to a log file there.
    ///
    /// # Panics
    ///
    /// If `bao` is not installed, or the server does not come up; the message
    /// then carries the end of the server's log.
    pub fn start() -> OpenBao {
        let bao = require_tool("bao", hints::BAO);
        let token = format!("cbfs-test-{}", crate::random_hex(16));
        let client = http_client();

        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            // Its own directory per attempt: a server removes its directory
            // when it stops, and a failed attempt must not take the next one's.
            let dir = tempfile::Builder::new()
                .prefix("cbfs-openbao-")
                .tempdir()
                .unwrap_or_else(|e| panic!("cannot create a directory for OpenBao: {e}"));
            let port = free_port_pair();
            let addr = loopback(port);
            let log = dir.path().join(format!("bao-{attempt}.log"));
            let mut cmd = Command::new(&bao);
            cmd.args(["server", "-dev", "-dev-no-store-token"])
                .arg(format!("-dev-listen-address={addr}"))
                .env("BAO_DEV_ROOT_TOKEN_ID", &token)
                .env("HOME", dir.path())
                .env("BAO_LOG_LEVEL", "info")
                .current_dir(dir.path());
            for var in [
                "BAO_ADDR",
                "BAO_TOKEN",
                "BAO_DEV_LISTEN_ADDRESS",
                "BAO_API_ADDR",
                "VAULT_ADDR",
                "VAULT_TOKEN",
                "VAULT_DEV_ROOT_TOKEN_ID",
                "VAULT_DEV_LISTEN_ADDRESS",
            ] {
                cmd.env_remove(var);
            }
            let mut server = ServerProcess::spawn_owning("openbao", &cmd, &log, dir.path());
            let health = format!("http://{addr}/v1/sys/health");
            let ready = poll_http(&client, &health, START_TIMEOUT, || {
                match server.exit_status() {
                    Some(status) => Err(format!("bao exited during start-up ({status})")),
                    None => Ok(()),
                }
            });
            match ready {
                Ok(200) => {
                    let bao = OpenBao {
                        addr,
                        token,
                        client,
                        server,
                        _dir: dir,
                    };
                    bao.api_ok(
                        Method::POST,
                        "sys/mounts/transit",
                        Some(json!({ "type": "transit" })),
                    );
                    return bao;
                }
                Ok(status) => failures.push(format!(
                    "attempt {attempt}: {health} answered {status}, not 200\n{}",
                    server.log_tail(30)
                )),
                Err(e) => {
                    let tail = server.log_tail(30);
                    let port_taken = tail.contains("address already in use");
                    failures.push(format!("attempt {attempt}: {e}\n{tail}"));
                    if port_taken {
                        continue; // someone took the port between probe and bind
                    }
                }
            }
            break;
        }
        panic!(
            "OpenBao dev server did not start (bao at {}):\n{}",
            bao.display(),
            failures.join("\n")
        );
    }

    /// The server's address, `http://127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's socket address, for a [`FaultyProxy`](crate::FaultyProxy).
    pub fn socket_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The root token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// `BAO_ADDR` and `BAO_TOKEN` for a child process.
    pub fn envs(&self) -> Vec<(String, String)> {
        vec![
            ("BAO_ADDR".to_string(), self.addr()),
            ("BAO_TOKEN".to_string(), self.token.clone()),
        ]
    }

    /// Creates the transit key `name` (type `aes256-gcm96`).
    pub fn create_transit_key(&self, name: &str) {
        self.api_ok(Method::POST, &format!("transit/keys/{name}"), None);
    }

    /// Rotates the transit key `name` to a new version.
    pub fn rotate_transit_key(&self, name: &str) {
        self.api_ok(Method::POST, &format!("transit/keys/{name}/rotate"), None);
    }

    /// The newest version of the transit key `name`.
    pub fn transit_key_latest_version(&self, name: &str) -> u32 {
        let body = self.api_ok(Method::GET, &format!("transit/keys/{name}"), None);
        body["data"]["latest_version"]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or_else(|| panic!("transit key {name}: no latest_version in {body}"))
    }

    /// Encrypts `plaintext` under the transit key `name`; returns the
    /// `vault:vN:...` ciphertext.
    pub fn transit_encrypt(&self, name: &str, plaintext: &[u8]) -> String {
        let body = self.api_ok(
            Method::POST,
            &format!("transit/encrypt/{name}"),
            Some(json!({ "plaintext": STANDARD.encode(plaintext) })),
        );
        body["data"]["ciphertext"]
            .as_str()
            .unwrap_or_else(|| panic!("transit encrypt with {name}: no ciphertext in answer"))
            .to_string()
    }

    /// Decrypts a `vault:vN:...` ciphertext with the transit key `name`.
    pub fn transit_decrypt(&self, name: &str, ciphertext: &str) -> Vec<u8> {
        let body = self.api_ok(
            Method::POST,
            &format!("transit/decrypt/{name}"),
            Some(json!({ "ciphertext": ciphertext })),
        );
        let b64 = body["data"]["plaintext"]
            .as_str()
            .unwrap_or_else(|| panic!("transit decrypt with {name}: no plaintext in answer"));
        STANDARD
            .decode(b64)
            .unwrap_or_else(|e| panic!("transit decrypt with {name}: plaintext is not base64: {e}"))
    }

    /// Calls the HTTP API at `/v1/<path>` with the root token. Returns the
    /// status and the JSON body (`Value::Null` when there is none).
    pub fn api(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}/v1/{path}", self.addr());
        let mut request = self
            .client
            .request(method.clone(), &url)
            .header("X-Vault-Token", &self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .unwrap_or_else(|e| panic!("OpenBao {method} {url}: {e}"));
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .unwrap_or_else(|e| panic!("OpenBao {method} {url}: reading the answer: {e}"));
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "OpenBao {method} {url} answered {status} with non-JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        (status, value)
    }

    /// [`api`](OpenBao::api), failing the test unless the status is 2xx.
    pub fn api_ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.api(method.clone(), path, body);
        if !(200..300).contains(&status) {
            panic!("OpenBao {method} /v1/{path} answered {status}: {value}");
        }
        value
    }

    /// Everything the server has logged. The dev server prints its root
    /// token in the log, so do not search it for that.
    pub fn log_contents(&self) -> Vec<u8> {
        self.server.log_contents()
    }
}

impl std::fmt::Debug for OpenBao {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenBao")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}
