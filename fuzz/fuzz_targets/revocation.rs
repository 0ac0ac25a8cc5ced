//! A revocation (`cbfs-revocation`), as a node reads it from
//! `POST /v1/revoke`, against the fixed administrator's key. Signed again,
//! it reads back the same.
#![no_main]

use cbfs_core::Revocation;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let admin = &cbfs_fuzz::parties().admin;
    let Ok(r) = Revocation::from_bytes(data, "fuzzed revocation", &admin.verifying_key()) else {
        return;
    };
    let again = r.to_signed_bytes(admin).expect("the admin's revocation");
    let back = Revocation::from_bytes(&again, "signed again", &admin.verifying_key())
        .expect("what the admin signs");
    assert_eq!(
        (back.scope(), back.user(), back.revoked(), back.revoked_at()),
        (r.scope(), r.user(), r.revoked(), r.revoked_at())
    );
});
