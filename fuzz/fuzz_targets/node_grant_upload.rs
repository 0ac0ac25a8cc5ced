//! The body of `POST /v1/grants` as a node reads it: a grant sealed for one
//! node and its delegation record. The sealed grant is opened with each
//! fixed node's key, the record checked against the fixed administrator's.
#![no_main]

use cbfs_wire::{GrantUpload, record_from_value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(upload) = serde_json::from_slice::<GrantUpload>(data) else {
        return;
    };
    let p = cbfs_fuzz::parties();
    let admin = p.admin.verifying_key();
    let _record = record_from_value(&upload.delegation, "uploaded record", &admin);
    let Ok((sealed, bytes)) = upload.sealed_grant() else {
        return;
    };
    assert_eq!(
        cbfs_core::SealedGrant::from_bytes(&bytes, "again")
            .map(|s| s.to_bytes())
            .ok(),
        Some(sealed.to_bytes())
    );
    for node in &p.nodes {
        let Ok(grant) = sealed.open(&node.secret_key(), &admin, "uploaded grant") else {
            continue;
        };
        assert_eq!(grant.node(), Some(&node.public_key()));
        assert_eq!(grant.admin_verifying_key(), &admin);
    }
});
