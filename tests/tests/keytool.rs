//! End-to-end tests of `cbfs-keytool` (issue "Workspace, key material and
//! cbfs-keytool").
//!
//! Every test drives the real binary, in a [`Workdir`] of its own, against
//! real components where it needs them: the kernel keyring in a fresh
//! [`KeyringSession`](cbfs_tests::KeyringSession), a `bao server -dev` of its
//! own, the `age` and `age-keygen` CLIs. What the binary wrote is then checked
//! with `cbfs-core` itself: the seed in a key file must derive the keys the
//! keyset lists, and the shares `delegate` writes must open only with their
//! own delegation node's key (made by the real `cbfs-delegation init`), into
//! grants that carry working kfrags of one scope only.
//!
//! - `walkthrough`: the command forms, one after the other, and what
//!   `show` and `list` say about the result, as text and as JSON.
//! - `file_source`, `keyring_source`, `openbao_source`, `awskms_source`
//!   (moto's KMS), `pkcs11_source` (a SoftHSM2 token): the key sources.
//! - `delegation`: a share opens for its own node only, and its kfrag, of
//!   one scope, opens nothing sealed for another.
//! - `leaks`: no secret in any output, at trace level, or in any argv.
//! - `exit_codes`: usage 2, wrong key or tampered document 4.
//!
//! Helpers shared by these modules live here. Commands run through
//! [`run`](cbfs_tests::run) and friends, so [`captured_output`] holds every
//! command line and everything it printed; external tools that print secrets
//! (`age -d`) run outside it on purpose.

#![forbid(unsafe_code)]

#[path = "keytool/awskms_source.rs"]
mod awskms_source;
#[path = "keytool/delegation.rs"]
mod delegation;
#[path = "keytool/exit_codes.rs"]
mod exit_codes;
#[path = "keytool/file_source.rs"]
mod file_source;
#[path = "keytool/keyring_source.rs"]
mod keyring_source;
#[path = "keytool/leaks.rs"]
mod leaks;
#[path = "keytool/openbao_source.rs"]
mod openbao_source;
#[path = "keytool/pkcs11_source.rs"]
mod pkcs11_source;
#[path = "keytool/walkthrough.rs"]
mod walkthrough;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cbfs_core::umbral_pre::{DefaultSerialize, PublicKey, SecretKey};
use cbfs_core::{AdminSecret, Grant, Keyset, ScopeLabel, Seed, Unlock, UserSecret};
use cbfs_delegation::{NodeIdentity, NodePublicFile};
use cbfs_tests::{
    Workdir, assert_no_secret, captured_output, cbfs_bin, cbfs_cmd, require_tool, run_fail, run_ok,
};
use cbfs_wire::GrantUpload;
use serde_json::Value;

/// The binary under test.
const KEYTOOL: &str = "cbfs-keytool";

/// The delegation node's binary: it makes the node key pairs that
/// `delegate --node-key` seals shares for.
const DELEGATION: &str = "cbfs-delegation";

/// Variables that would change which keys the tool finds or how it unlocks
/// them; the test runner's own values must not leak into a test.
const SCRUBBED_ENV: &[&str] = &[
    "BAO_ADDR",
    "BAO_TOKEN",
    "VAULT_ADDR",
    "VAULT_TOKEN",
    "CBFS_AGE_IDENTITY",
    "CBFS_PASSPHRASE_FILE",
    "CBFS_TRANSIT_MOUNT",
    "CBFS_PKCS11_MODULE",
    "CBFS_PKCS11_PIN",
    "SOFTHSM2_CONF",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_KMS",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "RUST_LOG",
];

/// A `cbfs-keytool` command run in `dir`, in a clean environment.
fn keytool(dir: &Path) -> Command {
    let mut cmd = cbfs_cmd(KEYTOOL);
    cmd.current_dir(dir);
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// The fixtures of cbfs-recover's own tests: a small encrypted store
/// (`store`, 16 entries in its newest snapshot) and its keys.
fn recover_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../recover/tests/fixtures")
}

/// The fixture store's root secret, as the 0600 key file `name` in `work`.
fn fixture_admin_key(work: &Workdir, name: &str) -> PathBuf {
    let path = work.path(name);
    fs::copy(recover_fixtures().join("keys/admin.key"), &path).unwrap();
    chmod(&path, 0o600);
    path
}

