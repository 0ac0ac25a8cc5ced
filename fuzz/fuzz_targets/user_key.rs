//! A user's public key document (`cbfs-user`, `NAME.pub`), self-signed.
//! The fixed user's, signed again, reads back the same.
#![no_main]

use cbfs_core::UserPublic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(user) = UserPublic::from_bytes(data, "fuzzed user key") else {
        return;
    };
    let secret = &cbfs_fuzz::parties().user;
    if user.check_secret(secret).is_ok() {
        let again = user.to_signed_bytes(secret).expect("the user's key");
        let back = UserPublic::from_bytes(&again, "signed again").expect("what the user signs");
        assert_eq!(back, user);
    }
});
