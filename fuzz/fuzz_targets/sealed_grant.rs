//! A grant sealed for a node (`cbfs-sealed-grant`), as a node reads an
//! upload or its own store: canonical once read, opened with each fixed
//! node's key. What opens is bound to the node that opened it.
#![no_main]

use cbfs_core::SealedGrant;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sealed) = SealedGrant::from_bytes(data, "fuzzed sealed grant") else {
        return;
    };
    let bytes = sealed.to_bytes();
    let back = SealedGrant::from_bytes(&bytes, "its own bytes").expect("its own bytes");
    assert_eq!(
        back.to_bytes(),
        bytes,
        "a sealed grant's bytes are canonical"
    );
    let p = cbfs_fuzz::parties();
    for node in &p.nodes {
        let sk = node.secret_key();
        if let Ok(grant) = sealed.open(&sk, &p.admin.verifying_key(), "fuzzed sealed grant") {
            assert_eq!(grant.node(), Some(&node.public_key()));
            assert_eq!(sealed.node(), &node.public_key());
        }
    }
});
