//! A delegation grant (`cbfs-grant`, one kfrag and its terms), as a node
//! reads it once unsealed, against the fixed administrator's key. Signed
//! again, it reads back the same terms and kfrag.
#![no_main]

use cbfs_core::Grant;
use cbfs_core::umbral_pre::DefaultSerialize;
use libfuzzer_sys::fuzz_target;

fn terms(g: &Grant) -> String {
    format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {:?}",
        g,
        g.scope_public_key(),
        g.user_public_key(),
        g.user_verifying_key(),
        g.admin_verifying_key(),
        g.node(),
        g.kfrag().to_bytes().ok()
    )
}

fuzz_target!(|data: &[u8]| {
    let admin = &cbfs_fuzz::parties().admin;
    let Ok(grant) = Grant::from_bytes(data, "fuzzed grant", &admin.verifying_key()) else {
        return;
    };
    let again = grant.to_signed_bytes(admin).expect("the admin's grant");
    let back = Grant::from_bytes(&again, "signed again", &admin.verifying_key())
        .expect("what the admin signs");
    assert_eq!(terms(&back), terms(&grant));
    let _ = grant.is_expired(cbfs_core::Clock::now(&*cbfs_fuzz::parties().clock));
});
