//! The head of a member's payload: the age header and its `cbfs1` stanza.
//! The keyless reader (what a segment check uses) and age's own parser,
//! given no key, must agree on the group a header names; the metadata peek
//! of a restore's plan reads it with the test vectors' keys.
#![no_main]

use cbfs_format::fuzzing::stanza_group;
use cbfs_format::{Error, Keyring, MemberId, PEEK_LEN, open_member_files, peek_metadata};
use libfuzzer_sys::fuzz_target;

const MEMBER: MemberId = MemberId::from_bytes([0x11; 16]);

fuzz_target!(|data: &[u8]| {
    let keyless = stanza_group(data);
    match open_member_files(MEMBER, data, &Keyring::new()) {
        Err(Error::WrongKey {
            group: Some(group), ..
        }) => assert_eq!(
            keyless,
            Some(group),
            "age reads group {group}, the keyless reader {keyless:?}"
        ),
        Err(e) => assert_ne!(e.code(), "io", "an in-memory member: {e}"),
        Ok(_) => panic!("a member opened without a key"),
    }
    let head = &data[..data.len().min(PEEK_LEN)];
    let _ = peek_metadata(
        MEMBER,
        head,
        data.len() as u64,
        &cbfs_fuzz::vectors().keyring,
    );
});
