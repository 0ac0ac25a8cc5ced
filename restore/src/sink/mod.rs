//! Where restored entries go: a pax tar stream ([`TarSink`]) or a directory
//! ([`DirSink`]).
//!
//! The restore hands a sink entries in path order (parents first, hard links
//! last), with paths and link targets already checked. A regular file's
//! content arrives in pieces between [`Sink::begin_file`] and
//! [`Sink::commit_file`]; the restore commits only once the member has fully
//! authenticated and its hash matched, and aborts otherwise, so a sink must
//! not let a file appear in its output before the commit.

mod dir;
mod tar;

use cbfs_format::Metadata;

pub use self::dir::DirSink;
pub use self::tar::{Rewind, TarSink};
use crate::error::Result;

/// A restore's output.
pub trait Sink {
    /// Starts a regular file. Its content follows through
    /// [`write_content`](Self::write_content), exactly `meta.size` bytes.
    fn begin_file(&mut self, meta: &Metadata) -> Result<()>;
    /// More content of the file begun last.
    fn write_content(&mut self, data: &[u8]) -> Result<()>;
    /// The file authenticated: make it part of the output.
    fn commit_file(&mut self) -> Result<()>;
    /// The file failed: leave nothing of it behind.
    fn abort_file(&mut self);
    /// An entry without content: a directory, symbolic link, hard link,
    /// device or fifo.
    fn add_entry(&mut self, meta: &Metadata) -> Result<()>;
    /// After the last entry (the tar trailer; directory times and modes).
    fn finish(&mut self) -> Result<()>;
    /// Whether a link whose target leaves the tree is carried as it is
    /// (and reported), rather than refused. A tar is not a directory: it
    /// carries such links as they were, and only a restore into a directory
    /// refuses them, where they would point out of the destination.
    fn carries_links_that_leave(&self) -> bool {
        false
    }
    /// What went only partly right (an xattr or owner not set), once.
    fn take_warnings(&mut self) -> Vec<String> {
        Vec::new()
    }
}
