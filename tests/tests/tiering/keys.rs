//! Keys for a tiering test: an administrator with scopes alice and bob, and
//! the agent's writer key, registered in the keyset.
#![allow(dead_code)]

use std::path::PathBuf;

use cbfs_tests::{Workdir, cbfs_cmd, run_ok};

pub struct Keys {
    pub dir: PathBuf,
}

impl Keys {
    pub fn new(work: &Workdir) -> Keys {
        let dir = work.mkdir("keys");
        let kt = |args: &[&str]| {
            run_ok(cbfs_cmd("cbfs-keytool").current_dir(&dir).args(args));
        };
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
            "test",
            "--secret",
            "file:admin.key",
            "--keyset",
            "keyset.json",
            "--writer",
            "agent.pub",
        ]);
        for scope in ["alice", "bob"] {
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
}
