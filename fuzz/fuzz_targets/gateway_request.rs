//! What a request to `cbfs-gateway` carries that the gateway parses before
//! anything else: the `Authorization: cbfs-sig ...` header, checked against
//! the fixed user's key over fixed request parts. A header that verifies is
//! the one the client library makes of the same parts.
#![no_main]

use cbfs_wire::gateway::{Authorization, SignedParts, authorization};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(auth) = Authorization::parse(text) else {
        return;
    };
    assert_eq!(auth.nonce.len(), 32);
    let p = cbfs_fuzz::parties();
    let parts = SignedParts {
        method: "GET",
        path_and_query: "/v1/fs/fuzzfs/ls?path=%2F",
        timestamp: auth.timestamp,
        nonce: &auth.nonce,
        content_sha256: &cbfs_wire::gateway::content_sha256(b""),
    };
    if auth.verify(&p.user.verifying_key(), &parts) {
        let made = authorization(&p.user_name, &p.user.signer(), &parts);
        let again = Authorization::parse(&made).expect("what the client makes");
        assert_eq!(
            (again.user.as_str(), again.timestamp),
            (p.user_name.as_str(), auth.timestamp)
        );
        assert!(again.verify(&p.user.verifying_key(), &parts));
    }
});
