//! A keyset document (`cbfs-keyset`), as a reader loads it from the store
//! or a file. Accepted, it keeps the bytes it was read from; one of the
//! fixed administrator's, signed again, reads back the same.
#![no_main]

use cbfs_core::Keyset;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(keyset) = Keyset::from_bytes(data, "fuzzed keyset") else {
        return;
    };
    assert_eq!(keyset.signed_bytes(), data);
    assert!(
        keyset
            .scope(&cbfs_core::ScopeLabel::default_scope())
            .is_some()
    );
    let admin = &cbfs_fuzz::parties().admin;
    if keyset.check_admin(admin).is_ok() {
        let again = keyset.to_signed_bytes(admin).expect("the admin's keyset");
        let back = Keyset::from_bytes(&again, "signed again").expect("what the admin signs");
        assert!(back == keyset, "a keyset reads back the same");
    }
});
