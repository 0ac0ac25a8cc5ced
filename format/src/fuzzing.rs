//! Entry points for the coverage-guided fuzz targets in `fuzz/`.
//!
//! Most parsers of this crate are public already ([`crate::Summary::from_bytes`],
//! [`crate::SegmentReader`], ...). The ones here sit behind a member's
//! authentication: a fuzzer cannot reach them through [`crate::open_member`]
//! without forging ChaCha20-Poly1305, so they are callable on their own,
//! each exactly as the member reader calls it. Not a stable API: hidden from
//! the documentation, and nothing but the fuzz targets may use it.

use std::io::BufReader;

use crate::error::Error;
use crate::ids::{GroupId, MemberId};
use crate::member::{MemberFiles, PACK_VERSION, decode_metadata, decode_plain, encode_records};
use crate::metadata::Metadata;

/// Parses one metadata record ("Metadata record" in `docs/FORMAT.md`).
pub fn metadata_from_record(record: &[u8]) -> Result<Metadata, Error> {
    Metadata::decode(record)
}

/// The canonical metadata record.
pub fn metadata_to_record(meta: &Metadata) -> Result<Vec<u8>, Error> {
    meta.encode()
}

/// Parses a pack's table (`u16` count, then length-prefixed records).
pub fn pack_table_from_bytes(table: &[u8]) -> Result<Vec<Metadata>, Error> {
    decode_metadata(MemberId::from_bytes([0; 16]), PACK_VERSION, table)
}

/// The canonical table of a pack of `entries`.
pub fn pack_table_to_bytes(entries: &[Metadata]) -> Result<Vec<u8>, Error> {
    encode_records(entries.iter(), entries.len())
}

/// Reads a member's plaintext as age decrypts it (one zstd frame holding
/// `CBFSMEMB`, the version, the metadata or pack table, then the
/// contents): the files' metadata and a reader over their contents, which
/// checks the end of the frame once read to the end.
pub fn open_plaintext(member: MemberId, plaintext: &[u8]) -> Result<MemberFiles<'_>, Error> {
    decode_plain(member, BufReader::new(plaintext))
}

/// The group id that the `cbfs1` stanza in the first bytes of a member's
/// payload names, read without a key as a keyless check of a segment does.
pub fn stanza_group(payload_head: &[u8]) -> Option<GroupId> {
    crate::stanza::group_in_header(payload_head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::GroupKey;
    use crate::metadata::EntryKind;

    #[test]
    fn the_entry_points_read_what_the_writers_write() {
        let mut a = Metadata::new("a", EntryKind::File);
        a.size = 3;
        let b = Metadata::new("b", EntryKind::Dir);
        let record = metadata_to_record(&a).unwrap();
        assert_eq!(metadata_from_record(&record).unwrap(), a);
        let table = pack_table_to_bytes(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(pack_table_from_bytes(&table).unwrap(), vec![a, b]);
        assert!(pack_table_to_bytes(&[]).is_err());

        let key = GroupKey::generate();
        let id = MemberId::random();
        let meta = Metadata::new("f", EntryKind::Fifo);
        let payload = crate::write_member(Vec::new(), id, &key, &meta, &b""[..], 3).unwrap();
        assert_eq!(stanza_group(&payload), Some(key.id()));

        let mut frame = b"CBFSMEMB\x00\x01".to_vec();
        let record = metadata_to_record(&meta).unwrap();
        frame.extend_from_slice(&(record.len() as u32).to_be_bytes());
        frame.extend_from_slice(&record);
        let plaintext = zstd::encode_all(&frame[..], 3).unwrap();
        let files = open_plaintext(id, &plaintext).unwrap();
        assert_eq!(files.entries, vec![meta]);
        files.content.finish().unwrap();
    }
}
