//! A lockbox from the store: parsed strictly, canonical, and opened with
//! the test vectors' scope key; what opens is bound to the lockbox's own
//! scope, group and segment.
#![no_main]

use cbfs_format::Lockbox;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(lockbox) = Lockbox::from_bytes(data) else {
        return;
    };
    assert_eq!(lockbox.to_bytes(), data, "a lockbox is not canonical");
    let back = Lockbox::from_bytes(&lockbox.to_bytes()).expect("its own bytes");
    assert!(back == lockbox);
    match lockbox.open(&cbfs_fuzz::vectors().scope) {
        Ok(key) => assert_eq!(key.id(), lockbox.group_id()),
        Err(e) => assert_eq!(e.code(), "lockbox_open", "{e}"),
    }
});
