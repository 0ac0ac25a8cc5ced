//! The body of `POST /v1/reencrypt` as a node reads it: a user's signed
//! re-encryption request. The checks a node makes before it looks up a
//! delegation: the user's signature (the fixed user's key), which survives
//! any reformatting of the JSON; the path prefix; the clock skew; every
//! capsule.
#![no_main]

use cbfs_wire::{SignedReencrypt, check_path, decode_capsule, encode_capsule};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(signed) = serde_json::from_slice::<SignedReencrypt>(data) else {
        return;
    };
    let p = cbfs_fuzz::parties();
    let user = p.user.verifying_key();
    let verified = signed.verify(&user);
    let compact = serde_json::to_vec(&signed).expect("requests serialize");
    let again: SignedReencrypt = serde_json::from_slice(&compact).expect("its own JSON");
    assert_eq!(again.request, signed.request);
    assert_eq!(
        again.verify(&user),
        verified,
        "reformatting changes nothing"
    );
    let _ = signed.request.skew_from(cbfs_fuzz::NOW);
    let _ = check_path(&signed.request.path);
    for text in &signed.request.capsules {
        if let Ok(capsule) = decode_capsule(text) {
            let canonical = encode_capsule(&capsule);
            assert_eq!(decode_capsule(&canonical).ok(), Some(capsule));
        }
    }
});
