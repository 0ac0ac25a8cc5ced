//! A member's plaintext as age decrypts it: one zstd frame holding the
//! `CBFSMEMB` header, the metadata record or pack table, and the contents.
//! Read to the end, it gives exactly the sizes its metadata declares, or an
//! error of the member's damage classes.
#![no_main]

use std::io::Read;

use cbfs_format::fuzzing::open_plaintext;
use cbfs_format::{Error, MemberId};
use libfuzzer_sys::fuzz_target;

const MEMBER: MemberId = MemberId::from_bytes([0x11; 16]);

fn expected(e: &Error) {
    assert!(
        matches!(
            e.code(),
            "corrupt_plaintext" | "bad_brand" | "unknown_version" | "malformed"
        ),
        "{e}"
    );
}

fuzz_target!(|data: &[u8]| {
    let files = match open_plaintext(MEMBER, data) {
        Ok(files) => files,
        Err(e) => return expected(&e),
    };
    let declared: u64 = files.entries.iter().map(|m| m.size).sum();
    assert_eq!(files.content.remaining(), declared);
    let mut content = files.content;
    let mut read = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match content.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => read += n as u64,
            Err(e) => return expected(&Error::from_io(e, "reading member content")),
        }
    }
    assert_eq!(read, declared, "the content is its declared size");
});
