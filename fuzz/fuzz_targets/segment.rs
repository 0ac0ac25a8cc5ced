//! A segment (a tar file) from the store, read member by member as a
//! restore reads it, each member opened with the test vectors' group keys.
//! A segment that is accepted whole must pass the keyless check against a
//! summary made of what the reader saw, and a plain one must be exactly
//! what the writer makes of its members (the format is canonical).
#![no_main]

use std::io::{Cursor, Read};

use cbfs_format::fuzzing::stanza_group;
use cbfs_format::{
    Error, MemberId, MemberInfo, Metadata, SegmentMode, SegmentReader, SegmentWriter, Summary,
};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

/// A version 1 summary (the SHA-256 of all the bytes) of an encrypted
/// segment, from the members the reader found in it.
fn summary_of(data: &[u8], segment: [u8; 16], members: &[MemberInfo]) -> Vec<u8> {
    let mut s = b"CBFSSUMM\x00\x01".to_vec();
    s.extend_from_slice(&segment);
    s.push(1);
    s.extend_from_slice(&(data.len() as u64).to_be_bytes());
    s.extend_from_slice(&Sha256::digest(data));
    s.extend_from_slice(&(members.len() as u32).to_be_bytes());
    for m in members {
        let payload = &data[m.data_offset as usize..(m.data_offset + m.data_len) as usize];
        let group = stanza_group(payload).expect("an opened member names its group");
        s.extend_from_slice(m.member.expect("encrypted").as_bytes());
        for n in [m.header_offset, m.data_offset, m.data_len] {
            s.extend_from_slice(&n.to_be_bytes());
        }
        s.extend_from_slice(group.as_bytes());
        s.extend_from_slice(&Sha256::digest(payload));
    }
    s
}

fuzz_target!(|data: &[u8]| {
    let keys = &cbfs_fuzz::vectors().keyring;
    let Ok(mut reader) = SegmentReader::new(data) else {
        return;
    };
    let (segment, mode) = (reader.segment_id(), reader.mode());
    let mut plain: Vec<(Metadata, Vec<u8>)> = Vec::new();
    let mut infos: Vec<MemberInfo> = Vec::new();
    let mut whole = true;
    loop {
        let member = match reader.next_member() {
            Ok(Some(member)) => member,
            Ok(None) => break,
            Err(e) => {
                assert_ne!(e.code(), "io", "an in-memory segment: {e}");
                whole = false;
                break;
            }
        };
        let info = member.info().clone();
        assert_eq!(info.member.is_some(), mode == SegmentMode::Encrypted);
        assert!(info.data_offset > info.header_offset);
        infos.push(info.clone());
        let opened = member.open_files(keys).and_then(|files| {
            let mut content = Vec::new();
            let mut reader = files.content;
            reader
                .read_to_end(&mut content)
                .map_err(|e| Error::from_io(e, "reading member content"))?;
            let total: u64 = files.entries.iter().map(|m| m.size).sum();
            assert_eq!(content.len() as u64, total);
            Ok((files.entries, content))
        });
        match opened {
            Ok((mut entries, content)) if mode == SegmentMode::Plain => {
                assert_eq!(entries.len(), 1, "a plain member is one file");
                plain.push((entries.pop().expect("one"), content));
            }
            Ok(_) => {}
            Err(e) => {
                assert_ne!(e.code(), "io", "an in-memory segment: {e}");
                whole = false;
            }
        }
    }
    if whole && mode == SegmentMode::Encrypted {
        // The keyless check agrees with the reader.
        let bytes = summary_of(data, *segment.as_bytes(), &infos);
        let summary = Summary::from_bytes(&bytes).expect("the layout the reader accepted");
        summary
            .verify_segment(data)
            .expect("the keyless check of what the reader accepted");
    }
    if whole && mode == SegmentMode::Plain {
        // Canonical: the writer makes the same bytes from what was read.
        let mut w = SegmentWriter::new(Cursor::new(Vec::new()), segment, SegmentMode::Plain)
            .expect("a writer");
        for (i, (meta, content)) in plain.iter().enumerate() {
            let mut id = [0x5a; 16];
            id[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            w.append_plain(MemberId::from_bytes(id), meta, &content[..])
                .expect("what was read can be written");
        }
        let (spool, summary) = w.finish().expect("finishing");
        assert_eq!(spool.into_inner(), data, "a plain segment is not canonical");
        summary.verify_segment(data).expect("its own summary");
    }
});
