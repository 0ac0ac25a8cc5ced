//! A delta manifest from the store, read against its base (a fixed full
//! manifest). Its header is made to name the base and the test vectors'
//! writer, and it is signed again by that writer, so that a fuzzer reaches
//! the delta's own rules: removed and added members against the base, and
//! the Merkle root of the result. What is accepted must be what the writer
//! makes of the same snapshot, and read the same through the chain
//! gatherer and resolver.
#![no_main]

use cbfs_format::{
    Manifest, ManifestBuilder, ManifestHeader, delta_writer, gather_manifest_chain,
    resolve_manifest_chain,
};
use cbfs_fuzz::{
    PREVIOUS_AT, SIGNATURE_LEN, WRITER_KEY_AT, delta_base, resign, vectors, writer_key,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let base = delta_base();
    let trusted = writer_key();
    let mut bytes = data.to_vec();
    if bytes.len() > WRITER_KEY_AT + 33 + SIGNATURE_LEN {
        bytes[PREVIOUS_AT..PREVIOUS_AT + 32].copy_from_slice(&base.hash());
        bytes[WRITER_KEY_AT..WRITER_KEY_AT + 33].copy_from_slice(&trusted.to_compressed_bytes());
        resign(&mut bytes, &vectors().writer);
    }
    let peeked = ManifestHeader::peek(&bytes);
    let writer = delta_writer(&bytes);
    let Ok(m) = Manifest::from_delta_bytes(&bytes, &trusted, base) else {
        return;
    };
    assert!(m.is_delta());
    assert_eq!(writer.ok(), Some(trusted));
    let head = peeked.expect("an accepted delta has a header");
    assert!(head.delta);
    assert_eq!(head.sequence, m.sequence());
    assert_eq!(head.previous, Some(base.hash()));
    assert!(m.sequence() > base.sequence());
    cbfs_fuzz::check_entries(&m);
    let entries = m.entries();
    m.check_follows(base).expect("a delta follows its base");

    let chain = gather_manifest_chain(bytes.clone(), |seq| {
        if seq == base.sequence() {
            vec![base.to_bytes()]
        } else {
            Vec::new()
        }
    });
    // A delta of a sequence after base + 1 names a missing manifest.
    if m.sequence() == base.sequence() + 1 {
        let chain = chain.expect("the base is at hand");
        assert_eq!(chain, vec![base.to_bytes(), bytes.clone()]);
    }
    let resolved =
        resolve_manifest_chain(&[base.to_bytes(), bytes.clone()], &trusted).expect("resolves");
    assert_eq!(resolved.entries(), entries);

    // Canonical: the writer's delta of the same snapshot is these bytes
    // (but for the signature, which is randomized), when the writer would
    // write a delta at all and at this version.
    let mut b = ManifestBuilder::new(
        m.snapshot_id(),
        m.sequence(),
        m.previous_hash(),
        m.created_unix(),
    );
    b.extend(entries.iter().copied());
    let rebuilt = b.sign_delta(&vectors().writer, base).expect("signing");
    if rebuilt.is_delta() && bytes[8..10] == [0, 2] {
        let again = rebuilt.to_bytes();
        let body = bytes.len() - SIGNATURE_LEN;
        assert_eq!(again.len(), bytes.len(), "a delta is not canonical");
        assert_eq!(again[..body], bytes[..body], "a delta is not canonical");
    }
});
