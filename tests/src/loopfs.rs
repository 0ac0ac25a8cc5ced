//! Small file systems on loop devices, made and mounted by a test: ext4 or
//! xfs, which (unlike tmpfs) take fanotify pre-content marks, leases and
//! extended attributes in the `trusted` namespace.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::bins::require_tool;
use crate::run::run_ok;
use crate::workdir::Workdir;

/// Which file system to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    /// ext4 (`mkfs.ext4`, e2fsprogs).
    Ext4,
    /// xfs (`mkfs.xfs`, xfsprogs); at least 300 MiB.
    Xfs,
}

/// A file system made in an image file of the work folder and mounted at
/// `dir` (with a loop device) until dropped.
pub struct LoopFs {
    dir: PathBuf,
    kind: FsKind,
}

impl LoopFs {
    /// Makes a `mib` MiB file system of `kind` named `name` in `work` and
    /// mounts it.
    pub fn new(work: &Workdir, name: &str, kind: FsKind, mib: u64) -> LoopFs {
        Self::with_options(work, name, kind, mib, "loop")
    }

    /// [`new`](Self::new) with these mount options (`loop` among them).
    pub fn with_options(
        work: &Workdir,
        name: &str,
        kind: FsKind,
        mib: u64,
        options: &str,
    ) -> LoopFs {
        let img = work.path(format!("{name}.img"));
        let f = std::fs::File::create(&img).unwrap();
        let mib = if kind == FsKind::Xfs {
            mib.max(320)
        } else {
            mib
        };
        f.set_len(mib << 20).unwrap();
        drop(f);
        match kind {
            FsKind::Ext4 => run_ok(
                Command::new(require_tool("mkfs.ext4", "apt-get install e2fsprogs"))
                    .arg("-q")
                    .arg(&img),
            ),
            FsKind::Xfs => run_ok(
                Command::new(require_tool("mkfs.xfs", "apt-get install xfsprogs"))
                    .arg("-q")
                    .arg(&img),
            ),
        };
        let dir = work.mkdir(name);
        require_tool("losetup", "apt-get install util-linux");
        run_ok(
            Command::new(require_tool("mount", "apt-get install mount"))
                .arg("-o")
                .arg(options)
                .arg(&img)
                .arg(&dir),
        );
        LoopFs { dir, kind }
    }

    /// Where it is mounted.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Which file system it is.
    pub fn kind(&self) -> FsKind {
        self.kind
    }

    /// Fills the file system with the file `filler` in it until no block
    /// is left (the blocks reserved for root too: the tests run as root),
    /// then gives `leave` bytes of it back. Returns the file: removing it
    /// frees the space.
    pub fn fill(&self, leave: u64) -> PathBuf {
        use std::io::{ErrorKind, Write};
        let filler = self.dir.join("filler");
        let mut f = std::fs::File::create(&filler)
            .unwrap_or_else(|e| panic!("creating {}: {e}", filler.display()));
        let zeros = vec![0u8; 1 << 20];
        // Large writes first, then small ones for the last blocks.
        for size in [1 << 20, 4096, 512] {
            loop {
                match f.write_all(&zeros[..size]).and_then(|()| f.sync_data()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::StorageFull => break,
                    Err(e) => panic!("filling {}: {e}", filler.display()),
                }
            }
        }
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(leave)).unwrap();
        f.sync_all().unwrap();
        filler
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        // A process the test started may still be closing its files.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let done = Command::new("umount")
                .arg(&self.dir)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if done {
                return;
            }
            if Instant::now() > deadline {
                // Detach it: it goes once the last user lets go.
                let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
