//! What a node answers, as a client reads it: a re-encryption answer
//! (`cbfs-cfrags`), checked in full against the fixed delegation (its
//! record by the administrator's key, every cfrag against the capsule
//! asked for), and the node's other answers. An answer accepted from a node
//! is one of that delegation's nodes, and its cfrags verify.
#![no_main]

use cbfs_core::umbral_pre::PublicKey;
use cbfs_wire::{
    Access, Cfrags, ErrorBody, GrantStored, NodeInfo, RevokeDone, kfrag_id, verify_answer,
};
use libfuzzer_sys::fuzz_target;

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<T>(data) {
        let compact = serde_json::to_vec(&v).expect("answers serialize");
        let back: T = serde_json::from_slice(&compact).expect("its own JSON");
        assert_eq!(serde_json::to_vec(&back).expect("again"), compact);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<NodeInfo>(data);
    round_trip::<GrantStored>(data);
    round_trip::<RevokeDone>(data);
    round_trip::<ErrorBody>(data);
    let Ok(answer) = serde_json::from_slice::<Cfrags>(data) else {
        return;
    };
    let p = cbfs_fuzz::parties();
    let access = Access::from_keyset(&p.keyset, p.user_name.clone(), p.scope.clone())
        .expect("the keyset has the scope");
    let user: PublicKey = p.user.public_key();
    let capsules = [p.capsule.clone()];
    for node in &p.nodes {
        let node_key = node.public_key();
        let Ok(v) = verify_answer(&answer, &node_key, &access, &user, &capsules, &*p.clock) else {
            continue;
        };
        assert_eq!(v.cfrags.len(), capsules.len());
        assert_eq!(v.record.share_of(&node_key), Some(v.share));
        assert!(v.cfrags.iter().all(|c| kfrag_id(c) == v.kfrag_id));
        assert_eq!(v.record.admin_verifying_key(), &access.admin_key);
    }
});
