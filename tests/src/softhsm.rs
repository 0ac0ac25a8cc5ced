//! A SoftHSM2 token of its own per test: the PKCS#11 module the `pkcs11:`
//! key source loads, with AES keys made inside the token.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::bins::{hints, require_tool};

/// The places Debian and others put the SoftHSM2 module.
const MODULES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// A SoftHSM2 configuration and token directory of its own, with one
/// initialized token. Give [`envs`](SoftHsm::envs) to every process that
/// uses it.
///
/// ```no_run
/// let hsm = cbfs_tests::SoftHsm::start("cbfs");
/// hsm.create_aes_key("kek");
/// let uri = hsm.uri("kek", std::path::Path::new("/tmp/admin.wrapped"));
/// assert!(uri.starts_with("pkcs11:token=cbfs;object=kek?"));
/// ```
pub struct SoftHsm {
    dir: TempDir,
    module: PathBuf,
    token: String,
    pin: String,
}

impl SoftHsm {
    /// A fresh token labelled `token`, with a random user PIN (kept in a
    /// 0600 file, [`pin_file`](SoftHsm::pin_file)).
    ///
    /// # Panics
    ///
    /// If SoftHSM2 (`softhsm2-util` and its module) is not installed, or the
    /// token cannot be made.
    pub fn start(token: &str) -> SoftHsm {
        let util = require_tool("softhsm2-util", hints::SOFTHSM);
        let module = MODULES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "the SoftHSM2 module libsofthsm2.so is in none of {MODULES:?}: install it with {}",
                    hints::SOFTHSM
                )
            });
        let dir = tempfile::Builder::new()
            .prefix("cbfs-softhsm-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a directory for SoftHSM: {e}"));
        std::fs::create_dir(dir.path().join("tokens")).expect("token directory");
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                dir.path().join("tokens").display()
            ),
        )
        .expect("SoftHSM configuration");
        let pin = crate::random_hex(8);
        let so_pin = crate::random_hex(8);
        let hsm = SoftHsm {
            dir,
            module,
            token: token.to_owned(),
            pin,
        };
        let out = Command::new(&util)
            .args(["--init-token", "--free", "--label", token, "--pin"])
            .arg(&hsm.pin)
            .arg("--so-pin")
            .arg(&so_pin)
            .envs(hsm.envs())
            .output()
            .unwrap_or_else(|e| panic!("cannot run softhsm2-util: {e}"));
        assert!(
            out.status.success(),
            "softhsm2-util --init-token failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let pin_file = hsm.pin_file();
        std::fs::write(&pin_file, format!("{}\n", hsm.pin)).expect("PIN file");
        std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600))
            .expect("PIN file mode");
        hsm
    }

    /// `SOFTHSM2_CONF`, pointing at this token's configuration.
    pub fn envs(&self) -> Vec<(String, String)> {
        vec![(
            "SOFTHSM2_CONF".into(),
            self.dir.path().join("softhsm2.conf").display().to_string(),
        )]
    }

    /// The PKCS#11 module.
    pub fn module(&self) -> &Path {
        &self.module
    }

    /// The token's user PIN (for tests that put it in the environment).
    pub fn pin(&self) -> &str {
        &self.pin
    }

    /// A 0600 file holding the PIN.
    pub fn pin_file(&self) -> PathBuf {
        self.dir.path().join("user.pin")
    }

    /// The `pkcs11:` key source of key `object`, with the wrapped key at
    /// `wrapped` and the PIN from [`pin_file`](SoftHsm::pin_file).
    pub fn uri(&self, object: &str, wrapped: &Path) -> String {
        format!(
            "pkcs11:token={};object={object}?module-path={}&pin-source=file:{}&x-wrapped={}",
            self.token,
            self.module.display(),
            self.pin_file().display(),
            wrapped.display()
        )
    }

    fn tool(&self, args: &[&str]) -> std::process::Output {
        let tool = require_tool("pkcs11-tool", hints::OPENSC);
        Command::new(tool)
            .arg("--module")
            .arg(&self.module)
            .args(["--token-label", &self.token, "--login", "--pin", &self.pin])
            .args(args)
            .envs(self.envs())
            .output()
            .unwrap_or_else(|e| panic!("cannot run pkcs11-tool: {e}"))
    }

    /// Makes an AES-256 key `label` inside the token (`pkcs11-tool
    /// --keygen`): sensitive, not extractable.
    pub fn create_aes_key(&self, label: &str) {
        let out = self.tool(&[
            "--keygen",
            "--key-type",
            "AES:32",
            "--label",
            label,
            "--sensitive",
        ]);
        assert!(
            out.status.success(),
            "pkcs11-tool --keygen {label} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Whether the value of key `label` can be read out of the token
    /// (`pkcs11-tool --read-object`).
    pub fn key_value_readable(&self, label: &str) -> bool {
        let out = self.tool(&["--read-object", "--type", "secrkey", "--label", label]);
        out.status.success() && !out.stdout.is_empty()
    }

    /// Deletes key `label` from the token.
    pub fn destroy_key(&self, label: &str) {
        let out = self.tool(&["--delete-object", "--type", "secrkey", "--label", label]);
        assert!(
            out.status.success(),
            "pkcs11-tool --delete-object {label} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
