//! Key files for a test store: the common setup most end-to-end tests start
//! from.

use std::path::Path;

use crate::{cbfs_cmd, run_ok};

/// Makes, in `dir`, what a tiering agent needs on embedded defaults, with
/// `cbfs-keytool` as a user would: the agent's writer key (`agent.key`,
/// `agent.pub`), the administrator's root secret (`admin.key`) and the
/// keyset of file system `fs` (`keyset.json`) that registers the agent as
/// its writer and has one scope per name in `scopes`.
pub fn agent_keyset(dir: &Path, fs: &str, scopes: &[&str]) {
    let kt = |args: &[&str]| run_ok(cbfs_cmd("cbfs-keytool").current_dir(dir).args(args));
    kt(&[
        "create-user",
        "agent",
        "--secret",
        "file:agent.key",
        "--public",
        "agent.pub",
    ]);
    kt(&[
        "create-admin",
        "--fs",
        fs,
        "--secret",
        "file:admin.key",
        "--keyset",
        "keyset.json",
        "--writer",
        "agent.pub",
    ]);
    for scope in scopes {
        kt(&[
            "add-scope",
            "--admin",
            "file:admin.key",
            "--keyset",
            "keyset.json",
            "--scope",
            scope,
        ]);
    }
}
