//! A member's payload (an age file with one `cbfs1` stanza), as the
//! member with the id in the input's first 16 bytes, opened with the test
//! vectors' group keys and read to the end. A member that authenticates
//! must name its group the same way to every reader: the keyless one of a
//! segment check, and the metadata peek of a restore's plan.
#![no_main]

use std::io::Read;

use cbfs_format::fuzzing::stanza_group;
use cbfs_format::{Error, GroupKeys, MemberId, PEEK_LEN, open_member_files, peek_metadata};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((id, payload)) = data.split_first_chunk::<16>() else {
        return;
    };
    let member = MemberId::from_bytes(*id);
    let keys = &cbfs_fuzz::vectors().keyring;
    let opened = open_member_files(member, payload, keys).and_then(|files| {
        let mut content = files.content;
        let mut buf = vec![0u8; 64 * 1024];
        let mut read = 0u64;
        loop {
            match content.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => read += n as u64,
                Err(e) => return Err(Error::from_io(e, "reading member content")),
            }
        }
        Ok((files.entries, read))
    });
    let (entries, read) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            assert_ne!(e.code(), "io", "an in-memory member: {e}");
            return;
        }
    };
    assert_eq!(read, entries.iter().map(|m| m.size).sum::<u64>());
    let group = stanza_group(payload).expect("an authentic member names its group");
    assert!(keys.group_key(&group).is_some());
    let head = &payload[..payload.len().min(PEEK_LEN)];
    if let Some(claimed) = peek_metadata(member, head, payload.len() as u64, keys) {
        assert_eq!(
            claimed, entries,
            "the peek of an authentic member is the truth"
        );
    }
});
