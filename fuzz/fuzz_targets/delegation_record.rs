//! A delegation record (`cbfs-delegation`), as a client reads it from a
//! node's answer and a node from an upload, against the fixed
//! administrator's key. Accepted, it keeps its bytes and reads the same
//! again; its shares and nodes agree.
#![no_main]

use cbfs_core::DelegationRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let admin = cbfs_fuzz::parties().admin.verifying_key();
    let Ok(record) = DelegationRecord::from_bytes(data, "fuzzed record", &admin) else {
        return;
    };
    assert_eq!(record.to_bytes(), data);
    assert!(1 <= record.threshold() && record.threshold() <= record.shares());
    assert_eq!(record.nodes().len(), record.shares() as usize);
    for (i, n) in record.nodes().iter().enumerate() {
        assert_eq!(record.share_of(n), Some(i as u32 + 1));
    }
    let back = DelegationRecord::from_bytes(record.to_bytes(), "again", &admin).expect("again");
    assert!(back == record);
    let _ = record.is_expired(&*cbfs_fuzz::parties().clock);
});
