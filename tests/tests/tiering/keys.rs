//! Keys for a tiering test: an administrator with scopes alice and bob, and
//! the agent's writer key, registered in the keyset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use cbfs_tests::{Workdir, cbfs_cmd, run_ok};

/// Runs the keytool command `line` (split on whitespace) in `dir`.
fn keytool(dir: &Path, line: &str) {
    run_ok(
        cbfs_cmd("cbfs-keytool")
            .current_dir(dir)
            .args(line.split_whitespace()),
    );
}

pub struct Keys {
    pub dir: PathBuf,
}

impl Keys {
    pub fn new(work: &Workdir) -> Keys {
        let dir = work.mkdir("keys");
        keytool(
            &dir,
            "create-user agent --secret file:agent.key --public agent.pub",
        );
        keytool(
            &dir,
            "create-admin --fs test --secret file:admin.key --keyset keyset.json --writer agent.pub",
        );
        for scope in ["alice", "bob"] {
            keytool(
                &dir,
                &format!("add-scope --admin file:admin.key --keyset keyset.json --scope {scope}"),
            );
        }
        Keys { dir }
    }
    pub fn keyset(&self) -> PathBuf {
        self.dir.join("keyset.json")
    }
    pub fn admin(&self) -> String {
        format!("file:{}", self.dir.join("admin.key").display())
    }
    pub fn writer(&self) -> String {
        format!("file:{}", self.dir.join("agent.key").display())
    }
    /// Exports `scope`'s secret (`cbfs-keytool export-scope`) to
    /// `SCOPE-scope.key`; its key source.
    pub fn export_scope(&self, scope: &str) -> String {
        let file = format!("{scope}-scope.key");
        keytool(
            &self.dir,
            &format!(
                "export-scope --admin file:admin.key --keyset keyset.json --scope {scope} \
                 --secret file:{file}"
            ),
        );
        format!("file:{}", self.dir.join(file).display())
    }
}
