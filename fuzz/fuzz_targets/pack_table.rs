//! A pack's table of metadata records (inside a member): parsed strictly
//! and canonical.
#![no_main]

use cbfs_format::MAX_PACK_FILES;
use cbfs_format::fuzzing::{pack_table_from_bytes, pack_table_to_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(entries) = pack_table_from_bytes(data) else {
        return;
    };
    assert!((1..=MAX_PACK_FILES).contains(&entries.len()));
    assert_eq!(
        pack_table_to_bytes(&entries).expect("what was read can be written"),
        data,
        "a pack table is not canonical"
    );
});
