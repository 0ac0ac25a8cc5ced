//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::Read;

use cbfs_format::{
    ContentReader, EntryKind, Error, GroupKey, Metadata, SegmentMode, SegmentReader, Timestamp,
};
use rand::{RngCore, SeedableRng};
use secrecy::SecretBox;

pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = vec![0u8; len];
    rng.fill_bytes(&mut out);
    out
}

pub fn copy_key(key: &GroupKey) -> GroupKey {
    GroupKey::new(key.id(), SecretBox::new(Box::new(*key.expose_secret())))
}

pub fn file(path: &[u8], content: &[u8]) -> (Metadata, Vec<u8>) {
    let mut m = Metadata::new(path, EntryKind::File);
    m.size = content.len() as u64;
    m.mode = 0o640;
    m.uid = 1000;
    m.gid = 1000;
    m.uname = "alice".into();
    m.gname = "staff".into();
    m.mtime = Timestamp::new(1_700_000_000, 250_000_000);
    (m, content.to_vec())
}

pub fn entry(path: &[u8], kind: EntryKind) -> (Metadata, Vec<u8>) {
    let mut m = Metadata::new(path, kind);
    m.mtime = Timestamp::new(1_600_000_000, 0);
    (m, Vec::new())
}

/// A varied set of entries: empty, small, multi-chunk, directory, symlink, hard link.
pub fn sample_entries() -> Vec<(Metadata, Vec<u8>)> {
    vec![
        entry(b"dir", EntryKind::Dir),
        file(b"dir/empty", b""),
        file(b"dir/hello.txt", b"hello, world\n"),
        file(b"dir/big.bin", &random_bytes(1, 200_000)),
        entry(
            b"dir/link",
            EntryKind::Symlink {
                target: b"hello.txt".to_vec(),
            },
        ),
        entry(
            b"dir/hard",
            EntryKind::Hardlink {
                target: b"dir/hello.txt".to_vec(),
            },
        ),
    ]
}

pub fn read_all(mut reader: ContentReader<'_>) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    reader
        .read_to_end(&mut out)
        .map_err(|e| Error::from_io(e, "test read"))?;
    Ok(out)
}

/// Every member of a segment: metadata and content.
pub fn read_segment(
    bytes: &[u8],
    keys: &dyn cbfs_format::GroupKeys,
) -> Result<Vec<(Metadata, Vec<u8>)>, Error> {
    let mut reader = SegmentReader::new(bytes)?;
    let mut out = Vec::new();
    while let Some(member) = reader.next_member()? {
        let (meta, content) = member.open(keys)?;
        out.push((meta, read_all(content)?));
    }
    Ok(out)
}

pub fn mode_of(bytes: &[u8]) -> SegmentMode {
    SegmentReader::new(bytes).unwrap().mode()
}
