//! A file's metadata record (inside a member): parsed strictly and
//! canonical.
#![no_main]

use cbfs_format::fuzzing::{metadata_from_record, metadata_to_record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(meta) = metadata_from_record(data) else {
        return;
    };
    meta.validate().expect("what was read is valid");
    assert_eq!(
        metadata_to_record(&meta).expect("what was read can be written"),
        data,
        "a metadata record is not canonical"
    );
    assert_eq!(meta.record_len().ok(), Some(data.len()));
});
