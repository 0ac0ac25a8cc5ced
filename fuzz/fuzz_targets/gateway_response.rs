//! What `cbfs-gateway` answers, as its clients read it: an error answer
//! (`{"error", "reason"}`) turned into a message, whatever the status.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((status, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let status = u16::from_be_bytes(*status);
    let message = cbfs_restore::gateway::refusal(status, body);
    assert!(message.contains(&status.to_string()));
});