/// A `cbfs-recover` command in `work`, in the clean environment of
/// [`keytool`], that restores a copy of the fixture store (made on first
/// use) with `identity` into the new tar `out`, reporting in JSON. Its trust
/// records are `work`'s own.
fn recover_fixture(work: &Workdir, identity: &str, out: &str) -> Command {
    let store = work.path("fixture-store");
    if !store.exists() {
        copy_tree(&recover_fixtures().join("store"), &store);
    }
    let mut cmd = cbfs_cmd("cbfs-recover");
    cmd.current_dir(work.root());
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    cmd.env("CBFS_TRUST_FILE", work.path("trusted-admins.json"))
        .args(["--identity", identity, "--json", "-o", out, "--store"])
        .arg(&store);
    cmd
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// [`keytool`] at the loudest log level there is: `-vvv` and `RUST_LOG=trace`
/// (which also turns on every dependency's trace logs).
fn keytool_traced(dir: &Path) -> Command {
    let mut cmd = keytool(dir);
    cmd.arg("-vvv").env("RUST_LOG", "trace");
    cmd
}

/// Runs `cmd`, which must fail with exit code `code`.
fn run_code(cmd: &mut Command, code: i32) -> Output {
    let out = run_fail(cmd);
    assert_eq!(
        out.status.code(),
        Some(code),
        "`{}` exited with {:?}, expected {code}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        cbfs_tests::command_line(cmd),
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// A command line's arguments: `line` split on whitespace.
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn stderr(out: &Output) -> String {
    text(&out.stderr)
}

/// stdout parsed as the one JSON document `--json` prints.
fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{}",
            text(&out.stdout)
        )
    })
}

/// Permission bits of `path`.
fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn label(name: &str) -> ScopeLabel {
    ScopeLabel::new(name).unwrap()
}

fn seed(bytes: &[u8]) -> Seed {
    assert_eq!(bytes.len(), 32, "a seed is 32 bytes");
    Seed::from_slice(bytes, "test").unwrap()
}

/// The administrator secret whose seed is `bytes`.
fn admin_from(bytes: &[u8]) -> AdminSecret {
    AdminSecret::from_seed(seed(bytes))
}

/// The user secret whose seed is `bytes`.
fn user_from(bytes: &[u8]) -> UserSecret {
    UserSecret::from_seed(seed(bytes))
}

/// A raw key file as `file:` stores it: exactly the 32-byte seed, 0600.
fn raw_key_file(path: &Path) -> Vec<u8> {
    assert_eq!(mode(path), 0o600, "{} must be 0600", path.display());
    let bytes = read(path);
    assert_eq!(
        bytes.len(),
        32,
        "{} must hold exactly the 32-byte key",
        path.display()
    );
    bytes
}

/// The keyset at `path`, verified by `cbfs-core`.
fn load_keyset(path: &Path) -> Keyset {
    Keyset::load(path).unwrap_or_else(|e| panic!("keyset {}: {e}", path.display()))
}

/// The value at a JSON pointer, which must be there.
fn at<'a>(value: &'a Value, pointer: &str) -> &'a Value {
    value
        .pointer(pointer)
        .unwrap_or_else(|| panic!("no {pointer} in {value:#}"))
}

const AGE_HINT: &str = "`apt-get install age` (it ships age and age-keygen)";

/// An age x25519 identity made by the real `age-keygen`: (identity file,
/// recipient, the identity's secret line).
fn age_identity(work: &Workdir, name: &str) -> (PathBuf, String, Vec<u8>) {
    let keygen = require_tool("age-keygen", AGE_HINT);
    let path = work.path(name);
    run_ok(Command::new(&keygen).arg("-o").arg(&path));
    let out = run_ok(Command::new(&keygen).arg("-y").arg(&path));
    let recipient = text(&out.stdout).trim().to_string();
    assert!(recipient.starts_with("age1"), "{recipient}");
    let secret_line = text(&read(&path))
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .expect("an identity line")
        .as_bytes()
        .to_vec();
    (path, recipient, secret_line)
}

/// Decrypts an age file with the real `age` CLI. Not through the harness's
/// runners: the output is the key, which must not land in captured output.
fn age_decrypt(identity: &Path, file: &Path) -> Vec<u8> {
    let age = require_tool("age", AGE_HINT);
    let out = Command::new(age)
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg(file)
        .output()
        .expect("run age -d");
    assert!(
        out.status.success(),
        "age -d {} failed: {}",
        file.display(),
        stderr(&out)
    );
    out.stdout
}

