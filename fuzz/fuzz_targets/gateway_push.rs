//! The body of `PUT /v1/fs/{fs}/push`: a tar stream the gateway unpacks
//! into a staging folder before anything is tiered out. Whether it is
//! accepted or refused, nothing may appear outside the staging folder; an
//! accepted stream leaves no symbolic link that leads out of it.
#![no_main]

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;

/// A folder of this process for the staging folders, on a RAM disk when
/// there is one.
fn jail() -> &'static Path {
    static J: OnceLock<tempfile::TempDir> = OnceLock::new();
    J.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_owned()
        } else {
            std::env::temp_dir()
        };
        tempfile::Builder::new()
            .prefix("cbfs-fuzz-push-")
            .tempdir_in(base)
            .expect("a scratch folder")
    })
    .path()
}

/// Where a symbolic link at `link` leads, following the links it passes
/// inside the tree.
fn destination(link: &Path) -> PathBuf {
    let target = std::fs::read_link(link).expect("a link");
    let mut at = std::fs::canonicalize(link.parent().expect("a parent")).expect("its parent");
    for part in target.components() {
        match part {
            Component::ParentDir => {
                at.pop();
            }
            Component::Normal(name) => {
                at.push(name);
                if let Ok(real) = std::fs::canonicalize(&at) {
                    at = real;
                }
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => at = PathBuf::from("/"),
        }
    }
    at
}

fuzz_target!(|data: &[u8]| {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run = jail().join(RUN.fetch_add(1, Ordering::Relaxed).to_string());
    let dest = run.join("dest");
    std::fs::create_dir_all(&dest).expect("a staging folder");
    let outcome = cbfs_gateway::push::unpack(data, &dest);
    let beside: Vec<_> = std::fs::read_dir(&run)
        .expect("the run's folder")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    assert_eq!(
        beside,
        ["dest"],
        "the push wrote outside its staging folder"
    );
    if outcome.is_ok() {
        let root = std::fs::canonicalize(&dest).expect("the staging folder");
        for entry in walkdir::WalkDir::new(&dest).follow_links(false) {
            let entry = entry.expect("a walk of the staging folder");
            if entry.path_is_symlink() {
                let to = destination(entry.path());
                assert!(
                    to.starts_with(&root),
                    "{} leads out of the pushed tree to {}",
                    entry.path().display(),
                    to.display()
                );
            }
        }
    }
    std::fs::remove_dir_all(&run).expect("removing the run's folder");
});