/// Makes a delegation node's key pair as an operator would, with
/// `cbfs-delegation init --data NAME` run in `work`: NAME/node.key (the
/// node's 32-byte seed, 0600) and NAME/node.pub. Returns the data folder.
fn init_node(work: &Workdir, name: &str) -> PathBuf {
    let out = run_ok(
        cbfs_cmd(DELEGATION)
            .current_dir(work.root())
            .args(["init", "--data", name]),
    );
    let data = work.path(name);
    let public = NodePublicFile::load(&data.join("node.pub"))
        .unwrap_or_else(|e| panic!("{name}/node.pub: {e}"));
    assert_eq!(
        user_from(&node_seed(&data)).public_key(),
        public,
        "{name}/node.pub is the key of the seed in {name}/node.key"
    );
    assert!(
        text(&out.stdout).contains(&cbfs_core::fingerprint(&public)),
        "init names the node's fingerprint: {}",
        text(&out.stdout)
    );
    data
}

/// `--node-key NAME/node.pub` for each node name, in share order.
fn node_key_args(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("--node-key {n}/node.pub"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A node's seed: the 32 raw bytes of DATA/node.key (0600).
fn node_seed(data: &Path) -> Vec<u8> {
    raw_key_file(&data.join("node.key"))
}

/// A node's Umbral secret key, loaded the way the node loads it.
fn node_secret(data: &Path) -> SecretKey {
    NodeIdentity::load(data, None, &Unlock::default())
        .unwrap_or_else(|e| panic!("node key in {}: {e}", data.display()))
        .secret_key()
}

/// The `*.share` files in `dir`, sorted by name.
fn share_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "share"))
        .collect();
    files.sort();
    files
}

/// Opens a share file as a node does: the sealed grant in it, decrypted
/// with `node` (a node's secret key) and verified against `admin`, the
/// administrator key of the keyset.
fn open_share(path: &Path, node: &SecretKey, admin: &PublicKey) -> cbfs_core::Result<Grant> {
    let upload: GrantUpload = serde_json::from_slice(&read(path))
        .unwrap_or_else(|e| panic!("{} is not a share file: {e}", path.display()));
    let (sealed, _) = upload
        .sealed_grant()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    sealed.open(node, admin, &path.display().to_string())
}

/// The serialized kfrag of a grant: what must reach its node only.
fn kfrag_bytes(grant: &Grant) -> Vec<u8> {
    grant.kfrag().to_bytes().expect("kfrags serialize").to_vec()
}

/// Named secrets a test must never see in output, argv or public files.
#[derive(Default)]
struct Secrets {
    list: Vec<(String, Vec<u8>)>,
}

impl Secrets {
    fn add(&mut self, name: impl Into<String>, bytes: impl AsRef<[u8]>) {
        self.list.push((name.into(), bytes.as_ref().to_vec()));
    }

    /// The root seed and the seeds of `scopes` derived from it.
    fn add_admin(&mut self, name: &str, admin: &AdminSecret, scopes: &[&str]) {
        self.add(
            format!("{name} root seed"),
            admin.seed().expose_secret_bytes(),
        );
        for scope in scopes {
            let secret = admin.scope(&label(scope));
            self.add(
                format!("{name} seed of scope {scope}"),
                secret.seed().expose_secret_bytes(),
            );
        }
    }

    /// Fails if any of the secrets appears in `haystack`, in any encoding.
    fn assert_absent(&self, haystack: &[u8], what: &str) {
        for (name, secret) in &self.list {
            assert_no_secret(
                haystack,
                secret,
                &format!("{what} (looking for the {name})"),
            );
        }
    }

    /// [`assert_absent`](Secrets::assert_absent) on every command this test
    /// ran: argv, stdout and stderr.
    fn assert_absent_from_commands(&self) {
        self.assert_absent(&captured_output(), "the keytool commands of this test");
    }
}

/// How many [`keytool_traced`] command lines [`captured_output`] holds:
/// proof that the leak checks saw the argv of every command (also of those
/// wrapped in a keyring session, whose line starts with the wrapper).
fn traced_command_lines() -> usize {
    let marker = format!("{} -vvv ", cbfs_bin(KEYTOOL).display());
    text(&captured_output()).matches(&marker).count()
}
